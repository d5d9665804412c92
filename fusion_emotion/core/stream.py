"""Real-time streams: rolling audio and frame buffers, hop scheduling and per-stream limits, in pure numpy.

A stream is a sequence of chunks (audio samples at the caller's rate, and optionally video frames with
their stream times). Every ``hop_s`` of audio it yields one *window* ``[t_end - window_s, t_end]`` (the
first windows start at 0 and hold what has arrived so far; ``core.windows.plan_stream_windows``); at the
end, one last window for the partial hop. Each window becomes a row (``core.rows``) by :func:`window_row`,
exactly as a file request of that span would (the 16 frames sampled over the window by the file rule, the
audio resampled with the file path's resampler, the face detector's larger copies of 4 of the 16 frames).

Two users share every function here, so their numbers agree by construction:

* :class:`StreamState`, the rolling per-stream state kept by the Triton model ``fusion_emotion_stream``
  (through ``core.stream_runtime``): bounded memory (history is dropped once no future window can need
  it), limits checked before any heavy work;
* :func:`reference_updates`, the offline reference: the whole recording at once, cut into the same
  windows, with injected encoders.

Exactness at other rates than 16 kHz: a window's resampled audio must not depend on where the chunks
were cut, so a window is due only once every input sample the resampler's filter reaches has arrived
(``model_inputs.resample_span``: 1-2 ms of audio past the hop); the buffer keeps the filter's reach of history.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields

import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.core.embed import Encode, embed, score_embeddings
from fusion_emotion.core.fusion import FusionHead
from fusion_emotion.core.model_inputs import fit_window, frames_for_model, resample_range, resample_span, to_mono
from fusion_emotion.core.rows import Row, media_row
from fusion_emotion.core.stream_frames import StreamFrame
from fusion_emotion.core.video import QA_FRAME_SLOTS, ClipFrames
from fusion_emotion.core.windows import (
    FRAME_TIME_EPS,
    STREAM_DEFAULTS,
    StreamWindow,
    WindowParams,
    closing_window,
    pick_in_window,
    plan_stream_windows,
    regular_window,
    window_params,
)
from fusion_emotion.errors import ErrorKind, ServingError

log = logging.getLogger(__name__)

MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 48_000
MAX_CHANNELS = 2


def _bad(subject: str, reason: str) -> ServingError:
    return ServingError(ErrorKind.BAD_REQUEST, subject, reason)


@dataclass(frozen=True)
class StreamConfig:
    """One stream's settings, validated (:func:`stream_config`)."""

    sample_rate: int = C.SAMPLE_RATE
    channels: int = 1
    hop_s: float = STREAM_DEFAULTS.hop_s
    window_s: float = STREAM_DEFAULTS.window_s

    @property
    def windows(self) -> WindowParams:
        return WindowParams(self.window_s, self.hop_s)


