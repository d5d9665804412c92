"""The ``/stream`` protocol through SageMaker's ``InvokeEndpointWithBidirectionalStream`` (HTTP/2 event stream).

SageMaker turns each request ``PayloadPart`` into one WebSocket frame to the container and each container
message into a response part (docs/deploy/streaming.md). :func:`connect_sagemaker` opens such a stream with
the AWS SDK for Python (``aws-sdk-sagemaker-runtime-http2``, extra ``[sagemaker-stream]``, Python >= 3.12) on
awscrt's HTTP/2 transport (the SDK's default aiohttp transport cannot send and receive at once), and hands
:func:`fusion_emotion.client.stream.play` a connection with the few methods it uses of a ``websockets`` one:
``send``, async iteration over messages, ``close_code``. A close of the container reaches the client as a
``ModelStreamError``; its code becomes ``close_code``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

# optional: [sagemaker-stream] (Python >= 3.12); the command names the extra when these are missing
from aws_sdk_sagemaker_runtime_http2.client import AsyncSageMakerRuntimeHTTP2Client
from aws_sdk_sagemaker_runtime_http2.config import AsyncSageMakerRuntimeHTTP2Config
from aws_sdk_sagemaker_runtime_http2.models import (
    InternalStreamFailure,
    InvokeEndpointWithBidirectionalStreamInput,
    ModelStreamError,
    RequestPayloadPart,
    RequestStreamEventPayloadPart,
    ResponseStreamEventInternalStreamFailure,
    ResponseStreamEventModelStreamError,
    ResponseStreamEventPayloadPart,
)
from awscrt import io as crt_io
from fusion_emotion.client.stream import TransportClosed
from smithy_http.aio.crt import AWSCRTHTTPClient

log = logging.getLogger(__name__)

DEFAULT_PATH = "invocations-bidirectional-stream"
"""The container path SageMaker opens when the client names none (``ModelInvocationPath``)."""
CLOSE_STREAM_FAILURE = 1011
"""``close_code`` after an ``InternalStreamFailure`` (SageMaker's side failed, no container code)."""


def endpoint_url(region: str) -> str:
    """SageMaker Runtime HTTP/2 of a region; port 8443, as AWS's examples set it."""
    return f"https://runtime.sagemaker.{region}.amazonaws.com:8443"


class _TrustingCRTClient(AWSCRTHTTPClient):
    """awscrt HTTP client that trusts the CA bundle given (a private CA, or the local stand-in's certificate)."""

    def __init__(self, ca_file: str) -> None:
        super().__init__()
        options = crt_io.TlsContextOptions()
        options.override_default_trust_store_from_path(None, ca_file)
        self._tls_ctx = crt_io.ClientTlsContext(options)  # the SDK offers no TLS setting of its own (0.12)


def _transport(ca_file: str | None) -> AWSCRTHTTPClient:
    return _TrustingCRTClient(ca_file) if ca_file else AWSCRTHTTPClient()


def _code_of(error_code: str | None) -> int:
    """The WebSocket close code in a ModelStreamError's ErrorCode (digits in it), else 1011."""
    match = re.search(r"\d{4}", error_code or "")
    return int(match.group()) if match else CLOSE_STREAM_FAILURE


class StreamClosed(TransportClosed):
    """The stream ended; ``code`` and ``reason`` as the container closed it."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code, self.reason = code, reason


@dataclass
class SageMakerConnection:
    """One bidirectional stream, seen as a WebSocket: ``send``, ``async for message``, ``close_code``."""

    stream: Any
    fragment_bytes: int | None = None
    config_as_binary: bool = False
    close_code: int | None = None
    close_reason: str = ""
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the response side is over: a send then fails instead of waiting on a finished HTTP/2 stream."""

    async def send(self, message: str | bytes) -> None:
        """One message: text as a UTF8 part (the first as BINARY with ``config_as_binary``), bytes as BINARY."""
        if self.close_code is not None:
            raise StreamClosed(self.close_code, self.close_reason)
        if isinstance(message, str):
            data, kind = message.encode(), ("BINARY" if self.config_as_binary else "UTF8")
            self.config_as_binary = False
        else:
            data, kind = message, "BINARY"
        step = self.fragment_bytes or len(data) or 1
        pieces = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
        for i, piece in enumerate(pieces):
            state = None if len(pieces) == 1 else ("COMPLETE" if i == len(pieces) - 1 else "PARTIAL")
            part = RequestPayloadPart(bytes_=piece, data_type=kind, completion_state=state)
            await self._send_part(RequestStreamEventPayloadPart(value=part))

    async def _send_part(self, event: RequestStreamEventPayloadPart) -> None:
        sending = asyncio.ensure_future(self.stream.input_stream.send(event))
        ended = asyncio.ensure_future(self.ended.wait())
        try:
            await asyncio.wait({sending, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
        if not sending.done():
            sending.cancel()
            raise StreamClosed(self.close_code or CLOSE_STREAM_FAILURE, self.close_reason or "the stream ended")
        sending.result()

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        """Container messages (PARTIAL parts joined) until the stream ends; StreamClosed on an error close."""
        try:
            async for message in self._messages():
                yield message
        finally:
            self.ended.set()

    async def _messages(self) -> AsyncIterator[str | bytes]:
        _, output = await self.stream.await_output()
        pending = b""
        while True:
            try:
                event = await output.receive()
            except ModelStreamError as exc:  # the SDK raises the modeled stream errors
                event = ResponseStreamEventModelStreamError(value=exc)
            except InternalStreamFailure as exc:
                event = ResponseStreamEventInternalStreamFailure(value=exc)
            if event is None:
                self._closed(1000, "end")
                return
            if isinstance(event, ResponseStreamEventPayloadPart):
                part = event.value
                pending += part.bytes_ or b""
                if part.completion_state == "PARTIAL":
                    continue
                data, pending = pending, b""
                yield data.decode() if part.data_type == "UTF8" else data
            elif isinstance(event, ResponseStreamEventModelStreamError):
                self._closed(_code_of(event.value.error_code), event.value.message or "")
                if self.close_code == 1000:
                    return
                raise StreamClosed(self.close_code, self.close_reason)
            elif isinstance(event, ResponseStreamEventInternalStreamFailure):
                self._closed(CLOSE_STREAM_FAILURE, event.value.message or "internal stream failure")
                raise StreamClosed(self.close_code, self.close_reason)

    def _closed(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            log.info("stream closed: %d %s", code, reason)


@dataclass(frozen=True)
class SageMakerTarget:
    """Where and how to open the stream."""

    endpoint_name: str
    region: str
    endpoint_uri: str | None = None
    ca_file: str | None = None
    path: str | None = None
    """``ModelInvocationPath`` (no leading slash); None: SageMaker's default, ``invocations-bidirectional-stream``."""
    query: dict[str, Any] | None = None
    """Stream settings sent as ``ModelQueryString`` instead of a first message."""
    fragment_bytes: int | None = None
    """Split every message into PARTIAL parts of this many bytes (one fragmented WebSocket message each)."""
    config_as_binary: bool = False
    """Send the first text message (the config) as a BINARY part, as a client leaving DataType unset does."""


def _quiet_finished_stream(loop: asyncio.AbstractEventLoop) -> None:
    """awscrt's request-body task fails with HTTP_STREAM_HAS_COMPLETED once the response ended first (the
    container closed); asyncio would print that as "Task exception was never retrieved". Log it at DEBUG."""
    previous = loop.get_exception_handler()
    if getattr(previous, "quiet_finished_stream", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if "HTTP_STREAM_HAS_COMPLETED" in str(context.get("exception", "")):
            log.debug("request side ended after the response: %s", context.get("exception"))
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.quiet_finished_stream = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


@asynccontextmanager
async def connect_sagemaker(target: SageMakerTarget) -> AsyncIterator[SageMakerConnection]:
    """Open the bidirectional stream; closes the request side and the client on exit."""
    _quiet_finished_stream(asyncio.get_running_loop())
    config = await AsyncSageMakerRuntimeHTTP2Config.resolve(  # credentials: the usual AWS chain (env, profile)
        region=target.region,
        endpoint_uri=target.endpoint_uri or endpoint_url(target.region),
        transport=_transport(target.ca_file),
    )
    client = AsyncSageMakerRuntimeHTTP2Client(config=config)
    request = InvokeEndpointWithBidirectionalStreamInput(
        endpoint_name=target.endpoint_name,
        model_invocation_path=target.path,
        model_query_string=urlencode(target.query) if target.query else None,
    )
    stream = await client.invoke_endpoint_with_bidirectional_stream(request)
    connection = SageMakerConnection(stream, target.fragment_bytes, target.config_as_binary)
    try:
        yield connection
    finally:
        if not connection.ended.is_set():  # else the response has ended and the request side with it
            await _close_input(stream)
        await client.close()


async def _close_input(stream: Any) -> None:
    try:
        await asyncio.wait_for(stream.input_stream.close(), 10)
    except Exception as exc:  # the stream may be gone already; nothing more to end
        log.debug("closing the request stream: %s", type(exc).__name__)
