"""``GET /stream``: live emotion updates over a WebSocket, relayed to Triton's ``fusion_emotion_stream``.

One WebSocket = one Triton sequence on one gRPC bidirectional stream (over the app's shared channel).
The protocol (README "Streaming"):

* client -> server: first a text JSON config ``{"sample_rate": 16000, "encoding": "pcm_s16le"}`` (+ optional
  ``channels``, ``hop_s``, ``window_s``); then binary messages of raw PCM in that encoding (any size up
  to the limit; a sample split across messages is joined), text JSON frames
  ``{"frame_jpeg_b64": "...", "t": seconds}`` or ``{"frame_rgb_b64": "...", "width": W, "height": H, "t": s}``,
  and finally ``{"end": true}``.
* server -> client: ``{"ready": true, ...the effective settings and limits}``, then one text JSON update per
  hop, ``{"t_start", "t_end", "angry", ..., "sad", "qa_flags": {...}, "dominant_emotion", "latency_ms"}``,
  the last one for the partial window after ``{"end": true}``, then a normal close (1000). A bad message
  gets ``{"error", "kind", "subject", "close_code"}`` and the close code of :data:`CLOSE_CODES`.

Pacing: a client that sends faster than real time is not read while its stream is more than
``max_lag_hops`` hops ahead of its updates (TCP then slows it down), so "as fast as possible" means as fast
as the encoders go, and nothing piles up in Triton. A client that disconnects aborts its sequence at once.
Nothing about the content is logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import json
import logging
import math
import os
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcclient
from fastapi import FastAPI, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from fusion_emotion import contract as C
from fusion_emotion.core.stream import StreamConfig, needed_native, stream_config
from fusion_emotion.errors import ErrorKind, ServingError, parse_wire
from fusion_emotion.frontend.stream_sagemaker import BIDI_PATH, config_text, query_config
from fusion_emotion.tensors import chunk_inputs, parse_update, stream_outputs

log = logging.getLogger("fusion_emotion.frontend.stream")

# WebSocket close codes (RFC 6455 and the private 4000-4999 range), by error kind.
CLOSE_NORMAL = 1000
CLOSE_CODES: dict[ErrorKind, int] = {
    ErrorKind.BAD_REQUEST: 1008,  # policy violation: malformed message, bad or unsupported settings
    ErrorKind.INVALID_MEDIA: 1007,  # invalid payload: an undecodable frame, non-finite audio
    ErrorKind.TOO_LARGE: 1009,  # message too big: a chunk or frame over its limit
    ErrorKind.OVERLOADED: 1013,  # try again later: the stream limit is reached, or Triton is unavailable
    ErrorKind.INTERNAL: 1011,  # internal error
    ErrorKind.DEADLINE: 4408,  # the stream was idle longer than the idle timeout
    ErrorKind.CANCELLED: 1001,  # going away
}
CLOSE_MAX_DURATION = 4413  # the stream reached its maximum duration
CLOSE_UNSUPPORTED = 1003  # unknown encoding (data the server cannot accept)

ENCODINGS: dict[str, tuple[str, float]] = {"pcm_s16le": ("<i2", 32768.0), "pcm_f32le": ("<f4", 1.0)}
"""WebSocket audio encodings: numpy dtype of one sample and its full scale."""
CONFIG_KEYS = {"sample_rate", "encoding", "channels", "hop_s", "window_s"}
ENV_PREFIX = "FUSION_EMOTION_"


@dataclass(frozen=True)
class StreamSettings:
    """Front-end bounds of ``/stream`` (the model enforces its own, StreamLimits); environment variables."""

    model_name: str = C.STREAM_MODEL
    max_streams: int = 8
    """Open WebSockets; more are closed with 1013 before any Triton work."""
    max_message_bytes: int = 1 << 20
    """One audio message, or one frame once base64-decoded."""
    first_message_timeout_s: float = 10.0
    max_lag_hops: float = 2.0
    """A client more than this many hops of audio ahead of its updates is not read until they catch up."""
    end_timeout_s: float = 120.0
    """After ``{"end": true}``: how long the last update may take."""

    @property
    def transport_max_bytes(self) -> int:
        """uvicorn's ``ws_max_size``: room for a base64 frame at the limit; beyond it the protocol closes 1009."""
        return self.max_message_bytes * 4 // 3 + 64 * 1024

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StreamSettings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for key, name, kind in (
            ("STREAM_MODEL_NAME", "model_name", str),
            ("MAX_STREAMS", "max_streams", int),
            ("STREAM_MAX_MESSAGE_BYTES", "max_message_bytes", int),
            ("STREAM_FIRST_MESSAGE_TIMEOUT_S", "first_message_timeout_s", float),
            ("STREAM_MAX_LAG_HOPS", "max_lag_hops", float),
            ("STREAM_END_TIMEOUT_S", "end_timeout_s", float),
        ):
            raw = env.get(ENV_PREFIX + key, "").strip()
            if raw:
                values[name] = kind(raw)
        settings = cls(**values)
        if settings.max_streams < 1 or settings.max_message_bytes < 1024 or settings.max_lag_hops < 1.5:
            raise ValueError("stream settings: max_streams >= 1, max_message_bytes >= 1024, max_lag_hops >= 1.5")
        return settings