def _number(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        raise _bad(name, "must be a number") from None
    if not math.isfinite(out):
        raise _bad(name, "must be a finite number")
    return out


def stream_config(
    sample_rate: float | None = None,
    channels: float | None = None,
    hop_s: float | None = None,
    window_s: float | None = None,
) -> StreamConfig:
    """Defaults for missing values; a BAD_REQUEST ``ServingError`` naming the setting outside its bounds."""
    rate = _number("sample_rate", sample_rate)
    rate_i = C.SAMPLE_RATE if rate is None else int(rate)
    if rate is not None and rate != rate_i:
        raise _bad("sample_rate", f"{rate:g} is not a whole number of Hz")
    if not MIN_SAMPLE_RATE <= rate_i <= MAX_SAMPLE_RATE:
        raise _bad("sample_rate", f"{rate_i} Hz is outside [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz")
    ch = _number("channels", channels)
    ch_i = 1 if ch is None else int(ch)
    if (ch is not None and ch != ch_i) or not 1 <= ch_i <= MAX_CHANNELS:
        raise _bad("channels", f"{ch:g} channels; 1 (mono) or 2 (stereo, interleaved) are accepted")
    params = window_params(window_s, hop_s, STREAM_DEFAULTS)
    return StreamConfig(rate_i, ch_i, params.hop_s, params.window_s)


@dataclass(frozen=True)
class StreamLimits:
    """Server-side bounds, checked before heavy work; the Triton model reads them from its parameters."""

    max_streams: int = 8
    """Concurrent streams per model instance; a START beyond it is refused (OVERLOADED)."""
    idle_timeout_s: float = 10.0
    """A stream with no chunk and no pending update for this long is dropped (DEADLINE)."""
    max_duration_s: float = 3600.0
    """Longest stream, in stream time or wall time, whichever is reached first (TOO_LARGE)."""
    max_chunk_s: float = 10.0
    """Audio per chunk (seconds at the stream's rate)."""
    max_frame_bytes: int = 1 << 20
    """One JPEG frame."""
    max_frame_width: int = 1920
    max_frame_height: int = 1080
    max_frames_per_chunk: int = 64
    max_fps: float = 30.0
    """Frames closer together than 0.9 / max_fps to the previous kept frame are dropped (not decoded)."""
    max_frame_store_bytes: int = 64 << 20
    """Decoded frames one stream may hold (its window plus one hop)."""
    max_pending_updates: int = 8
    """Updates of one stream waiting for the encoders; past it the oldest waiting update is dropped."""

    @classmethod
    def from_params(cls, params: dict[str, str]) -> StreamLimits:
        """Limits from Triton model parameters named like the fields; empty values keep the defaults."""
        values: dict[str, float | int] = {}
        for f in fields(cls):
            raw = params.get(f.name)
            if raw is None or str(raw).strip() == "":
                continue
            values[f.name] = float(raw) if f.type in ("float", float) else int(raw)
        return cls(**values)


def needed_native(end16: int, rate: int) -> int:
    """Input samples (at ``rate``) that must have arrived before audio up to ``end16`` is final."""
    return resample_span(rate, end16, end16)[1] if rate != C.SAMPLE_RATE else end16


def native_total16(n_native: int, rate: int) -> int:
    """16 kHz samples covered by ``n_native`` input samples (rounded down: only whole output samples)."""
    return n_native * C.SAMPLE_RATE // rate


# --------------------------------------------------------------------------- one window's row


def window_row(
    window: StreamWindow,
    native: np.ndarray | None,
    native_base: int,
    rate: int,
    frames: Sequence[StreamFrame],
) -> Row:
    """The encoders' inputs and media QA of one window, as a file request of that span computes them.

    ``native`` is float32 [channels, n] at ``rate`` holding input samples from absolute index
    ``native_base`` (a multiple of the resampler's ``down``, and at or before what the window's filter
    reaches) to at least ``needed_native(window.end16)``; ``frames`` are in time order.
    """
    waveform = audio_qa = None
    if native is not None and native.shape[1]:
        base16 = native_base * C.SAMPLE_RATE // rate
        wave = resample_range(to_mono(native), rate, window.start16 - base16, window.end16 - base16)
        if wave.size:
            waveform = fit_window(wave)
            a = window.start16 * rate // C.SAMPLE_RATE - native_base
            b = window.end16 * rate // C.SAMPLE_RATE - native_base
            audio_qa = native[:, max(0, a) : max(0, b)]
    clip = None
    picks = pick_in_window(np.array([f.t for f in frames]), window.t_start, window.t_end) if frames else None
    if picks is not None:
        small = np.stack([frames[i].rgb for i in picks])
        qa_frames = np.stack([frames[picks[s]].qa_copy() for s in QA_FRAME_SLOTS])
        clip = ClipFrames(small, qa_frames, frames_for_model(small), "stream")
    return media_row(clip, waveform, audio_qa, rate, input_name="frame")


@dataclass
class Update:
    """One emitted update: its window and what the fusion head said."""

    t_start: float
    t_end: float
    probabilities: np.ndarray  # float32 [6]
    qa_flags: np.ndarray  # float32 [6]


def score_updates(
    head: FusionHead,
    windows: Sequence[StreamWindow],
    rows: Sequence[Row],
    encode_video: Encode,
    encode_audio: Encode,
) -> list[Update]:
    """Encode the windows of many streams together (one batch per modality), then score each."""
    probs, flags = score_embeddings(head, embed(rows, encode_video, encode_audio))
    return [Update(w.t_start, w.t_end, p, f) for w, p, f in zip(windows, probs, flags, strict=True)]


# --------------------------------------------------------------------------- the live state


class AudioBuffer:
    """Native-rate audio ``[channels, n]`` as a deque of chunks, with absolute sample indices."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.chunks: collections.deque[np.ndarray] = collections.deque()
        self.start = 0  # absolute index of chunks[0][:, 0]
        self.end = 0  # absolute index one past the last sample received

    def append(self, chunk: np.ndarray) -> None:
        if chunk.shape[1]:
            self.chunks.append(chunk)
            self.end += chunk.shape[1]

    def drop_before(self, index: int) -> None:
        while self.chunks and self.start + self.chunks[0].shape[1] <= index:
            self.start += self.chunks.popleft().shape[1]

    def view(self, first: int, last: int) -> np.ndarray:
        """Samples ``[first, last)`` (absolute; clipped to what is held) as one array."""
        first, last = max(first, self.start), min(last, self.end)
        parts, pos = [], self.start
        for chunk in self.chunks:
            n = chunk.shape[1]
            if pos + n > first and pos < last:
                parts.append(chunk[:, max(0, first - pos) : min(n, last - pos)])
            pos += n
            if pos >= last:
                break
        if not parts:
            return np.zeros((self.channels, 0), np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.chunks)


@dataclass
class StreamState:
    """One live stream: what has arrived, which windows are due, and the bounds it must stay within.

    Not thread-safe: one owner (the Triton model's ``execute``) feeds it and takes its windows.
    """

    config: StreamConfig
    limits: StreamLimits = field(default_factory=StreamLimits)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.audio = AudioBuffer(self.config.channels)
        self.frames: list[StreamFrame] = []
        self.frame_bytes = 0
        self.emitted = 0  # regular windows handed out so far
        self.frames_dropped = 0
        self.last_kept_t = -math.inf
        self.last_activity = self.started

    # ---- input

    def add_audio(self, samples: np.ndarray) -> None:
        """Float32 samples, interleaved when stereo, full scale 1.0 (values beyond it are clipped)."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        ch, rate = self.config.channels, self.config.sample_rate
        if x.size % ch:
            raise _bad("audio", f"{x.size} values is not a whole number of {ch}-channel samples")
        n = x.size // ch
        if n > self.limits.max_chunk_s * rate:
            raise ServingError(
                ErrorKind.TOO_LARGE,
                "audio",
                f"chunk of {n / rate:.2f} s is over the {self.limits.max_chunk_s:g} s chunk limit",
            )
        if not np.isfinite(x).all():
            raise ServingError(ErrorKind.INVALID_MEDIA, "audio", "audio contains non-finite samples (NaN or infinity)")
        chunk = np.clip(x.reshape(n, ch).T, -1.0, 1.0) if ch > 1 else np.clip(x, -1.0, 1.0)[None]
        self.audio.append(np.ascontiguousarray(chunk, dtype=np.float32))
        self.check_duration()

    def accept_frame_time(self, t: float) -> bool:
        """Whether a frame at ``t`` is kept (checked before decoding it): BAD_REQUEST for times going backwards."""
        if not math.isfinite(t) or t < 0:
            raise _bad("frame", f"frame time {t!r} must be a finite number of seconds >= 0")
        if t < self.last_kept_t - FRAME_TIME_EPS:
            raise _bad("frame", f"frame time {t:.3f} s is before the previous frame ({self.last_kept_t:.3f} s)")
        too_close = t - self.last_kept_t < 0.9 / self.limits.max_fps
        too_late = t < self.keep_from16() / C.SAMPLE_RATE - FRAME_TIME_EPS  # no window still to come can use it
        if too_close or too_late:
            self.frames_dropped += 1
            return False
        return True

    def add_frame(self, frame: StreamFrame) -> None:
        if frame.nbytes + self.frame_bytes > self.limits.max_frame_store_bytes:
            raise ServingError(
                ErrorKind.TOO_LARGE,
                "frame",
                f"frames held for this stream would exceed {self.limits.max_frame_store_bytes} bytes "
                "(send fewer, smaller or JPEG frames)",
            )
        self.frames.append(frame)
        self.frame_bytes += frame.nbytes
        self.last_kept_t = frame.t

    def check_duration(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        stream_s = self.audio.end / self.config.sample_rate
        if max(stream_s, now - self.started) > self.limits.max_duration_s:
            raise ServingError(
                ErrorKind.TOO_LARGE, "stream", f"stream reached the {self.limits.max_duration_s:g} s duration limit"
            )

    # ---- windows

    @property
    def received16(self) -> int:
        return native_total16(self.audio.end, self.config.sample_rate)

    def due(self) -> list[StreamWindow]:
        """Regular windows whose audio is complete, in order; each is handed out once."""
        out = []
        while True:
            window = regular_window(self.emitted + 1, self.config.windows)
            if needed_native(window.end16, self.config.sample_rate) > self.audio.end:
                break
            out.append(window)
            self.emitted += 1
        return out

    def last_window(self) -> StreamWindow | None:
        """At END: the partial window ending at the last sample received, unless a regular one ended there."""
        return closing_window(self.received16, self.emitted, self.config.windows)

    def row(self, window: StreamWindow) -> Row:
        rate = self.config.sample_rate
        first, last = resample_span(rate, window.start16, window.end16)
        # trim() keeps every sample from the first one a window still to come reaches
        assert first >= self.audio.start, (first, self.audio.start)
        native = self.audio.view(first, last)
        return window_row(window, native if self.audio.end else None, first, rate, self.frames)

    def keep_from16(self) -> int:
        """Earliest 16 kHz sample a window still to come can start at (the last, partial one included)."""
        return max(0, self.emitted * self.config.windows.hop16 - self.config.windows.window16)

    def trim(self) -> None:
        """Drop audio and frames no window still to come can use (bounded memory)."""
        keep16 = self.keep_from16()
        self.audio.drop_before(resample_span(self.config.sample_rate, keep16, keep16)[0])
        t0 = keep16 / C.SAMPLE_RATE - FRAME_TIME_EPS
        drop = 0
        while drop < len(self.frames) and self.frames[drop].t < t0:
            self.frame_bytes -= self.frames[drop].nbytes
            drop += 1
        if drop:
            del self.frames[:drop]

    @property
    def nbytes(self) -> int:
        return self.audio.nbytes + self.frame_bytes


# --------------------------------------------------------------------------- the offline reference


def reference_updates(
    native: np.ndarray | None,
    rate: int,
    frames: Iterable[StreamFrame],
    config: StreamConfig,
    *,
    encode_video: Encode,
    encode_audio: Encode,
    head: FusionHead,
) -> list[Update]:
    """Every update a stream of this whole recording yields, computed offline on the same windows.

    ``native`` is the whole recording, float32 [channels, n] at ``rate`` (its first sample at t = 0);
    ``frames`` are every frame sent, in time order. The windows are planned on the whole duration, the
    audio of each resampled from the whole track (no chunks, no buffers).
    """
    frames = list(frames)
    total16 = native_total16(native.shape[1], rate) if native is not None else 0
    windows = plan_stream_windows(total16, config.windows)
    rows = [window_row(w, native, 0, rate, frames) for w in windows]
    return score_updates(head, windows, rows, encode_video, encode_audio) if windows else []
