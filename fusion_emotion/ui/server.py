"""The playground's server: the page at ``/ui``, and the routes it calls, answered through the target.

* ``--url`` / ``--sagemaker-endpoint``: a small Starlette app. ``POST /invocations`` forwards the page's file
  through the clients (:mod:`fusion_emotion.ui.targets`); ``GET /stream`` relays the page's live stream
  through :func:`fusion_emotion.ui.live.live_transport`, or says why the target has none.
* ``--triton``: the front end itself (``create_app`` with its ``ui`` setting on) in this process, over
  tritonclient: its request reading, error statuses, timelines and ``/stream`` bridge, written once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket

from fusion_emotion import contract as C
from fusion_emotion.frontend.app import create_app
from fusion_emotion.frontend.settings import Settings
from fusion_emotion.frontend.stream import StreamSettings
from fusion_emotion.playground.site import PageConfig, playground_app
from fusion_emotion.ui.live import CLOSE_POLICY, SAGEMAKER_LIVE_UNAVAILABLE, live_transport, refuse, relay
from fusion_emotion.ui.targets import Reply, Target, forward_file, options_of

PAGE_PATH = "/ui/"
MAX_BODY_BYTES = C.MAX_INPUT_BYTES  # the service applies its own (smaller) limit and says so


async def read_body(request: Request, limit: int | None = None) -> bytes | None:
    """The whole body, or None once it passes ``limit`` (default :data:`MAX_BODY_BYTES`; nothing more is read)."""
    limit = MAX_BODY_BYTES if limit is None else limit
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _home(request: Request) -> Response:
    return RedirectResponse(PAGE_PATH)


def proxy_app(target: Target, runtime_client: Any = None) -> Starlette:
    """The page plus ``/invocations`` and ``/stream`` forwarded to a front end or a SageMaker endpoint."""
    transport = live_transport(target)
    unavailable = None if transport is not None else SAGEMAKER_LIVE_UNAVAILABLE

    async def invocations(request: Request) -> Response:
        data = await read_body(request)
        if data is None:
            reply = Reply(413, {"error": f"request body over {MAX_BODY_BYTES} bytes"})
        else:
            content_type = request.headers.get("content-type", C.RAW_SNIFF_TYPE)
            options = options_of(dict(request.query_params))
            reply = await asyncio.to_thread(forward_file, target, data, content_type, options, runtime_client)
        return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers())

    async def stream(websocket: WebSocket) -> None:
        if transport is None:
            await websocket.accept()
            await refuse(websocket, SAGEMAKER_LIVE_UNAVAILABLE, CLOSE_POLICY)
            return
        await relay(websocket, transport)

    page = playground_app(PageConfig(target=target.describe(), live_unavailable=unavailable))
    return Starlette(
        routes=[
            Route("/", _home),
            Route("/invocations", invocations, methods=["POST"]),
            WebSocketRoute("/stream", stream),
            Mount("/ui", page),
        ]
    )


def build_app(target: Target, runtime_client: Any = None) -> Starlette:
    """The app ``fusion-emotion ui`` serves for ``target``."""
    if target.triton is None:
        return proxy_app(target, runtime_client)
    app = create_app(Settings(triton_url=target.triton, ui=True), StreamSettings.from_env())
    app.add_route("/", _home, include_in_schema=False)
    return app