class StreamClose(Exception):
    """End the WebSocket with this error message and close code."""

    def __init__(self, error: ServingError, code: int | None = None) -> None:
        super().__init__(error.wire())
        self.error = error
        self.code = code if code is not None else close_code(error)


def close_code(error: ServingError) -> int:
    if error.kind is ErrorKind.TOO_LARGE and error.subject == "stream":
        return CLOSE_MAX_DURATION
    return CLOSE_CODES.get(error.kind, 1011)


def error_message(error: ServingError, code: int) -> dict[str, Any]:
    return {
        "error": f"{error.subject}: {error.reason}",
        "kind": error.kind.value,
        "subject": error.subject,
        "close_code": code,
    }


def _bad(subject: str, reason: str, kind: ErrorKind = ErrorKind.BAD_REQUEST) -> StreamClose:
    return StreamClose(ServingError(kind, subject, reason))


def _json_object(text: str, subject: str, reason: str) -> dict[str, Any]:
    """A text message that must hold one JSON object; StreamClose(subject, reason) otherwise."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise _bad(subject, reason)
    return value


def parse_config(text: str) -> tuple[StreamConfig, str]:
    """The first message -> (validated settings, encoding); StreamClose naming what is wrong."""
    raw = _json_object(text, "config", "the first message must be a JSON object with sample_rate and encoding")
    unknown = sorted(set(raw) - CONFIG_KEYS)
    if unknown:
        raise _bad("config", f"unknown setting(s) {', '.join(repr(k)[:40] for k in unknown)}")
    encoding = raw.get("encoding")
    if encoding not in ENCODINGS:
        raise StreamClose(
            ServingError(
                ErrorKind.BAD_REQUEST,
                "encoding",
                f"unknown encoding {str(encoding)[:40]!r}; expected one of {', '.join(sorted(ENCODINGS))}",
            ),
            CLOSE_UNSUPPORTED,
        )
    if "sample_rate" not in raw:
        raise _bad("sample_rate", "missing: the audio's sample rate in Hz (8000-48000)")
    for key in ("sample_rate", "channels", "hop_s", "window_s"):
        if key in raw and (isinstance(raw[key], bool) or not isinstance(raw[key], (int, float))):
            raise _bad(key, "must be a number")
    try:
        config = stream_config(raw.get("sample_rate"), raw.get("channels"), raw.get("hop_s"), raw.get("window_s"))
    except ServingError as exc:
        raise StreamClose(exc, CLOSE_UNSUPPORTED if exc.subject in ("sample_rate", "channels") else None) from None
    return config, encoding


def _number(msg: dict[str, Any], key: str) -> float:
    value = msg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad("message", f"{key!r} must be a finite number")
    return float(value)


def _b64(value: Any, limit: int) -> bytes:
    if not isinstance(value, str):
        raise _bad("frame", "frame data must be a base64 string", ErrorKind.INVALID_MEDIA)
    if len(value) > limit * 4 // 3 + 4:
        raise _bad("frame", f"frame is over the {limit}-byte limit", ErrorKind.TOO_LARGE)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("frame", "frame data is not valid base64", ErrorKind.INVALID_MEDIA) from None


class StreamSession:
    """One WebSocket's life: handshake, the two pumps (client -> Triton, Triton -> client), the close."""

    def __init__(self, websocket: WebSocket, client: Any, settings: StreamSettings) -> None:
        self.ws = websocket
        self.client = client
        self.settings = settings
        self.sid = secrets.randbits(63) or 1
        self.requests: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.progress = asyncio.Event()
        self.config: StreamConfig | None = None
        self.encoding = ""
        self.native_sent = 0  # audio samples (per channel) forwarded
        self.partial = b""  # bytes of a sample split across messages
        self.update_end_s = 0.0
        self.arrivals: collections.deque[tuple[int, float]] = collections.deque()  # (native samples, time)
        self.end_arrival: float | None = None
        self.started = False
        self.finished = False
        self.updates = 0

    # ---------------------------------------------------------------- Triton side

    def _send(self, inputs: list[Any], *, start: bool = False, end: bool = False) -> None:
        request = {
            "model_name": self.settings.model_name,
            "inputs": inputs,
            "outputs": stream_outputs(grpcclient),
            "sequence_id": self.sid,
            "sequence_start": start,
            "sequence_end": end,
        }
        self.requests.put_nowait(request)

    async def _request_iter(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            item = await self.requests.get()
            if item is None:
                return
            yield item

    # ---------------------------------------------------------------- client -> Triton

    def _audio(self, data: bytes) -> None:
        assert self.config is not None
        if len(data) > self.settings.max_message_bytes:
            raise _bad("audio", f"message of {len(data)} bytes is over the {self.settings.max_message_bytes}-byte limit",
                       ErrorKind.TOO_LARGE)  # fmt: skip
        dtype, scale = ENCODINGS[self.encoding]
        frame_bytes = np.dtype(dtype).itemsize * self.config.channels
        data = self.partial + data
        whole = len(data) // frame_bytes * frame_bytes
        self.partial = data[whole:]
        if not whole:
            return
        samples = np.frombuffer(data[:whole], dtype=dtype).astype(np.float32)
        if scale != 1.0:
            samples *= 1.0 / scale
        self.native_sent += whole // frame_bytes
        self.arrivals.append((self.native_sent, time.perf_counter()))
        self._send(chunk_inputs(grpcclient, audio=samples))

    def _text(self, text: str) -> bool:
        """One text message; True at ``{"end": true}``."""

        msg = _json_object(text, "message", "text messages must be JSON objects")
        keys = set(msg)
        if keys == {"end"}:
            if msg["end"] is not True:
                raise _bad("message", '"end" must be true')
            return True
        limit = self.settings.max_message_bytes
        if keys == {"frame_jpeg_b64", "t"}:
            t = _number(msg, "t")
            self._send(chunk_inputs(grpcclient, jpegs=[_b64(msg["frame_jpeg_b64"], limit)], times=[t]))
            return False
        if keys == {"frame_rgb_b64", "width", "height", "t"}:
            t, w, h = _number(msg, "t"), _number(msg, "width"), _number(msg, "height")
            if w != int(w) or h != int(h) or not (2 <= w <= 8192 and 2 <= h <= 8192):
                raise _bad("frame", "width and height must be whole numbers of pixels (2-8192)")
            data = _b64(msg["frame_rgb_b64"], limit)
            if len(data) != int(w) * int(h) * 3:
                raise _bad(
                    "frame",
                    f"{len(data)} bytes is not {int(w)}x{int(h)} RGB (3 bytes per pixel)",
                    ErrorKind.INVALID_MEDIA,
                )
            rgb = np.frombuffer(data, np.uint8).reshape(1, int(h), int(w), 3)
            self._send(chunk_inputs(grpcclient, rgbs=rgb, times=[t]))
            return False
        raise _bad(
            "message",
            f"unexpected message with keys {sorted(keys)[:6]}; expected frame_jpeg_b64+t, "
            "frame_rgb_b64+width+height+t, or end",
        )

    def _lag_s(self) -> float:
        assert self.config is not None
        return self.native_sent / self.config.sample_rate - self.update_end_s

    async def _reader(self) -> str:
        """Client messages to Triton until ``{"end": true}`` ("end") or the client leaves ("gone")."""

        assert self.config is not None
        limit_s = self.settings.max_lag_hops * self.config.hop_s
        while True:
            while self._lag_s() > limit_s and not self.finished:
                self.progress.clear()
                await self.progress.wait()
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return "gone"
            if message.get("bytes") is not None:
                self._audio(message["bytes"])
            elif message.get("text") is not None:
                if self._text(message["text"]):
                    self.end_arrival = time.perf_counter()
                    self._send(chunk_inputs(grpcclient), end=True)
                    return "end"

    # ---------------------------------------------------------------- Triton -> client

    def _latency_ms(self, update: dict[str, Any], final: bool) -> float | None:
        """From the arrival of the message that completed this update's audio to now."""
        assert self.config is not None
        if final:
            arrival = self.end_arrival
        else:
            needed = needed_native(int(round(update["t_end"] * C.SAMPLE_RATE)), self.config.sample_rate)
            while len(self.arrivals) > 1 and self.arrivals[0][0] < needed:
                self.arrivals.popleft()
            arrival = self.arrivals[0][1] if self.arrivals and self.arrivals[0][0] >= needed else None
        return None if arrival is None else round((time.perf_counter() - arrival) * 1000, 1)

    def _raise_error(self, error: Any) -> None:
        wire = parse_wire(str(error.message() if hasattr(error, "message") else error))
        if wire is None:
            log.warning("stream %x: untagged Triton error", self.sid)
            raise StreamClose(ServingError(ErrorKind.INTERNAL, "stream", "inference failed"))
        raise StreamClose(ServingError(wire.kind, wire.subject, wire.reason))

    async def _accepted(self, responses: Any) -> None:
        """Wait for the model's first response: the stream was taken (limits passed), or its error."""
        async for result, error in responses:
            if error is not None:
                self._raise_error(error)
            update, final = parse_update(result)
            if update is None and not final:
                return
            raise StreamClose(ServingError(ErrorKind.INTERNAL, "stream", "unexpected first response"))
        raise StreamClose(ServingError(ErrorKind.OVERLOADED, "stream", "inference server closed the stream"))

    async def _writer(self, responses: Any) -> None:
        """Triton's responses to the client until the final one."""
        async for result, error in responses:
            if error is not None:
                self._raise_error(error)
            update, final = parse_update(result)
            if update is not None:
                update["latency_ms"] = self._latency_ms(update, final)
                self.update_end_s = max(self.update_end_s, update["t_end"])
                self.updates += 1
                await self.ws.send_text(json.dumps(update))
            self.progress.set()
            if final:
                self.finished = True
                return
        raise StreamClose(ServingError(ErrorKind.OVERLOADED, "stream", "inference server closed the stream"))

    # ---------------------------------------------------------------- the session

    async def _handshake(self) -> None:
        try:  # SageMaker: the settings may be the query string, the config a binary frame (stream_sagemaker.py)
            preset = query_config(self.ws.query_params)
        except ServingError as exc:
            raise StreamClose(exc) from None
        if preset is not None:
            self.config, self.encoding = parse_config(preset)
            return
        try:
            message = await asyncio.wait_for(self.ws.receive(), self.settings.first_message_timeout_s)
        except asyncio.TimeoutError:
            raise _bad("config", f"no config message within {self.settings.first_message_timeout_s:g} s") from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect()
        try:
            text = config_text(message)
        except ServingError as exc:
            raise StreamClose(exc) from None
        self.config, self.encoding = parse_config(text)

    async def run(self) -> None:
        code, error = CLOSE_NORMAL, None
        responses = None
        tasks: list[asyncio.Task] = []
        try:
            await self._handshake()
            assert self.config is not None
            cfg = self.config
            responses = self.client.stream_infer(self._request_iter())
            self._send(
                chunk_inputs(grpcclient, sample_rate=cfg.sample_rate, channels=cfg.channels, hop_s=cfg.hop_s,
                             window_s=cfg.window_s),
                start=True,
            )  # fmt: skip
            self.started = True
            try:
                await asyncio.wait_for(self._accepted(responses), self.settings.first_message_timeout_s)
            except asyncio.TimeoutError:
                raise StreamClose(
                    ServingError(ErrorKind.OVERLOADED, "stream", "the inference server did not open the stream in time")
                ) from None
            await self.ws.send_text(json.dumps({
                "ready": True, "sample_rate": cfg.sample_rate, "channels": cfg.channels, "encoding": self.encoding,
                "hop_s": cfg.hop_s, "window_s": cfg.window_s, "max_message_bytes": self.settings.max_message_bytes,
            }))  # fmt: skip
            reader = asyncio.ensure_future(self._reader())
            writer = asyncio.ensure_future(self._writer(responses))
            tasks = [reader, writer]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if reader in done and writer not in done:
                outcome = reader.result()  # raises the reader's StreamClose
                if outcome == "gone":
                    log.info("stream %x: client disconnected after %d updates; aborting", self.sid, self.updates)
                    return
                await asyncio.wait_for(asyncio.shield(writer), self.settings.end_timeout_s)
            writer.result()  # raises the writer's StreamClose
        except StreamClose as exc:
            code, error = exc.code, exc.error
        except WebSocketDisconnect:
            log.info("stream %x: client disconnected", self.sid)
        except asyncio.TimeoutError:
            code, error = 1011, ServingError(ErrorKind.DEADLINE, "stream", "the last update did not come in time")
        except Exception as exc:  # Triton unreachable, or our fault: the client gets a reason, never a trace
            status = type(exc).__name__
            log.warning("stream %x: failed (%s)", self.sid, status)
            code = CLOSE_CODES[ErrorKind.OVERLOADED]
            error = ServingError(ErrorKind.OVERLOADED, "stream", "inference server unavailable")
        finally:
            for task in tasks:
                task.cancel()
            await self._close_triton(responses)
        await self._close_socket(code, error)

    async def _close_triton(self, responses: Any) -> None:
        """End the Triton sequence: abort it unless its final response came, then end the gRPC stream."""

        if self.started and not self.finished:
            self._send(chunk_inputs(grpcclient, abort=True), end=True)
        self.requests.put_nowait(None)
        if responses is not None and not self.finished:
            # give the abort a moment to reach Triton, then cancel the call (Triton frees what is left)
            await asyncio.sleep(0.05)
            responses.cancel()

    async def _close_socket(self, code: int, error: ServingError | None) -> None:
        if self.ws.client_state != WebSocketState.CONNECTED:
            return
        try:
            if error is not None:
                log.info("stream %x: closing %d (%s: %s)", self.sid, code, error.kind.value, error.subject)
                await self.ws.send_text(json.dumps(error_message(error, code)))
            await self.ws.close(code, error.kind.value if error is not None else "end")
        except (RuntimeError, WebSocketDisconnect, OSError):
            pass  # the client is gone already


def add_stream_route(app: FastAPI, settings: StreamSettings | None = None) -> None:
    """Register ``/stream``, also at SageMaker's ``/invocations-bidirectional-stream`` (on ``app.state.gateway``)."""
    settings = settings or StreamSettings.from_env()
    app.state.stream_settings = settings
    active = {"n": 0}

    @app.websocket("/stream")
    @app.websocket(BIDI_PATH)  # SageMaker's bidirectional streaming opens this path by default
    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()
        if active["n"] >= settings.max_streams:
            error = ServingError(
                ErrorKind.OVERLOADED, "stream", f"{settings.max_streams} streams are open, the limit; retry later"
            )
            await websocket.send_text(json.dumps(error_message(error, 1013)))
            await websocket.close(1013, "overloaded")
            return
        active["n"] += 1
        try:
            await StreamSession(websocket, app.state.gateway.client, settings).run()
        finally:
            active["n"] -= 1
