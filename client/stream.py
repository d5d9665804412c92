"""Streaming client of the front end's ``GET /stream`` WebSocket.

:func:`media_source` reads a WAV or a video file's audio track (and its frames, as JPEG) and :func:`play`
plays it into the stream, at real-time pace or as fast as the server takes it, handing every server message
to a callback. ``fusion-emotion stream`` and ``fusion-emotion bench-stream`` are built on it. The tritonclient
tensors of the ``fusion_emotion_stream`` model itself (gRPC, sequence batcher) are in ``fusion_emotion.tensors``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import websockets

# --------------------------------------------------------------------------- media to play


@dataclass
class MediaSource:
    """Audio (int16 PCM, interleaved) and optional JPEG frames with their times, ready to stream."""

    pcm: np.ndarray  # int16 [n, channels]
    sample_rate: int
    frames: list[tuple[float, bytes]] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return int(self.pcm.shape[1])

    @property
    def duration_s(self) -> float:
        return self.pcm.shape[0] / self.sample_rate


def _to_int16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 32767 / 32768) * 32768.0).astype("<i2")


def jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    """One RGB frame as the JPEG bytes a frame message carries."""
    import cv2  # optional: [models] (play() sends what it is given and needs no encoder)

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def media_source(data: bytes, *, fps: float = 5.0, max_width: int = 640, with_frames: bool = True) -> MediaSource:
    """A WAV (audio only) or a video file (its audio track, resampled to mono or stereo kept, and its frames
    at ``fps``, scaled to at most ``max_width`` wide and JPEG-encoded, stamped with their stream times)."""
    # optional: [models] (reading media to stream; play() needs no decoder)
    import av

    from fusion_emotion.core.audio import audio_frame_to_float, decode_audio
    from fusion_emotion.core.model_inputs import to_mono
    from fusion_emotion.core.probe import MediaLimits

    if data[:4] == b"RIFF":
        dec = decode_audio(data)
        samples, rate = dec.samples, dec.sample_rate
        frames: list[tuple[float, bytes]] = []
    else:
        samples, rate, frames = None, 0, []
        with av.open(io.BytesIO(data)) as container:
            astream = container.streams.audio[0] if container.streams.audio else None
            vstream = container.streams.video[0] if (with_frames and container.streams.video) else None
            chunks = []
            next_t = 0.0
            start = None
            streams = [s for s in (astream, vstream) if s is not None]
            if not streams:
                raise ValueError("the file has neither audio nor video")
            for packet in container.demux(*streams):
                for frame in packet.decode():
                    if isinstance(frame, av.AudioFrame):
                        chunks.append(audio_frame_to_float(frame))
                        rate = frame.sample_rate
                    elif frame.time is not None:
                        start = frame.time if start is None else start
                        t = frame.time - start
                        if t + 1e-6 >= next_t:
                            w = min(max_width, frame.width)
                            h = int(round(frame.height * w / frame.width)) // 2 * 2
                            rgb = frame.reformat(width=w, height=h, format="rgb24").to_ndarray()
                            frames.append((round(t, 6), jpeg(rgb)))
                            next_t += 1.0 / fps
            if chunks:
                samples = np.concatenate(chunks, axis=1)
        if samples is None:
            raise ValueError("the file has no audio track: streams are driven by audio")
        limits = MediaLimits()
        if samples.shape[0] > 2:
            samples = to_mono(samples)[None]
        if not limits.min_sample_rate <= rate <= 48_000:
            raise ValueError(f"audio at {rate} Hz; streams take 8-48 kHz")
    if samples.shape[0] > 2:
        samples = to_mono(samples)[None]
    return MediaSource(_to_int16(samples.T), int(rate), frames)


# --------------------------------------------------------------------------- WebSocket player


@dataclass
class PlayResult:
    updates: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)  # {"alert": {...}} messages, in order
    ready: dict[str, Any] | None = None
    close_code: int | None = None
    # client-side: seconds from sending the chunk that completed an update's hop to receiving the update
    client_latency_s: list[float] = field(default_factory=list)
    sent_s: float = 0.0


class TransportClosed(Exception):
    """Raised by a ``connect`` transport that was closed (as websockets raises ConnectionClosed)."""


CLOSED = (websockets.ConnectionClosed, TransportClosed)


def stream_config(
    source: MediaSource,
    hop_s: float | None = None,
    window_s: float | None = None,
    alerts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The stream settings for ``source``: the first message's JSON, or a query string's keys (no alerts)."""
    config: dict[str, Any] = {"sample_rate": source.sample_rate, "encoding": "pcm_s16le", "channels": source.channels}
    if hop_s is not None:
        config["hop_s"] = hop_s
    if window_s is not None:
        config["window_s"] = window_s
    if alerts:
        config["alerts"] = alerts
    return config


