"""Real-time streams: rolling audio and frame buffers, hop scheduling and per-stream limits, in pure numpy.

A stream is a sequence of chunks (audio samples at the caller's rate, and optionally video frames with
their stream times). Every ``hop_s`` of audio it yields one *window* ``[t_end - window_s, t_end]`` (the
first windows start at 0 and hold what has arrived so far); at the end, one last window for the partial
hop. Each window is turned into the encoders' inputs and media QA by :func:`window_features`, exactly as a
file request of that span would be (the 16 frames sampled over the window by the file rule, the audio
resampled with the file path's resampler, the face detector's larger copies of 4 of the 16 frames).

Two users share every function here, so their numbers agree by construction:

* :class:`StreamState`, the rolling per-stream state kept by the Triton model ``fusion_emotion_stream``
  (a thin adapter): bounded memory (history is dropped once no future window can need it), limits checked
  before any heavy work;
* :func:`reference_updates`, the offline reference: the whole recording at once, cut into the same
  windows, with injected encoders (onnxruntime in-process, or anything else).

Exactness at other rates than 16 kHz: a window's resampled audio must not depend on where the chunks
were cut, so a window is due only once every input sample the resampler's filter reaches has arrived
(``media.resample_span``: 1-2 ms of audio past the hop); the buffer keeps the filter's reach of history.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields

import av
import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.core import qa
from fusion_emotion.core.features import RequestFeatures, score_features
from fusion_emotion.core.fusion import FusionHead
from fusion_emotion.core.media import (
    QA_FRAME_SLOTS,
    _qa_copy,
    _resize,
    fit_window,
    frames_for_model,
    resample_range,
    resample_span,
    sample_times,
    to_mono,
)
from fusion_emotion.errors import ErrorKind, ServingError

log = logging.getLogger(__name__)

# --- stream settings (per stream, chosen by the caller at START) -------------------------------------
DEFAULT_HOP_S = 1.0
DEFAULT_WINDOW_S = C.AUDIO_WINDOW_SECONDS  # the audio encoder's own window: no padding, no cropping
MIN_HOP_S = 0.5
MIN_WINDOW_S = 1.0
MAX_WINDOW_S = 10.0
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 48_000
MAX_CHANNELS = 2
# Frame times within this of a window edge or a sampling target count as on it (as in media.VideoDecoder).
_EPS = 1e-6

Encode = Callable[[np.ndarray], np.ndarray]


def _bad(subject: str, reason: str) -> ServingError:
    return ServingError(ErrorKind.BAD_REQUEST, subject, reason)


@dataclass(frozen=True)
class StreamConfig:
    """One stream's settings, validated (:func:`stream_config`)."""

    sample_rate: int = C.SAMPLE_RATE
    channels: int = 1
    hop_s: float = DEFAULT_HOP_S
    window_s: float = DEFAULT_WINDOW_S

    @property
    def hop16(self) -> int:
        """The hop in 16 kHz samples (window ends sit on multiples of it)."""
        return int(round(self.hop_s * C.SAMPLE_RATE))

    @property
    def window16(self) -> int:
        return int(round(self.window_s * C.SAMPLE_RATE))


