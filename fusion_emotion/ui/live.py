"""The Live view's transport: the page's ``/stream`` WebSocket relayed to the target's, message for message.

The page always speaks the documented ``/stream`` protocol (docs/streaming.md) to the server that serves it.
:func:`live_transport` is the one place a target gets the transport that carries it on: a front end's own
``/stream`` today. A SageMaker endpoint forwards only ``/invocations``; once its bidirectional-streaming
route and client exist (issue #23), their transport is returned here and nothing else changes. Until then
:data:`SAGEMAKER_LIVE_UNAVAILABLE` is what the page says.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

import websockets
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from fusion_emotion.errors import ErrorKind, ServingError
from fusion_emotion.frontend.stream import CLOSE_CODES, error_message
from fusion_emotion.ui.targets import Target, stream_url

log = logging.getLogger(__name__)

SAGEMAKER_LIVE_UNAVAILABLE = (
    "Live needs SageMaker's bidirectional-streaming route, which this playground cannot use yet: "
    "a SageMaker endpoint forwards only /invocations. The File view works; for live scoring, point "
    "the playground at a front end (--url) or at Triton (--triton)."
)
CLOSE_POLICY = CLOSE_CODES[ErrorKind.BAD_REQUEST]
CLOSE_TRY_LATER = CLOSE_CODES[ErrorKind.OVERLOADED]
# Codes a peer may not send in a close frame (RFC 6455 7.4.1): "no status", "abnormal closure".
_RESERVED_CLOSE_CODES = {1005, 1006, 1015}


class LiveConnection(Protocol):
    """One open stream to the service: what ``websockets``' client connection already is."""

    close_code: int | None
    close_reason: str | None

    async def send(self, message: str | bytes) -> None: ...

    def __aiter__(self):  # -> AsyncIterator[str | bytes]: the service's messages until it closes
        ...


class LiveTransport(Protocol):
    def connect(self) -> AbstractAsyncContextManager[LiveConnection]: ...


@dataclass(frozen=True)
class FrontendStream:
    """A front end's ``GET /stream``."""

    ws_url: str
    open_timeout_s: float = 10.0

    def connect(self) -> AbstractAsyncContextManager[LiveConnection]:
        # No keepalive pings: the front end paces a stream by not reading it (see `fusion-emotion serve`).
        return websockets.connect(self.ws_url, max_size=None, ping_interval=None, open_timeout=self.open_timeout_s)


def live_transport(target: Target) -> LiveTransport | None:
    """The transport for ``target``'s live streams; None where it has none (a SageMaker endpoint, for now)."""
    if target.url is not None:
        return FrontendStream(stream_url(target.url))
    return None  # SageMaker: plug the bidirectional-stream transport in here (issue #23)


async def refuse(browser: WebSocket, reason: str, code: int, kind: ErrorKind = ErrorKind.BAD_REQUEST) -> None:
    """Tell the page why, in the protocol's error message, and close with ``code``."""
    try:
        await browser.send_text(json.dumps(error_message(ServingError(kind, "stream", reason), code)))
        await browser.close(code, kind.value)
    except (RuntimeError, WebSocketDisconnect, OSError):
        pass  # the page is gone already


async def _to_service(browser: WebSocket, service: LiveConnection) -> None:
    """The page's messages, unchanged, until it goes away."""
    while True:
        message = await browser.receive()
        if message["type"] == "websocket.disconnect":
            return
        payload = message.get("bytes") if message.get("bytes") is not None else message.get("text")
        if payload is not None:
            await service.send(payload)


async def _to_browser(browser: WebSocket, service: LiveConnection) -> None:
    """The service's messages, unchanged, until it closes."""
    try:
        async for message in service:
            if isinstance(message, str):
                await browser.send_text(message)
            else:
                await browser.send_bytes(message)
    except websockets.ConnectionClosed:
        pass


async def relay(browser: WebSocket, transport: LiveTransport) -> None:
    """Carry one page stream to the service and back; the service's close code (and reason) ends the page's."""
    await browser.accept()
    try:
        async with transport.connect() as service:
            up = asyncio.ensure_future(_to_service(browser, service))
            down = asyncio.ensure_future(_to_browser(browser, service))
            done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            for task in (up, down):
                task.cancel()
            if up in done and down not in done:
                log.info("live: the page left; closing the service stream")
                return  # leaving the context closes the service's side: it frees the stream at once
            code, reason = service.close_code, service.close_reason or ""
    except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
        log.warning("live: the service's stream could not be opened (%s)", type(exc).__name__)
        await refuse(browser, f"the live service could not be reached ({type(exc).__name__})", CLOSE_TRY_LATER,
                     ErrorKind.OVERLOADED)  # fmt: skip
        return
    if browser.client_state == WebSocketState.CONNECTED:
        if code is None or code in _RESERVED_CLOSE_CODES:
            code, reason = 1011, "the service's stream ended without a close"
        try:
            await browser.close(code, reason[:120])
        except (RuntimeError, WebSocketDisconnect, OSError):
            pass  # the page is gone already
