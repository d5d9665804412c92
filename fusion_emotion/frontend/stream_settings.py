"""``/stream``'s front-end bounds (environment variables) and the WebSocket transport options they imply.

Every bound here is listed with its default and measured effect in docs/reliability.md ("Live streams");
the model enforces its own (``core.stream.StreamLimits``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.core.stream import StreamConfig

ENV_PREFIX = "FUSION_EMOTION_"
_ENV_NAMES = {"model_name": "STREAM_MODEL_NAME", "max_streams": "MAX_STREAMS"}


@dataclass(frozen=True)
class StreamSettings:
    """Front-end bounds of ``/stream``; each is ``FUSION_EMOTION_STREAM_<NAME>`` (upper case) in the environment."""

    model_name: str = C.STREAM_MODEL
    max_streams: int = 8
    """Streams taken (config accepted); more are closed with 1013 before any Triton work."""
    max_unconfigured: int = 64
    """Connections that have not sent their config yet, counted apart from the streams (they hold no Triton work)."""
    first_message_timeout_s: float = 5.0
    """The config must come within this; the model must take the stream within ``open_timeout_s``."""
    open_timeout_s: float = 10.0
    max_message_bytes: int = 1 << 20
    """One frame once base64-decoded, and one audio message (which is also at most ``max_chunk_s`` of audio)."""
    max_chunk_s: float = 10.0
    """Audio per message and per Triton request (the model's own ``max_chunk_s``, default 10 s)."""
    max_lag_hops: float = 2.0
    """A client more than this many hops of audio ahead of its updates is not read until they catch up."""
    end_timeout_s: float = 120.0
    """After ``{"end": true}``: how long the last update may take."""
    send_timeout_s: float = 10.0
    """One message to the client; a client that does not read for this long is closed (4408)."""
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    """Server keepalive pings: a client that answers none within this is closed; one silent for their sum too.
    A client's pong waits behind what it sent and is not read yet (paced): a few seconds at most for a client
    that keeps to its rates, so the timeout is generous."""
    close_timeout_s: float = 5.0
    """After the abort/END was queued: how long Triton may take to end the gRPC call before it is cancelled."""
    max_outstanding: int = 4
    """Requests of one stream queued or at Triton and not yet taken by the model; past it the client is not read."""
    coalesce_s: float = 0.25
    """Audio messages are joined into requests of at least this much audio (or up to the next hop's end)."""
    max_messages_per_s: float = 4000.0
    max_bytes_per_s: float = 8.0 * (1 << 20)
    max_frames_per_s: float = 60.0
    """Wall-clock rates per stream (one second of burst); a client above them is read more slowly."""
    max_frame_lead_s: float = 2.0
    """Frames more than this ahead of the audio received are dropped before decoding."""
    ws_max_queue: int = 4
    """Messages the WebSocket layer reads ahead of the stream (each up to ``transport_max_bytes``)."""

    @property
    def transport_max_bytes(self) -> int:
        """uvicorn's ``ws_max_size``: room for a base64 frame at the limit; beyond it the protocol closes 1009."""
        return self.max_message_bytes * 4 // 3 + 64 * 1024

    def audio_message_bytes(self, config: StreamConfig, dtype: str) -> int:
        """The largest audio message of this stream: ``max_message_bytes`` and ``max_chunk_s`` of audio."""
        frame = np.dtype(dtype).itemsize * config.channels
        return min(self.max_message_bytes, int(self.max_chunk_s * config.sample_rate) * frame)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StreamSettings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = _ENV_NAMES.get(f.name, "STREAM_" + f.name.upper())
            raw = env.get(ENV_PREFIX + name, "").strip()
            if raw:
                values[f.name] = {"int": int, "float": float}.get(str(f.type), str)(raw)
        settings = cls(**values)
        if settings.max_streams < 1 or settings.max_message_bytes < 1024 or settings.max_lag_hops < 1.5:
            raise ValueError("stream settings: max_streams >= 1, max_message_bytes >= 1024, max_lag_hops >= 1.5")
        if settings.max_outstanding < 2 or settings.max_unconfigured < 1 or settings.ws_max_queue < 1:
            raise ValueError("stream settings: max_outstanding >= 2, max_unconfigured >= 1, ws_max_queue >= 1")
        return settings


def uvicorn_ws_options(settings: StreamSettings) -> dict[str, Any]:
    """uvicorn's WebSocket options for ``/stream`` (``serve``, ``ui`` and the tests use these, no other copy).

    Keepalive pings close a client that stopped reading or vanished; a paced client is not read for at most
    about ``max_lag_hops`` hops (a few seconds), far below the ping timeout.
    """
    return {
        "ws_max_size": settings.transport_max_bytes,
        "ws_max_queue": settings.ws_max_queue,
        "ws_ping_interval": settings.ping_interval_s,
        "ws_ping_timeout": settings.ping_timeout_s,
    }
