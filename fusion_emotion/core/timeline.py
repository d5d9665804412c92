"""Emotion timelines: overlapping windows over one media file, scored window by window.

Pure functions over bytes and numpy arrays, shared by the Triton
``fusion_emotion_timeline`` model and the in-process reference
(:func:`timeline_local`), so both compute the same numbers from the same code.

Decoding is one sequential pass: every frame time any window (or the
clip-level sample) needs is known up front, only those frames are converted to
RGB at the model's resize resolution, and each window is handed out as soon as
its 16 frames are in, so at most a few windows of frames are alive at once,
whatever the media's length. The encoders are injected as callables taking a
batch, so the Triton model can call them through BLS in chunks of the encoder's
max batch and the reference can call onnxruntime directly.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.core.features import clip_features, score_features
from fusion_emotion.core.fusion import FusionHead
from fusion_emotion.core.media import (
    DEFAULT_LIMITS,
    QA_FRAME_SLOTS,
    Cancel,
    MediaError,
    MediaLimits,
    VideoDecoder,
    decode_audio,
    fit_window,
    frames_for_model,
    resample_range,
    resampled_length,
    sample_times,
    to_mono,
)
from fusion_emotion.errors import ErrorKind
from fusion_emotion.handoff import put_until_stopped

log = logging.getLogger(__name__)

# Defaults: the audio encoder's own 4 s analysis window (no padding waste), and
# back-to-back windows. On CPU every window costs a full R3D-18 + HuBERT pass, so
# the number of windows sets the price: 60 s -> 15 windows. Overlapping hops
# (e.g. hop_s=2) double the resolution and the cost; on a GPU the windows of
# a request batch and overlap is cheap.
DEFAULT_WINDOW_S = 4.0
DEFAULT_HOP_S = 4.0
MIN_WINDOW_S = 1.0
MAX_WINDOW_S = 10.0
MIN_HOP_S = 0.5
DEFAULT_MAX_DURATION_S = 600.0
"""Longest media a timeline is computed for (seconds); longer media is refused as too large."""
DEFAULT_CHUNK = 8
"""Windows per encoder call: the encoders' max batch in the CPU profile."""
DEFAULT_MAX_WINDOWS = 150
"""Windows one request may ask for: 600 s at the default 4 s windows. Each is a full pass of both encoders."""
SEGMENT_COLUMNS = 2 + C.NUM_CLASSES  # start, end, six probabilities

Encode = Callable[[np.ndarray], np.ndarray]
T = TypeVar("T")


@dataclass(frozen=True)
class TimelineParams:
    """Validated window length and hop (seconds)."""

    window_s: float = DEFAULT_WINDOW_S
    hop_s: float = DEFAULT_HOP_S


def validate_params(window_s: float | None = None, hop_s: float | None = None) -> TimelineParams:
    """Defaults for missing values; MediaError (an INVALID_ARG in Triton) outside the documented bounds."""
    window = DEFAULT_WINDOW_S if window_s is None or math.isnan(window_s) else float(window_s)
    if not MIN_WINDOW_S <= window <= MAX_WINDOW_S:
        raise MediaError(
            "window_s", f"{window:g} s is outside [{MIN_WINDOW_S:g}, {MAX_WINDOW_S:g}] s", kind=ErrorKind.BAD_REQUEST
        )
    if hop_s is None or math.isnan(hop_s):
        hop = min(DEFAULT_HOP_S, window)
    else:
        hop = float(hop_s)
    if not MIN_HOP_S <= hop <= window:
        raise MediaError(
            "hop_s", f"{hop:g} s is outside [{MIN_HOP_S:g} s, window_s = {window:g} s]", kind=ErrorKind.BAD_REQUEST
        )
    return TimelineParams(window, hop)


def plan_windows(duration_s: float, params: TimelineParams) -> np.ndarray:
    """Window ``[start, end]`` pairs (float64 [W, 2], seconds from the media start), in time order.

    Windows start every ``hop_s``; a last window ending exactly at the end is
    added when the regular ones stop short of it, so the whole media is covered.
    Media shorter than one window gives one window spanning all of it.
    """
    if not duration_s > 0:
        raise ValueError(f"duration must be > 0, got {duration_s}")
    w, h = params.window_s, params.hop_s
    if duration_s <= w + 1e-9:
        return np.array([[0.0, float(duration_s)]])
    count = int(math.floor((duration_s - w) / h + 1e-9)) + 1
    starts = np.arange(count, dtype=np.float64) * h
    if starts[-1] + w < duration_s - 1e-6:
        starts = np.append(starts, duration_s - w)
    return np.stack([starts, starts + w], axis=1)


