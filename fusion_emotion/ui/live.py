"""The Live view's transport: the page's ``/stream`` WebSocket relayed to the target's, message for message.

The page always speaks the documented ``/stream`` protocol (docs/streaming.md) to the server that serves it.
:func:`live_transport` is the one place a target gets the transport that carries it on: a front end's own
``/stream``, or for a SageMaker endpoint its bidirectional stream (``InvokeEndpointWithBidirectionalStream``,
through ``fusion_emotion.client.sagemaker_stream``; that SDK needs Python 3.12+ and the ``sagemaker-stream``
extra: where it is missing, :data:`SAGEMAKER_LIVE_UNAVAILABLE` is what the page says).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import boto3
import websockets
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from fusion_emotion.errors import ErrorKind, ServingError
from fusion_emotion.frontend.stream import CLOSE_CODES, error_message
from fusion_emotion.ui.targets import Target, stream_url

log = logging.getLogger(__name__)

SAGEMAKER_LIVE_UNAVAILABLE = (
    "Live through a SageMaker endpoint needs its bidirectional-streaming client, which this playground's Python "
    "lacks: run `fusion-emotion ui` from Python 3.12+ with the sagemaker-stream extra installed "
    "(pip install 'fusion-emotion[serving,sagemaker-stream]'). The File view works."
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
        # No pings from this side: the front end sends the keepalive pings, which the client answers.
        return websockets.connect(self.ws_url, max_size=None, ping_interval=None, open_timeout=self.open_timeout_s)


@dataclass(frozen=True)
class SageMakerStream:
    """A SageMaker endpoint's bidirectional stream, seen by the relay as a WebSocket."""

    target: Any  # fusion_emotion.client.sagemaker_stream.SageMakerTarget

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[LiveConnection]:
        # optional: [sagemaker-stream] (Python 3.12+): checked by live_transport before this is built
        from fusion_emotion.client.sagemaker_stream import connect_sagemaker

        async with connect_sagemaker(self.target) as connection:
            yield _EndsOnClose(connection)


@dataclass
class _EndsOnClose:
    """The SDK connection's messages end on the container's close (its code kept) instead of raising."""

    connection: Any

    @property
    def close_code(self) -> int | None:
        return self.connection.close_code

    @property
    def close_reason(self) -> str | None:
        return self.connection.close_reason

    async def send(self, message: str | bytes) -> None:
        await self.connection.send(message)

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        from fusion_emotion.client.sagemaker_stream import StreamClosed  # optional: as connect() above

        try:
            async for message in self.connection:
                yield message
        except StreamClosed:
            return  # close_code and close_reason say how


def _sagemaker_stream(target: Target) -> SageMakerStream | None:
    try:  # optional: [sagemaker-stream] (Python 3.12+); without it the page says why Live is off
        from fusion_emotion.client.sagemaker_stream import SageMakerTarget
    except ImportError:
        return None
    region = target.region or boto3.session.Session().region_name
    if not region:
        raise ValueError("--sagemaker-endpoint needs a region: --region or AWS_REGION")
    return SageMakerStream(SageMakerTarget(target.endpoint, region, target.stream_endpoint_url, target.ca_bundle))


def live_transport(target: Target) -> LiveTransport | None:
    """The transport for ``target``'s live streams; None where it has none (no SageMaker streaming client)."""
    if target.url is not None:
        return FrontendStream(stream_url(target.url))
    if target.endpoint is not None:
        return _sagemaker_stream(target)
    return None


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