def _chunks(source: MediaSource, chunk_s: float) -> Iterator[tuple[float, bytes, list[tuple[float, bytes]]]]:
    """(end_s, pcm bytes, frames due before this audio) per chunk, in order."""
    step = max(1, int(round(chunk_s * source.sample_rate)))
    fi = 0
    for i in range(0, source.pcm.shape[0], step):
        end_s = min(source.pcm.shape[0], i + step) / source.sample_rate
        due = []
        while fi < len(source.frames) and source.frames[fi][0] <= end_s:
            due.append(source.frames[fi])
            fi += 1
        yield end_s, source.pcm[i : i + step].tobytes(), due


async def play(
    url: str,
    source: MediaSource,
    *,
    realtime: bool = False,
    chunk_s: float = 0.1,
    hop_s: float | None = None,
    window_s: float | None = None,
    alerts: list[dict[str, Any]] | None = None,
    on_message: Callable[[dict[str, Any]], None] | None = None,
    start_delay_s: float = 0.0,
    open_timeout_s: float = 30.0,
    end: bool = True,
    connect: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
    send_config: bool = True,
) -> PlayResult:
    """Stream ``source`` into ``url`` (ws://host:port/stream) and collect every server message.

    With ``realtime`` each chunk leaves when its audio would have been spoken; otherwise as fast as the
    server reads (it paces streams that get ahead of their updates). Frames go out before the audio that
    passes their time. Ends with ``{"end": true}`` (unless ``end`` is False: the connection is dropped).
    ``connect`` opens another transport with a WebSocket's ``send``/iteration/``close_code`` (SageMaker's
    bidirectional stream, ``fusion_emotion.client.sagemaker_stream``); without ``send_config`` the settings
    travel with the connection (a query string) instead of a first message.
    """

    result = PlayResult()
    await asyncio.sleep(start_delay_s)
    config = stream_config(source, hop_s, window_s, alerts)
    sent_at: list[tuple[float, float]] = []  # (audio end s, send time)

    opened = connect() if connect else websockets.connect(url, max_size=None, open_timeout=open_timeout_s,
                                                          ping_interval=None)  # fmt: skip
    async with opened as ws:

        async def receive() -> None:
            async for raw in ws:
                msg = json.loads(raw)
                now = time.perf_counter()
                if "t_end" in msg:
                    result.updates.append(msg)
                    done = [s for a, s in sent_at if a >= msg["t_end"] - 1e-6]
                    if done:
                        result.client_latency_s.append(now - done[0])
                elif "error" in msg:
                    result.errors.append(msg)
                elif "alert" in msg:
                    result.alerts.append(msg)
                elif msg.get("ready"):
                    result.ready = msg
                if on_message is not None:
                    on_message(msg)

        receiver = asyncio.ensure_future(receive())
        try:
            if send_config:
                await ws.send(json.dumps(config))
            t0 = time.perf_counter()
            for end_s, pcm, frames in _chunks(source, chunk_s):
                if realtime:
                    await asyncio.sleep(max(0.0, t0 + end_s - time.perf_counter()))
                for t, jpeg in frames:
                    await ws.send(json.dumps({"frame_jpeg_b64": base64.b64encode(jpeg).decode("ascii"), "t": t}))
                await ws.send(pcm)
                sent_at.append((end_s, time.perf_counter()))
                if receiver.done():
                    break
            result.sent_s = time.perf_counter() - t0
            if end and not receiver.done():
                await ws.send(json.dumps({"end": True}))
                sent_at.append((float("inf"), time.perf_counter()))
                await receiver
        except CLOSED:
            pass
        finally:
            if not end:
                receiver.cancel()
            else:
                try:
                    await asyncio.wait_for(receiver, timeout=600)
                except (*CLOSED, asyncio.CancelledError):
                    pass
        result.close_code = ws.close_code
    return result