def window_frame_times(windows: np.ndarray, offset_s: float = 0.0, num: int = C.NUM_FRAMES) -> np.ndarray:
    """Stream times of the ``num`` frames sampled uniformly inside each window: float64 [W, num].

    Same rule as the clip-level sample (centres of equal slices), so a window
    spanning the whole media samples exactly the clip-level frames.
    """
    return np.stack([sample_times(float(e - s), num, float(s) + offset_s) for s, e in windows])


class WindowFrames:
    """Every window's 16 frames plus the clip-level sample, from one pass of the shared :class:`VideoDecoder`.

    Iterate :meth:`windows` to receive ``(index, uint8 [16, 128, 171, 3])`` in window order, each as soon as
    its frames are decoded; afterwards ``clip_frames``, ``qa_frames``, ``audio`` and ``sample_rate`` hold the
    clip-level sample (exactly what ``media.decode_video`` returns) and the audio track.
    """

    def __init__(
        self,
        data: bytes,
        params: TimelineParams,
        *,
        want_audio: bool = True,
        limits: MediaLimits = DEFAULT_LIMITS,
        input_name: str = "video",
        num_frames: int = C.NUM_FRAMES,
        max_windows: int | None = None,
        cancel: Cancel | None = None,
    ) -> None:
        self.num_frames = num_frames
        self.decoder = VideoDecoder(data, want_audio=want_audio, limits=limits, input_name=input_name, cancel=cancel)
        self.duration_s = float(self.decoder.duration_s)
        self.windows_s = plan_windows(self.duration_s, params)
        check_window_count(len(self.windows_s), max_windows)
        self.clip_frames: np.ndarray | None = None
        self.qa_frames: np.ndarray | None = None
        self.audio: np.ndarray | None = None
        self.sample_rate: int | None = None

    def windows(self) -> Iterator[tuple[int, np.ndarray]]:
        """Decode once; yield each window's frames in window order."""
        n, num = len(self.windows_s), self.num_frames
        # Slots: window w owns [w*num, (w+1)*num); the clip-level sample owns the last num.
        times = np.concatenate(
            [window_frame_times(self.windows_s, self.decoder.start_s, num).reshape(-1), self.decoder.clip_times(num)]
        )
        clip_base = n * num
        qa_slots = [clip_base + s for s in QA_FRAME_SLOTS] if num == C.NUM_FRAMES else []
        slots: list[np.ndarray | None] = [None] * len(times)
        filled = np.zeros(n + 1, dtype=np.int64)
        qa: dict[int, np.ndarray] = {}
        next_window = 0
        for slot, rgb, qa_rgb in self.decoder.sample(times, qa_slots):
            slots[slot] = rgb
            filled[slot // num] += 1
            if qa_rgb is not None:
                qa[slot] = qa_rgb
            while next_window < n and filled[next_window] == num:
                start = next_window * num
                yield next_window, np.stack(slots[start : start + num])  # type: ignore[arg-type]
                slots[start : start + num] = [None] * num  # bounded memory: done windows are dropped
                next_window += 1
        self.clip_frames = np.stack(slots[clip_base:])  # type: ignore[arg-type]
        if qa_slots and len(qa) == len(qa_slots):
            self.qa_frames = np.stack([qa[s] for s in qa_slots])
        self.audio, self.sample_rate = self.decoder.audio, self.decoder.sample_rate


def check_window_count(count: int, max_windows: int | None) -> None:
    """Every window is a full pass of both encoders: the count a caller may ask for is capped (413)."""
    if max_windows is not None and count > max_windows:
        raise MediaError(
            "request",
            f"{count} timeline windows requested, over the {max_windows}-window limit (use a longer hop_s)",
            kind=ErrorKind.TOO_LARGE,
        )


def audio_windows(mono: np.ndarray, rate: int, windows: np.ndarray) -> Iterator[np.ndarray | None]:
    """Each window's span of the track at 16 kHz, brought to the encoder window; None where it has no audio.

    ``mono`` is at its native ``rate``: only each window's span is resampled (``media.resample_range``).
    """
    total = resampled_length(mono.shape[0], rate)
    for s, e in windows:
        a, b = int(round(s * C.SAMPLE_RATE)), int(round(e * C.SAMPLE_RATE))
        yield fit_window(resample_range(mono, rate, a, b)) if a < min(b, total) else None


_DONE = object()


def prefetch(items: Iterator[T], depth: int) -> Iterator[T]:
    """Iterate ``items`` in a worker thread, at most ``depth`` items ahead (bounded memory).

    PyAV decodes and rescales without the GIL, so a decode pass overlaps the
    encoder calls made by the consumer. The worker's exception is raised in
    the consumer; a consumer that stops early stops the worker.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: Any) -> bool:
        return put_until_stopped(q, item, stop)

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    break
            put(_DONE)
        except BaseException as exc:  # handed to the consumer
            put(exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=work, name="timeline-decode", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


@dataclass
class Timeline:
    """Windows (seconds), per-window probabilities and the clip-level result."""

    windows: np.ndarray  # float64 [W, 2]
    probabilities: np.ndarray  # float32 [W, 6]
    clip_probabilities: np.ndarray  # float32 [6]
    clip_qa_flags: np.ndarray  # float32 [6]
    duration_s: float

    def segments(self) -> np.ndarray:
        """float32 [W, 8]: start, end, then the six probabilities (the Triton output)."""
        return np.concatenate([self.windows.astype(np.float32), self.probabilities.astype(np.float32)], axis=1)


def _encode_chunked(
    encode: Encode, rows: Iterator[np.ndarray], chunk: int, dim: int, cancel: Cancel | None = None
) -> np.ndarray:
    """Run ``encode`` over an iterator of rows in batches of at most ``chunk`` rows (cancellable between them)."""
    out: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        if cancel is not None and cancel():
            raise MediaError("request", "request cancelled", kind=ErrorKind.CANCELLED)
        out.append(np.asarray(encode(np.stack(batch)), dtype=np.float32))
        batch.clear()

    for row in rows:
        batch.append(row)
        if len(batch) == chunk:
            flush()
    if batch:
        flush()
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


def compute_timeline(
    video: bytes | None,
    audio: bytes | None,
    params: TimelineParams,
    *,
    encode_video: Encode,
    encode_audio: Encode,
    head: FusionHead,
    limits: MediaLimits = DEFAULT_LIMITS,
    chunk: int = DEFAULT_CHUNK,
    max_windows: int | None = DEFAULT_MAX_WINDOWS,
    cancel: Cancel | None = None,
) -> Timeline:
    """Decode once, encode the windows (and the clip) in chunks, score with the fusion head.

    A WAV, when sent, is the audio; otherwise the video's own track is used. The clip-level result is
    computed exactly as the ``fusion_emotion`` model does (``features.prepare_request`` features). When a
    single window spans the whole media, it is the clip. ``cancel`` is polled while decoding and between
    encoder calls; more than ``max_windows`` windows are refused before any work.
    """
    if video is None and audio is None:
        raise MediaError(
            "request", "neither 'video' nor 'audio' was sent; at least one is required", kind=ErrorKind.BAD_REQUEST
        )
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    native: np.ndarray | None = None
    rate: int | None = None
    if audio is not None:
        dec = decode_audio(audio, limits=limits, cancel=cancel)
        native, rate = dec.samples, dec.sample_rate
    clip_frames = qa_frames = video_emb = None
    if video is not None:
        frames = WindowFrames(
            video, params, want_audio=audio is None, limits=limits, max_windows=max_windows, cancel=cancel
        )
        windows, duration = frames.windows_s, frames.duration_s
        # Decoding runs ahead in a thread while the encoders work on the previous chunk.
        rows = (frames_for_model(f) for _, f in prefetch(frames.windows(), depth=chunk))
        video_emb = _encode_chunked(encode_video, rows, chunk, C.VIDEO_EMBED_DIM, cancel)
        clip_frames, qa_frames = frames.clip_frames, frames.qa_frames
        if audio is None and frames.audio is not None:
            native, rate = frames.audio, frames.sample_rate
    else:
        assert native is not None and rate
        duration = native.shape[1] / rate
        windows = plan_windows(duration, params)
        check_window_count(len(windows), max_windows)
    n = len(windows)
    whole = n == 1 and windows[0, 0] == 0.0 and abs(windows[0, 1] - duration) < 1e-9
    has_audio = np.zeros(n, dtype=bool)
    audio_emb = np.zeros((n, C.AUDIO_EMBED_DIM), np.float32)
    feats = clip_features(clip_frames, qa_frames, native, rate)
    if feats.waveform is not None and native is not None and rate:
        if whole:  # the one window is the clip: the same input as the fusion_emotion model
            has_audio[0] = True
            audio_emb[:1] = encode_audio(feats.waveform[None])
        else:
            mono = to_mono(native)
            has_audio = np.array([w is not None for w in audio_windows(mono, rate, windows)])
            if has_audio.any():
                rows = (w for w in audio_windows(mono, rate, windows) if w is not None)
                audio_emb[has_audio] = _encode_chunked(encode_audio, rows, chunk, C.AUDIO_EMBED_DIM, cancel)

    # Clip level: what the fusion_emotion model computes for the same request.
    clip_v = clip_a = None
    if feats.frames is not None:
        clip_v = video_emb[:1] if whole and video_emb is not None else encode_video(feats.frames[None])
    if feats.waveform is not None:
        clip_a = audio_emb[:1] if whole else encode_audio(feats.waveform[None])
    clip_probs, clip_flags = score_features(head, feats, clip_v, clip_a)

    mask = np.stack([np.full(n, video_emb is not None, np.float32), has_audio.astype(np.float32)], axis=1)
    v = video_emb if video_emb is not None else np.zeros((n, C.VIDEO_EMBED_DIM), np.float32)
    probs = head.probabilities(v, audio_emb, mask) if n else np.zeros((0, C.NUM_CLASSES), np.float32)
    if whole:
        probs = clip_probs[None].copy()
    log.debug("timeline: %d windows over %.2f s", n, duration)
    return Timeline(windows, probs, clip_probs, clip_flags, float(duration))


def timeline_result(segments: np.ndarray, probabilities: np.ndarray, qa_flags: np.ndarray | None) -> dict[str, Any]:
    """The product's JSON (``result.result_dict``) plus ``"segments"`` in time order."""
    from fusion_emotion.core.result import result_dict

    out = result_dict(probabilities, qa_flags)
    rows = np.asarray(segments, dtype=np.float64).reshape(-1, SEGMENT_COLUMNS)
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    out["segments"] = [
        {
            "start": round(float(r[0]), 6),
            "end": round(float(r[1]), 6),
            **{label: float(p) for label, p in zip(C.LABELS, r[2:], strict=True)},
            "dominant_emotion": C.LABELS[int(np.argmax(r[2:]))],
        }
        for r in rows
    ]
    return out


def timeline_limits(max_duration_s: float = DEFAULT_MAX_DURATION_S, base: MediaLimits = DEFAULT_LIMITS) -> MediaLimits:
    """``base`` with the timeline's duration bound."""
    return dataclasses.replace(base, max_duration_s=float(max_duration_s))


def timeline_local(
    pipeline: Any,
    video: bytes | None,
    audio: bytes | None,
    window_s: float | None = None,
    hop_s: float | None = None,
    *,
    max_duration_s: float = DEFAULT_MAX_DURATION_S,
    chunk: int = DEFAULT_CHUNK,
) -> dict[str, Any]:
    """In-process reference (a ``pipeline.ReferencePipeline``): the same JSON the front end returns."""
    timeline = compute_timeline(
        video,
        audio,
        validate_params(window_s, hop_s),
        encode_video=pipeline.video_encoder,
        encode_audio=pipeline.audio_encoder,
        head=pipeline.head,
        limits=timeline_limits(max_duration_s, pipeline.limits),
        chunk=chunk,
    )
    return timeline_result(timeline.segments(), timeline.clip_probabilities, timeline.clip_qa_flags)
