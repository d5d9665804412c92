"""One ``/stream`` WebSocket's life: the config, the two pumps (client -> Triton, Triton -> client), the close.

Bounds (each a :class:`~fusion_emotion.frontend.stream_settings.StreamSettings` field, docs/reliability.md):
the client is not read while it is ``max_lag_hops`` ahead of its updates, while ``max_outstanding`` of its
requests wait for the model, or while it is above its wall-clock rates; frames far ahead of its audio are
dropped undecoded; a message to the client that cannot be written within ``send_timeout_s`` closes the stream.
Whatever ends the stream, its Triton sequence is aborted and ended (``stream_triton``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import secrets
import time
from typing import Any, Protocol

import grpc
import tritonclient.grpc.aio as grpcclient
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from fusion_emotion import contract as C
from fusion_emotion.core.alerts import AlertTracker
from fusion_emotion.core.stream import StreamConfig, needed_native
from fusion_emotion.errors import ErrorKind, ServingError
from fusion_emotion.frontend.stream_pacing import AudioJoiner, Pacer
from fusion_emotion.frontend.stream_protocol import (
    CLOSE_CODES,
    CLOSE_NORMAL,
    ENCODINGS,
    StreamClose,
    bad,
    decode_frame,
    error_message,
    parse_config_message,
    parse_text,
)
from fusion_emotion.frontend.stream_sagemaker import config_text, query_config
from fusion_emotion.frontend.stream_settings import StreamSettings
from fusion_emotion.frontend.stream_triton import TritonSequence
from fusion_emotion.tensors import chunk_inputs

log = logging.getLogger("fusion_emotion.frontend.stream")

NOT_READING = "not reading: a message to the client could not be written in time"


class StreamObserver(Protocol):
    """Where a session reports its life (a metrics hook); :class:`NoObserver` does nothing."""

    def opened(self, config: StreamConfig) -> None:
        """The model took the stream and the client got ``ready``."""

    def update_sent(self, latency_ms: float | None, hop_s: float) -> None:
        """One update went to the client, ``latency_ms`` after the audio that completed it arrived."""

    def closed(self, code: int) -> None:
        """The session ended with this close code (after ``opened`` or not)."""


class NoObserver:
    def opened(self, config: StreamConfig) -> None:
        pass

    def update_sent(self, latency_ms: float | None, hop_s: float) -> None:
        pass

    def closed(self, code: int) -> None:
        pass


class StreamSession:
    """One WebSocket: :meth:`handshake` (the config), then :meth:`run` (the stream and its close)."""

    def __init__(
        self, websocket: WebSocket, client: Any, settings: StreamSettings, observer: StreamObserver | None = None
    ) -> None:
        self.ws = websocket
        self.settings = settings
        self.observer = observer or NoObserver()
        self.sid = secrets.randbits(63) or 1
        self.seq = TritonSequence(client, settings.model_name, self.sid, settings.max_outstanding)
        self.progress = asyncio.Event()
        self.pacer = Pacer(settings.max_messages_per_s, settings.max_bytes_per_s, settings.max_frames_per_s)
        self.config: StreamConfig | None = None
        self.encoding = ""
        self.joiner: AudioJoiner | None = None
        self.alerts = AlertTracker(())
        self.audio_limit = 0
        self.update_end_s = 0.0
        self.arrivals: collections.deque[tuple[int, float]] = collections.deque()  # (native samples, time)
        self.end_arrival: float | None = None
        self.finished = False
        self.updates = 0
        self.frames_dropped = 0

    # ---------------------------------------------------------------- client -> Triton

    async def _forward_audio(self, chunks: list[Any]) -> None:
        assert self.joiner is not None
        for samples in chunks:
            await self.seq.send(chunk_inputs(grpcclient, audio=samples))
        if chunks:
            self.arrivals.append((self.joiner.sent, time.perf_counter()))

    async def _audio(self, data: bytes) -> None:
        assert self.joiner is not None
        if len(data) > self.audio_limit:
            raise bad("audio", f"message of {len(data)} bytes is over the {self.audio_limit}-byte limit "
                      f"({self.settings.max_chunk_s:g} s of audio or {self.settings.max_message_bytes} bytes)",
                      ErrorKind.TOO_LARGE)  # fmt: skip
        await self._forward_audio(self.joiner.add(data))

    async def _flush_audio(self) -> None:
        assert self.joiner is not None
        rest = self.joiner.flush()
        await self._forward_audio([rest] if rest is not None else [])

    async def _text(self, text: str) -> bool:
        """One text message; True at ``{"end": true}``."""
        assert self.joiner is not None
        msg = parse_text(text)
        await self._flush_audio()
        if msg.end:
            return True
        if msg.t > self.joiner.sent_s + self.settings.max_frame_lead_s or not self.pacer.frame():
            self.frames_dropped += 1  # far ahead of the audio, or over the frame rate: not decoded, not sent
            return False
        await self.seq.send(chunk_inputs(grpcclient, **decode_frame(msg, self.settings.max_message_bytes)))
        return False

    def _lag_s(self) -> float:
        assert self.joiner is not None
        return self.joiner.sent_s - self.update_end_s

    async def _receive(self) -> Any:
        """The next client message: a client silent longer than a keepalive round is gone (the WebSocket layer
        stops reading a connection whose keepalive failed without telling the application)."""
        wait_s = self.settings.ping_interval_s + self.settings.ping_timeout_s
        try:
            return await asyncio.wait_for(self.ws.receive(), wait_s)
        except asyncio.TimeoutError:
            raise StreamClose(ServingError(ErrorKind.DEADLINE, "client", f"no message for {wait_s:g} s")) from None

    async def _reader(self) -> str:
        """Client messages to Triton until ``{"end": true}`` ("end") or the client leaves ("gone")."""
        assert self.config is not None
        limit_s = self.settings.max_lag_hops * self.config.hop_s
        while True:
            while self._lag_s() > limit_s and not self.finished:
                self.progress.clear()
                await self.progress.wait()
            message = await self._receive()
            if message["type"] == "websocket.disconnect":
                return "gone"
            data, text = message.get("bytes"), message.get("text")
            await self.pacer.take(len(data if data is not None else text or ""))
            if data is not None:
                await self._audio(data)
            elif text is not None and await self._text(text):
                self.end_arrival = time.perf_counter()
                await self.seq.send(chunk_inputs(grpcclient), end=True)
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

    async def _send(self, payload: dict[str, Any]) -> None:
        """One message to the client, or the stream ends: a client that does not read holds nothing for long."""
        try:
            await asyncio.wait_for(self.ws.send_text(json.dumps(payload)), self.settings.send_timeout_s)
        except asyncio.TimeoutError:
            raise StreamClose(ServingError(ErrorKind.DEADLINE, "client", NOT_READING)) from None
        except (RuntimeError, OSError):  # the connection failed under us (keepalive timeout, reset)
            raise WebSocketDisconnect(1006) from None

    async def _writer(self) -> None:
        """Triton's responses to the client until the final one."""
        assert self.config is not None
        while True:
            update, final = await self.seq.next_response()
            if update is not None:
                update["latency_ms"] = self._latency_ms(update, final)
                self.update_end_s = max(self.update_end_s, update["t_end"])
                self.updates += 1
                await self._send(update)
                self.observer.update_sent(update["latency_ms"], self.config.hop_s)
                for alert in self.alerts.update(update["t_end"], update):  # after the update that decided it
                    await self._send(alert)
            self.progress.set()
            if final:
                for alert in self.alerts.finish():  # the stream ends: so do its alerts
                    await self._send(alert)
                self.finished = True
                return

    # ---------------------------------------------------------------- the session

    async def handshake(self) -> None:
        """The config message (StreamClose for a bad one or none in time; WebSocketDisconnect if the client left).

        SageMaker: the settings may be the query string, the config a binary frame (stream_sagemaker.py)."""
        try:
            text = query_config(self.ws.query_params)
        except ServingError as exc:
            raise StreamClose(exc) from None
        if text is None:
            try:
                message = await asyncio.wait_for(self.ws.receive(), self.settings.first_message_timeout_s)
            except asyncio.TimeoutError:
                raise bad("config", f"no config message within {self.settings.first_message_timeout_s:g} s") from None
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect()
            try:
                text = config_text(message)
            except ServingError as exc:
                raise StreamClose(exc) from None
        self.config, self.encoding, rules = parse_config_message(text)
        self.alerts = AlertTracker(rules)
        dtype, scale = ENCODINGS[self.encoding]
        s = self.settings
        self.joiner = AudioJoiner(self.config, dtype, scale, s.coalesce_s, s.max_chunk_s)
        self.audio_limit = s.audio_message_bytes(self.config, dtype)

    async def _open(self) -> None:
        cfg = self.config
        assert cfg is not None
        self.seq.open(sample_rate=cfg.sample_rate, channels=cfg.channels, hop_s=cfg.hop_s, window_s=cfg.window_s)
        try:
            first = await asyncio.wait_for(self.seq.next_response(), self.settings.open_timeout_s)
        except asyncio.TimeoutError:
            raise StreamClose(ServingError(ErrorKind.OVERLOADED, "stream",
                              "the inference server did not open the stream in time")) from None  # fmt: skip
        if first != (None, False):
            raise StreamClose(ServingError(ErrorKind.INTERNAL, "stream", "unexpected first response"))
        await self._send({
            "ready": True, "sample_rate": cfg.sample_rate, "channels": cfg.channels, "encoding": self.encoding,
            "hop_s": cfg.hop_s, "window_s": cfg.window_s, "max_message_bytes": self.settings.max_message_bytes,
            "max_audio_message_bytes": self.audio_limit,
        })  # fmt: skip
        self.observer.opened(cfg)

    async def _pumps(self) -> None:
        reader = asyncio.ensure_future(self._reader())
        writer = asyncio.ensure_future(self._writer())
        try:
            done, _ = await asyncio.wait([reader, writer], return_when=asyncio.FIRST_COMPLETED)
            if reader in done and writer not in done:
                if reader.result() == "gone":  # raises the reader's StreamClose
                    log.info("stream %x: client disconnected after %d updates; aborting", self.sid, self.updates)
                    raise WebSocketDisconnect()
                await asyncio.wait_for(asyncio.shield(writer), self.settings.end_timeout_s)
            writer.result()  # raises the writer's StreamClose
        finally:
            for task in (reader, writer):  # neither waits on the gRPC call itself: cancelling them is safe
                task.cancel()

    async def run(self) -> None:
        """After :meth:`handshake`: open the Triton sequence, relay until the end, close both sides."""
        code, error = CLOSE_NORMAL, None
        try:
            await self._open()
            await self._pumps()
        except StreamClose as exc:
            code, error = exc.code, exc.error
        except WebSocketDisconnect:
            code = 1001
            log.info("stream %x: client disconnected", self.sid)
        except asyncio.TimeoutError:
            code, error = 1011, ServingError(ErrorKind.DEADLINE, "stream", "the last update did not come in time")
        except grpc.RpcError as exc:  # Triton unreachable: the client gets a reason, never a trace
            log.warning("stream %x: failed (%s)", self.sid, type(exc).__name__)
            code = CLOSE_CODES[ErrorKind.OVERLOADED]
            error = ServingError(ErrorKind.OVERLOADED, "stream", "inference server unavailable")
        finally:
            await self.seq.close(self.finished, self.settings.close_timeout_s)
        await self.close_socket(code, error)

    async def close_socket(self, code: int, error: ServingError | None) -> None:
        """The error message and the close frame, each within ``send_timeout_s`` (a client that does not read
        is left to the WebSocket layer, which drops the connection after its own close timeout)."""
        self.observer.closed(code)
        if self.ws.client_state != WebSocketState.CONNECTED:
            return
        if error is not None and error.reason == NOT_READING:
            log.info("stream %x: client not reading; dropped", self.sid)
            return  # its write buffer is full: nothing more can reach it
        try:
            if error is not None:
                log.info("stream %x: closing %d (%s: %s)", self.sid, code, error.kind.value, error.subject)
                await asyncio.wait_for(self.ws.send_text(json.dumps(error_message(error, code))),
                                       self.settings.send_timeout_s)  # fmt: skip
            await asyncio.wait_for(self.ws.close(code, error.kind.value if error is not None else "end"),
                                   self.settings.send_timeout_s)  # fmt: skip
        except (RuntimeError, WebSocketDisconnect, OSError, asyncio.TimeoutError):
            pass  # the client is gone already, or does not read
