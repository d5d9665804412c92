"""A local stand-in of SageMaker's bidirectional-streaming bridge, to test the container and the client without AWS.

It plays SageMaker Runtime HTTP/2 (``POST /endpoints/{name}/invocations-bidirectional-stream``, HTTPS on a
self-signed certificate, HTTP/2 via hypercorn) to the real SDK client, and does to the container what the
AWS container contract says SageMaker does (docs/deploy/streaming.md):

* opens a WebSocket to ``ws://CONTAINER/<X-Amzn-SageMaker-Model-Invocation-Path or
  invocations-bidirectional-stream>[?<X-Amzn-SageMaker-Model-Query-String>]``; if that fails the client gets
  HTTP 424 ``ModelError`` (a bad path or query header: 400 ``InputValidationError``);
* each request ``PayloadPart`` becomes exactly one frame, bytes untouched: ``DataType=UTF8`` a text frame,
  ``BINARY`` or none a binary frame; a run of ``PARTIAL`` parts ending in ``COMPLETE`` one fragmented message;
* container text messages go back as UTF8 parts, binary as BINARY; it pings the container every
  ``ping_interval_s`` and gives up after 5 unanswered;
* a Close from the container reaches the client as a ``ModelStreamError`` with ``ErrorCode`` = the close code
  and ``Message`` = the reason; a client that goes away gets its socket closed with 1001.

What it cannot check: SigV4 signatures (it reads the signed envelopes without verifying them), IAM, quotas,
SageMaker's own timeouts and sizes. Needs ``[sagemaker-bridge]`` (Python >= 3.12).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

# optional: [sagemaker-bridge] (Python >= 3.12): this module is a tool of its own, run with that venv
import websockets
from hypercorn.asyncio import serve
from hypercorn.config import Config
from smithy_aws_event_stream.events import Event, EventMessage

log = logging.getLogger("fusion_emotion.ops.sagemaker_bridge")

PATH_HEADER = "x-amzn-sagemaker-model-invocation-path"
QUERY_HEADER = "x-amzn-sagemaker-model-query-string"
DEFAULT_PATH = "invocations-bidirectional-stream"
PATH_PATTERN = re.compile(r"^[A-Za-z0-9\-._]+(?:/[A-Za-z0-9\-._]+)*$")
ROUTE = re.compile(r"^/endpoints/([^/]+)/invocations-bidirectional-stream$")
MISSED_PINGS = 5

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class BridgeSettings:
    container: str
    """The container's base URL, ``ws://127.0.0.1:8080``."""
    ping_interval_s: float = 60.0


# --------------------------------------------------------------------------- event-stream messages


def event_bytes(headers: dict[str, Any], payload: bytes = b"") -> bytes:
    return EventMessage(headers=headers, payload=payload).encode()


def payload_part(data: bytes, text: bool) -> bytes:
    headers = {":message-type": "event", ":event-type": "PayloadPart", ":content-type": "application/octet-stream",
               "DataType": "UTF8" if text else "BINARY", "CompletionState": "COMPLETE"}  # fmt: skip
    return event_bytes(headers, data)


def model_stream_error(code: int, reason: str) -> bytes:
    headers = {":message-type": "exception", ":exception-type": "ModelStreamError", ":content-type": "application/json"}
    return event_bytes(headers, json.dumps({"Message": reason, "ErrorCode": str(code)}).encode())


class EventReader:
    """Request bytes -> the inner messages (SigV4 envelopes unwrapped, unverified); None at the empty end frame."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[EventMessage | None]:
        self.buffer += data
        out: list[EventMessage | None] = []
        while len(self.buffer) >= 4:
            total = int.from_bytes(self.buffer[:4], "big")
            if len(self.buffer) < total:
                break
            event = Event.decode(io.BytesIO(self.buffer[:total]))
            self.buffer = self.buffer[total:]
            assert event is not None
            message = event.message
            if ":chunk-signature" in message.headers:  # the signed envelope: its payload is the event
                if not message.payload:
                    out.append(None)
                    continue
                inner = Event.decode(io.BytesIO(message.payload))
                assert inner is not None
                message = inner.message
            out.append(message)
        return out


# --------------------------------------------------------------------------- request parts -> frames


class FrameWriter:
    """Request parts to the container's WebSocket: one frame per part; PARTIAL...COMPLETE one message."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.fragments: asyncio.Queue[bytes | None] | None = None
        self.sending: asyncio.Task | None = None

    async def part(self, message: EventMessage) -> None:
        headers = message.headers
        if headers.get(":event-type") != "PayloadPart":
            log.info("ignoring request event %s", headers.get(":event-type"))
            return
        text = headers.get("DataType") == "UTF8"
        state = headers.get("CompletionState")
        if self.fragments is None and state != "PARTIAL":
            await self.ws.send(message.payload, text=text)  # bytes untouched, as one frame
            return
        if self.fragments is None:
            self.fragments = asyncio.Queue()
            self.sending = asyncio.ensure_future(self.ws.send(self._drain(self.fragments), text=text))
        self.fragments.put_nowait(message.payload)
        if state != "PARTIAL":
            self.fragments.put_nowait(None)
            self.fragments, sending = None, self.sending
            assert sending is not None
            await sending

    @staticmethod
    async def _drain(queue: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes]:
        while (piece := await queue.get()) is not None:
            yield piece