def _number(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
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
    window = _number("window_s", window_s)
    window = DEFAULT_WINDOW_S if window is None else window
    if not MIN_WINDOW_S <= window <= MAX_WINDOW_S:
        raise _bad("window_s", f"{window:g} s is outside [{MIN_WINDOW_S:g}, {MAX_WINDOW_S:g}] s")
    hop = _number("hop_s", hop_s)
    hop = min(DEFAULT_HOP_S, window) if hop is None else hop
    if not MIN_HOP_S <= hop <= window:
        raise _bad("hop_s", f"{hop:g} s is outside [{MIN_HOP_S:g} s, window_s = {window:g} s]")
    return StreamConfig(rate_i, ch_i, hop, window)


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


@dataclass(frozen=True)
class Window:
    """One update's span, in 16 kHz samples of stream time."""

    index: int  # 1, 2, ... for regular windows (end = index * hop); 0 for the last, partial one
    start16: int
    end16: int

    @property
    def t_start(self) -> float:
        return self.start16 / C.SAMPLE_RATE

    @property
    def t_end(self) -> float:
        return self.end16 / C.SAMPLE_RATE


def regular_window(index: int, config: StreamConfig) -> Window:
    end = index * config.hop16
    return Window(index, max(0, end - config.window16), end)


def plan_windows(total16: int, config: StreamConfig) -> list[Window]:
    """Every window of a stream of ``total16`` samples (16 kHz): one per hop, then the partial last one."""
    out = [regular_window(k, config) for k in range(1, total16 // config.hop16 + 1)]
    last_end = out[-1].end16 if out else 0
    if total16 > last_end:
        out.append(Window(0, max(0, total16 - config.window16), total16))
    return out


def needed_native(end16: int, rate: int) -> int:
    """Input samples (at ``rate``) that must have arrived before audio up to ``end16`` is final."""
    return resample_span(rate, end16, end16)[1] if rate != C.SAMPLE_RATE else end16


def native_total16(n_native: int, rate: int) -> int:
    """16 kHz samples covered by ``n_native`` input samples (rounded down: only whole output samples)."""
    return n_native * C.SAMPLE_RATE // rate


# --------------------------------------------------------------------------- frames


@dataclass
class StreamFrame:
    """One received frame: its stream time, the model's 128x171 copy, and how to get the QA copy."""

    t: float
    rgb: np.ndarray  # uint8 [128, 171, 3], media._resize: the file path's resize
    jpeg: bytes | None = None  # kept to re-decode the face detector's copy only if the frame is picked
    qa_rgb: np.ndarray | None = None  # raw RGB frames: the face detector's copy, made on arrival

    @property
    def nbytes(self) -> int:
        extra = len(self.jpeg) if self.jpeg is not None else 0
        return self.rgb.nbytes + extra + (self.qa_rgb.nbytes if self.qa_rgb is not None else 0)

    def qa_copy(self) -> np.ndarray:
        if self.qa_rgb is not None:
            return self.qa_rgb
        assert self.jpeg is not None
        return _qa_copy(_decode_jpeg_frame(self.jpeg, None))


def _check_size(width: int, height: int, limits: StreamLimits | None) -> None:
    if limits is not None and (width > limits.max_frame_width or height > limits.max_frame_height):
        raise ServingError(
            ErrorKind.TOO_LARGE,
            "frame",
            f"frame size {width}x{height} is over the {limits.max_frame_width}x{limits.max_frame_height} limit",
        )


def _decode_jpeg_frame(data: bytes, limits: StreamLimits | None) -> av.VideoFrame:
    """One JPEG through FFmpeg's mjpeg decoder (pixel budget enforced inside the decoder)."""
    if not data:
        raise ServingError(ErrorKind.INVALID_MEDIA, "frame", "empty JPEG frame (0 bytes)")
    if limits is not None and len(data) > limits.max_frame_bytes:
        raise ServingError(
            ErrorKind.TOO_LARGE,
            "frame",
            f"JPEG frame is {len(data)} bytes, over the {limits.max_frame_bytes}-byte limit",
        )
    codec = av.CodecContext.create("mjpeg", "r")
    if limits is not None:
        codec.options = {"max_pixels": str(limits.max_frame_width * limits.max_frame_height)}
    try:
        frames = codec.decode(av.Packet(data)) + codec.decode(None)
    except av.error.ArgumentError:
        raise ServingError(ErrorKind.TOO_LARGE, "frame", "JPEG frame is over the frame-size limit") from None
    except (av.error.FFmpegError, ValueError, MemoryError, EOFError) as exc:
        raise ServingError(ErrorKind.INVALID_MEDIA, "frame", f"not a decodable JPEG ({type(exc).__name__})") from None
    if not frames:
        raise ServingError(ErrorKind.INVALID_MEDIA, "frame", "not a decodable JPEG (no picture)")
    frame = frames[0]
    _check_size(frame.width, frame.height, limits)
    return frame


def jpeg_frame(t: float, data: bytes, limits: StreamLimits | None = None) -> StreamFrame:
    """A JPEG frame decoded once on arrival to the model's size; its bytes are kept for the QA copy."""
    return StreamFrame(float(t), _resize(_decode_jpeg_frame(data, limits)), jpeg=bytes(data))


def rgb_frame(t: float, rgb: np.ndarray, limits: StreamLimits | None = None) -> StreamFrame:
    """A raw RGB frame (uint8 [H, W, 3]) resized like a decoded video frame (swscale AREA, media._resize)."""
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ServingError(
            ErrorKind.INVALID_MEDIA, "frame", f"raw frame must be uint8 [H, W, 3], got {arr.dtype} {arr.shape}"
        )
    _check_size(arr.shape[1], arr.shape[0], limits)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
    return StreamFrame(float(t), _resize(frame), qa_rgb=_qa_copy(frame))


def pick_frames(times: np.ndarray, t_start: float, t_end: float, num: int = C.NUM_FRAMES) -> np.ndarray | None:
    """Indices into ``times`` (ascending) of the ``num`` frames of window ``[t_start, t_end]``, or None.

    The file rule (``media.VideoDecoder.sample``): ``num`` targets at the centres of equal slices of the
    window, each served by the first frame at or after it, targets past the window's last frame by that
    frame. Only frames inside the window count; a window without frames has no video.
    """
    times = np.asarray(times, dtype=np.float64)
    inside = np.flatnonzero((times >= t_start - _EPS) & (times <= t_end + _EPS))
    if inside.size == 0:
        return None
    targets = sample_times(t_end - t_start, num, t_start)
    pos = np.searchsorted(times[inside] + _EPS, targets, side="left")
    return inside[np.minimum(pos, inside.size - 1)]


# --------------------------------------------------------------------------- features of one window


def window_features(
    window: Window,
    native: np.ndarray | None,
    native_base: int,
    rate: int,
    frames: Sequence[StreamFrame],
) -> RequestFeatures:
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
    raw = qa_frames = None
    picks = pick_frames(np.array([f.t for f in frames]), window.t_start, window.t_end) if frames else None
    if picks is not None:
        raw = np.stack([frames[i].rgb for i in picks])
        qa_frames = np.stack([frames[picks[s]].qa_copy() for s in QA_FRAME_SLOTS])
    model_frames = frames_for_model(raw) if raw is not None else None
    if model_frames is not None and not np.isfinite(model_frames).all():
        raise ServingError(ErrorKind.INVALID_MEDIA, "frame", "decoded frames are not finite")
    media_qa = qa.media_qa(raw, audio_qa if audio_qa is not None and audio_qa.size else None, rate, qa_frames=qa_frames)
    return RequestFeatures(model_frames, waveform, media_qa)


@dataclass
class Update:
    """One emitted update: its window and what the fusion head said."""

    t_start: float
    t_end: float
    probabilities: np.ndarray  # float32 [6]
    qa_flags: np.ndarray  # float32 [6]


def score_windows(
    head: FusionHead,
    windows: Sequence[Window],
    feats: Sequence[RequestFeatures],
    encode_video: Encode,
    encode_audio: Encode,
) -> list[Update]:
    """Encode the windows of many streams together (one batch per modality), then score each."""
    v_rows = [f.frames for f in feats if f.frames is not None]
    a_rows = [f.waveform for f in feats if f.waveform is not None]
    v_emb = encode_video(np.stack(v_rows)) if v_rows else None
    a_emb = encode_audio(np.stack(a_rows)) if a_rows else None
    out: list[Update] = []
    vi = ai = 0
    for window, f in zip(windows, feats, strict=True):
        v = a = None
        if f.frames is not None:
            v, vi = v_emb[vi], vi + 1
        if f.waveform is not None:
            a, ai = a_emb[ai], ai + 1
        probs, flags = score_features(head, f, v, a)
        out.append(Update(window.t_start, window.t_end, probs, flags))
    return out


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
        if t < self.last_kept_t - _EPS:
            raise _bad("frame", f"frame time {t:.3f} s is before the previous frame ({self.last_kept_t:.3f} s)")
        too_close = t - self.last_kept_t < 0.9 / self.limits.max_fps
        too_late = t < self.keep_from16() / C.SAMPLE_RATE - _EPS  # no window still to come can use it
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

    def due(self) -> list[Window]:
        """Regular windows whose audio is complete, in order; each is handed out once."""
        out = []
        while True:
            window = regular_window(self.emitted + 1, self.config)
            if needed_native(window.end16, self.config.sample_rate) > self.audio.end:
                break
            out.append(window)
            self.emitted += 1
        return out

    def last_window(self) -> Window | None:
        """At END: the partial window ending at the last sample received, unless a regular one ended there."""
        total = self.received16
        last_end = self.emitted * self.config.hop16
        if total <= last_end:
            return None
        return Window(0, max(0, total - self.config.window16), total)

    def features(self, window: Window) -> RequestFeatures:
        rate = self.config.sample_rate
        first, last = resample_span(rate, window.start16, window.end16)
        # trim() keeps every sample from the first one a window still to come reaches
        assert first >= self.audio.start, (first, self.audio.start)
        native = self.audio.view(first, last)
        return window_features(window, native if self.audio.end else None, first, rate, self.frames)

    def keep_from16(self) -> int:
        """Earliest 16 kHz sample a window still to come can start at (the last, partial one included)."""
        return max(0, self.emitted * self.config.hop16 - self.config.window16)

    def trim(self) -> None:
        """Drop audio and frames no window still to come can use (bounded memory)."""
        keep16 = self.keep_from16()
        self.audio.drop_before(resample_span(self.config.sample_rate, keep16, keep16)[0])
        t0 = keep16 / C.SAMPLE_RATE - _EPS
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
    windows = plan_windows(total16, config)
    feats = [window_features(w, native, 0, rate, frames) for w in windows]
    return score_windows(head, windows, feats, encode_video, encode_audio) if windows else []
