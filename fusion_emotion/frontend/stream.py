"""``GET /stream``: live emotion updates over a WebSocket, relayed to Triton's ``fusion_emotion_stream``.

One WebSocket = one Triton sequence on one gRPC bidirectional stream (over the app's shared channel).
The protocol (docs/streaming.md):

* client -> server: first a text JSON config ``{"sample_rate": 16000, "encoding": "pcm_s16le"}`` (+ optional
  ``channels``, ``hop_s``, ``window_s``); then binary messages of raw PCM in that encoding (each at most
  ``max_audio_message_bytes``: 1 MiB and 10 s of audio; a sample split across messages is joined), text JSON
  frames ``{"frame_jpeg_b64": "...", "t": seconds}`` or ``{"frame_rgb_b64": "...", "width": W, "height": H,
  "t": s}``, and finally ``{"end": true}``.
* server -> client: ``{"ready": true, ...the effective settings and limits}``, then one text JSON update per
  hop, ``{"t_start", "t_end", "angry", ..., "sad", "qa_flags": {...}, "dominant_emotion", "latency_ms"}``,
  the last one for the partial window after ``{"end": true}``, then a normal close (1000). A bad message
  gets ``{"error", "kind", "subject", "close_code"}`` and the close code of :data:`CLOSE_CODES`.

The parts, one purpose each: ``stream_protocol`` (close codes, message parsing), ``stream_settings`` (the
bounds), ``stream_pacing`` (rates, joining audio), ``stream_triton`` (the sequence's gRPC call),
``stream_session`` (one WebSocket's life). This module counts connections and streams. Nothing about the
content is logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from fastapi import FastAPI, WebSocket
from starlette.websockets import WebSocketDisconnect

from fusion_emotion.errors import ErrorKind, ServingError
from fusion_emotion.frontend.stream_protocol import (
    CLOSE_CODES,
    CLOSE_MAX_DURATION,
    CLOSE_NORMAL,
    CLOSE_UNSUPPORTED,
    ENCODINGS,
    StreamClose,
    close_code,
    error_message,
    parse_config,
)
from fusion_emotion.frontend.stream_sagemaker import BIDI_PATH
from fusion_emotion.frontend.stream_session import NoObserver, StreamObserver, StreamSession
from fusion_emotion.frontend.stream_settings import StreamSettings, uvicorn_ws_options

log = logging.getLogger("fusion_emotion.frontend.stream")


class _InvalidUtf8Quiet(logging.Filter):
    """uvicorn logs a text frame of invalid UTF-8 (which it closes with 1007, correctly) as an ERROR with a
    traceback: a client's mistake, logged here as one INFO line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Invalid UTF-8 sequence received from client"):
            log.info("stream: a text message was not valid UTF-8; closed 1007")
            return False
        return True


_QUIET_UTF8 = _InvalidUtf8Quiet()

__all__ = [
    "CLOSE_CODES", "CLOSE_MAX_DURATION", "CLOSE_NORMAL", "CLOSE_UNSUPPORTED", "ENCODINGS", "NoObserver",
    "StreamClose", "StreamObserver", "StreamSession", "StreamSettings", "add_stream_route", "close_code",
    "error_message", "parse_config", "uvicorn_ws_options",
]  # fmt: skip


async def _refuse(websocket: WebSocket, reason: str) -> None:
    error = ServingError(ErrorKind.OVERLOADED, "stream", reason)
    try:
        await websocket.send_text(json.dumps(error_message(error, 1013)))
        await websocket.close(1013, "overloaded")
    except (RuntimeError, WebSocketDisconnect, OSError):
        pass


def add_stream_route(
    app: FastAPI,
    settings: StreamSettings | None = None,
    observer: Callable[[], StreamObserver] | None = None,
) -> None:
    """Register ``/stream``, also at SageMaker's ``/invocations-bidirectional-stream`` (on ``app.state.gateway``,
    the app's one Triton client).

    Connections without a config yet (at most ``max_unconfigured``, each for ``first_message_timeout_s``)
    are counted apart from streams (at most ``max_streams``, counted once their config is accepted), so idle
    sockets cannot take the streams' places. ``observer`` makes each session's :class:`StreamObserver`.
    """
    settings = settings or StreamSettings.from_env()
    app.state.stream_settings = settings
    logging.getLogger("uvicorn.error").addFilter(_QUIET_UTF8)  # one filter instance: added once
    counts = {"unconfigured": 0, "streams": 0}
    sessions: set[StreamSession] = set()  # the streams taken, for a metrics reader and the tests
    app.state.stream_counts, app.state.stream_sessions = counts, sessions

    @app.websocket("/stream")
    @app.websocket(BIDI_PATH)  # SageMaker's bidirectional streaming opens this path by default
    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()
        if counts["unconfigured"] >= settings.max_unconfigured:
            await _refuse(websocket, f"{settings.max_unconfigured} connections are waiting to start; retry later")
            return
        session = StreamSession(websocket, app.state.gateway.client, settings, observer() if observer else None)
        counts["unconfigured"] += 1
        try:
            await session.handshake()
        except StreamClose as exc:
            await session.close_socket(exc.code, exc.error)
            return
        except WebSocketDisconnect:
            return
        finally:
            counts["unconfigured"] -= 1
        if counts["streams"] >= settings.max_streams:
            session.observer.closed(1013)
            await _refuse(websocket, f"{settings.max_streams} streams are open, the limit; retry later")
            return
        counts["streams"] += 1
        sessions.add(session)
        try:
            await session.run()
        except Exception:  # our fault: the stream ends with 1011, the service goes on
            log.exception("stream %x: session failed", session.sid)
            await session.close_socket(1011, ServingError(ErrorKind.INTERNAL, "stream", "internal error"))
        finally:
            counts["streams"] -= 1
            sessions.discard(session)