# --------------------------------------------------------------------------- the ASGI app


def container_url(settings: BridgeSettings, headers: dict[str, str]) -> str:
    """The WebSocket URL SageMaker opens; ValueError for a header the API would refuse."""
    path = headers.get(PATH_HEADER, DEFAULT_PATH)
    if len(path) > 100 or not PATH_PATTERN.match(path):
        raise ValueError("ModelInvocationPath must match ^[A-Za-z0-9\\-._]+(?:/[A-Za-z0-9\\-._]+)*$, <= 100 chars")
    query = headers.get(QUERY_HEADER)
    if query is not None and len(query) > 2048:
        raise ValueError("ModelQueryString is over 2048 characters")
    return f"{settings.container.rstrip('/')}/{path}" + (f"?{query}" if query else "")


async def _error(send: Send, status: int, kind: str, message: str) -> None:
    headers = [(b"content-type", b"application/json"), (b"x-amzn-errortype", kind.encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps({"Message": message}).encode()})


class Bridge:
    """ASGI app: one request = one WebSocket to the container."""

    def __init__(self, settings: BridgeSettings) -> None:
        self.settings = settings
        self.open_streams = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # nothing to set up or tear down
            while (kind := (await receive())["type"]) != "lifespan.shutdown":
                await send({"type": f"{kind}.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http" or scope["method"] != "POST" or not ROUTE.match(scope["path"]):
            await _error(send, 404, "UnknownOperationException", "not found")
            return
        headers = {k.decode().lower(): unquote(v.decode()) for k, v in scope["headers"]}
        try:
            url = container_url(self.settings, headers)
        except ValueError as exc:
            await _error(send, 400, "InputValidationError", str(exc))
            return
        interval = self.settings.ping_interval_s
        try:
            ws = await websockets.connect(url, max_size=None, ping_interval=interval,
                                          ping_timeout=interval * MISSED_PINGS, open_timeout=10)  # fmt: skip
        except (OSError, websockets.InvalidHandshake, asyncio.TimeoutError) as exc:
            await _error(send, 424, "ModelError", f"could not open the model's WebSocket: {type(exc).__name__}")
            return
        self.open_streams += 1
        try:
            await self._relay(ws, receive, send)
        finally:
            self.open_streams -= 1

    async def _relay(self, ws: Any, receive: Receive, send: Send) -> None:
        start = [(b"content-type", b"application/vnd.amazon.eventstream")]
        await send({"type": "http.response.start", "status": 200, "headers": start})
        upstream = asyncio.ensure_future(self._upstream(ws, receive))
        downstream = asyncio.ensure_future(self._downstream(ws, send))
        done, _ = await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        if upstream in done and upstream.result() == "gone":
            log.info("client went away; closing the container's socket (1001)")
            downstream.cancel()
            await ws.close(1001, "client went away")
            return
        await downstream
        upstream.cancel()
        try:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (OSError, RuntimeError):
            pass

    async def _upstream(self, ws: Any, receive: Receive) -> str:
        """Client parts -> frames; "gone" when the client disconnects, "ended" at the end of its input."""
        reader, writer = EventReader(), FrameWriter(ws)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return "gone"
            for event in reader.feed(message.get("body", b"")):
                if event is not None:
                    try:
                        await writer.part(event)
                    except websockets.ConnectionClosed:
                        pass  # the container closed; the downstream side reports it
            if not message.get("more_body", False):
                return "ended"

    async def _downstream(self, ws: Any, send: Send) -> None:
        """Container messages -> response parts; its Close -> ModelStreamError(code, reason)."""
        try:
            async for message in ws:
                text = isinstance(message, str)
                data = message.encode() if text else message
                await send({"type": "http.response.body", "body": payload_part(data, text), "more_body": True})
        except websockets.ConnectionClosed:
            pass
        code = ws.close_code if ws.close_code is not None else 1006
        reason = ws.close_reason or ""
        await send({"type": "http.response.body", "body": model_stream_error(code, reason), "more_body": True})


# --------------------------------------------------------------------------- running it


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1 and localhost; the certificate is also the client's CA bundle."""
    cert, key = directory / "bridge-cert.pem", directory / "bridge-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def run_bridge(settings: BridgeSettings, port: int, cert: Path, key: Path, stop: asyncio.Event) -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.certfile, config.keyfile = str(cert), str(key)
    config.alpn_protocols = ["h2"]
    config.accesslog = None
    await serve(Bridge(settings), config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--container", default="ws://127.0.0.1:8080", help="the container (default %(default)s)")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--cert-dir", type=Path, required=True, help="where the self-signed certificate is written")
    parser.add_argument("--ping-interval", type=float, default=60.0, help="seconds between pings (SageMaker: 60)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    cert, key = self_signed_certificate(args.cert_dir)
    settings = BridgeSettings(args.container, args.ping_interval)

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_bridge(settings, args.port, cert, key, stop)

    sys.stdout.write(json.dumps({"endpoint_url": f"https://127.0.0.1:{args.port}", "ca_bundle": str(cert)}) + "\n")
    sys.stdout.flush()
    asyncio.run(go())
    return 0


if __name__ == "__main__":
    sys.exit(main())
