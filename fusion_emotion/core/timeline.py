"""Emotion timelines: overlapping windows over one media file, scored window by window.

Shared by the Triton ``fusion_emotion_timeline`` model and the in-process reference (:func:`timeline_local`),
so both compute the same numbers from the same code, with whichever video decoder the profile uses (PyAV,
DALI on the CPU, DALI with NVDEC: ``core.rows.video_backend``).

Decoding is one pass: every frame time any window (or the clip-level sample) needs is known up front and
asked of the decoder at once, and each window is handed out as soon as its 16 frames are in, so at most a
few windows of frames are alive at once, whatever the media's length. The encoders are injected as
callables taking a batch, so the Triton model calls them through BLS in chunks of ``chunk`` windows and the
reference calls its runtime directly.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.core.audio import decode_audio
from fusion_emotion.core.calls import CallOptions, run_per_speaker
from fusion_emotion.core.embed import Embeddings, embeddings, probabilities, score_embeddings
from fusion_emotion.core.fusion import FusionHead
from fusion_emotion.core.model_inputs import fit_window, frames_for_model, resample_range, resampled_length, to_mono
from fusion_emotion.core.probe import DEFAULT_LIMITS, Cancel, MediaError, MediaLimits
from fusion_emotion.core.result import timeline_result
from fusion_emotion.core.rows import PYAV, Row, VideoBackend, VideoSource, clip_row, require_media
from fusion_emotion.core.vad import speech_frames, window_speech
from fusion_emotion.core.video import QA_FRAME_SLOTS, ClipFrames
from fusion_emotion.core.windows import TIMELINE_DEFAULTS, WindowParams, plan_file_windows, window_frame_times
from fusion_emotion.core.windows import window_params as validate_window_params
from fusion_emotion.errors import ErrorKind
from fusion_emotion.handoff import put_until_stopped

log = logging.getLogger(__name__)

DEFAULT_MAX_DURATION_S = 600.0
"""Longest media a timeline is computed for (seconds); longer media is refused as too large."""
DEFAULT_CHUNK = 8
"""Windows per encoder call: the encoders' max batch."""
DEFAULT_MAX_WINDOWS = 150
"""Windows one request may ask for: 600 s at the default 4 s windows. Each is a full pass of both encoders."""

Encode = Callable[[np.ndarray], np.ndarray]
T = TypeVar("T")


def window_params(window_s: float | None = None, hop_s: float | None = None) -> WindowParams:
    """A timeline's window settings (defaults: the 4 s audio window, back to back)."""
    return validate_window_params(window_s, hop_s, TIMELINE_DEFAULTS)


def check_window_count(count: int, max_windows: int | None) -> None:
    """Every window is a full pass of both encoders: the count a caller may ask for is capped (413)."""
    if max_windows is not None and count > max_windows:
        raise MediaError(
            "request",
            f"{count} timeline windows requested, over the {max_windows}-window limit (use a longer hop_s)",
            kind=ErrorKind.TOO_LARGE,
        )


class WindowFrames:
    """Every window's 16 frames plus the clip-level sample, from one pass of a video source.

    Iterate :meth:`windows` to receive ``(index, uint8 [16, 128, 171, 3])`` in window order, each as soon as
    its frames are decoded; afterwards :meth:`clip` holds the clip-level sample (exactly what a file
    request decodes) and the source's ``audio`` / ``sample_rate`` its audio track.
    """

    def __init__(
        self, source: VideoSource, params: WindowParams, *, num_frames: int = C.NUM_FRAMES, max_windows: int | None
    ) -> None:
        self.source = source
        self.num_frames = num_frames
        self.duration_s = float(source.duration_s)
        self.windows_s = plan_file_windows(self.duration_s, params)
        check_window_count(len(self.windows_s), max_windows)
        self.clip_frames: np.ndarray | None = None
        self.qa_frames: np.ndarray | None = None

    def windows(self) -> Iterator[tuple[int, np.ndarray]]:
        """Decode once; yield each window's frames in window order."""
        n, num = len(self.windows_s), self.num_frames
        # Slots: window w owns [w*num, (w+1)*num); the clip-level sample owns the last num.
        times = np.concatenate(
            [window_frame_times(self.windows_s, self.source.start_s, num).reshape(-1), self.source.clip_times(num)]
        )
        clip_base = n * num
        qa_slots = [clip_base + s for s in QA_FRAME_SLOTS] if num == C.NUM_FRAMES else []
        slots: list[np.ndarray | None] = [None] * len(times)
        filled = np.zeros(n + 1, dtype=np.int64)
        qa: dict[int, np.ndarray] = {}
        next_window = 0
        for slot, rgb, qa_rgb in self.source.sample(times, qa_slots):
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

    def clip(self) -> ClipFrames:
        """The clip-level sample, once :meth:`windows` has run to the end."""
        assert self.clip_frames is not None
        return ClipFrames(self.clip_frames, self.qa_frames, frames_for_model(self.clip_frames), self.source.name)


def audio_windows(mono: np.ndarray, rate: int, windows: np.ndarray) -> Iterator[np.ndarray | None]:
    """Each window's span of the track at 16 kHz, brought to the encoder window; None where it has no audio.

    ``mono`` is at its native ``rate``: only each window's span is resampled (``resample_range``).
    """
    total = resampled_length(mono.shape[0], rate)
    for s, e in windows:
        a, b = int(round(s * C.SAMPLE_RATE)), int(round(e * C.SAMPLE_RATE))
        yield fit_window(resample_range(mono, rate, a, b)) if a < min(b, total) else None


_DONE = object()


def prefetch(items: Iterator[T], depth: int) -> Iterator[T]:
    """Iterate ``items`` in a worker thread, at most ``depth`` items ahead (bounded memory).

    Decoders work without the GIL, so a decode pass overlaps the encoder calls made by the consumer. The
    worker's exception is raised in the consumer; a consumer that stops early stops the worker.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if not put_until_stopped(q, item, stop):
                    break
            put_until_stopped(q, _DONE, stop)
        except BaseException as exc:  # handed to the consumer
            put_until_stopped(q, exc, stop)
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


def encode_chunked(encode: Encode, rows: Iterator[np.ndarray], chunk: int, cancel: Cancel | None = None) -> np.ndarray:
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
    return np.concatenate(out)


@dataclass
class Timeline:
    """Windows (seconds), per-window probabilities and the clip-level result."""

    windows: np.ndarray  # float64 [W, 2]
    probabilities: np.ndarray  # float32 [W, 6]
    clip_probabilities: np.ndarray  # float32 [6]
    clip_qa_flags: np.ndarray  # float32 [6]
    duration_s: float
    decoder: str = "none"  # which decoder served the video ("none": an audio-only timeline)
    fallback: str | None = None  # why a DALI decoder left it to PyAV
    speech: np.ndarray | None = None  # bool [W] with vad (silent windows: NaN probabilities), else None

    def segments(self) -> np.ndarray:
        """float32 [W, 8]: start, end, then the six probabilities (the Triton output)."""
        return np.concatenate([self.windows.astype(np.float32), self.probabilities.astype(np.float32)], axis=1)


@dataclass
class _Decoded:
    """One request after the decode pass: its windows, the video embeddings, the clip row."""

    windows: np.ndarray
    duration_s: float
    video_emb: np.ndarray | None  # [W, 512]: every window has video when the request has
    clip: Row
    native: np.ndarray | None  # the audio track at its own rate
    rate: int | None
    decoder: str = "none"
    fallback: str | None = None


def select_channel(native: np.ndarray | None, channel: int | None) -> np.ndarray | None:
    """The track as ``[1, n]`` holding only ``channel`` (None: all channels, averaged later as before)."""
    if channel is None or native is None:
        return native
    count = native.shape[0]
    if not 0 <= channel < count:
        raise MediaError(
            "channel", f"channel {channel} asked of a {count}-channel audio track", kind=ErrorKind.BAD_REQUEST
        )
    return native[channel : channel + 1]


def _decode(
    video: bytes | None,
    audio: bytes | None,
    params: WindowParams,
    encode_video: Encode,
    backend: VideoBackend,
    limits: MediaLimits,
    chunk: int,
    max_windows: int | None,
    cancel: Cancel | None,
    channel: int | None = None,
) -> _Decoded:
    """Decode once (the windows' video embedded during the pass); which audio counts is :mod:`core.rows`'."""
    native = rate = None
    if audio is not None:
        dec = decode_audio(audio, limits=limits, cancel=cancel)
        native, rate = select_channel(dec.samples, channel), dec.sample_rate
    if video is None:
        assert native is not None and rate
        duration = native.shape[1] / rate
        windows = plan_file_windows(duration, params)
        check_window_count(len(windows), max_windows)
        return _Decoded(windows, duration, None, clip_row(None, native, rate), native, rate)
    source = backend.open(video, want_audio=audio is None, limits=limits, cancel=cancel)
    frames = WindowFrames(source, params, max_windows=max_windows)
    # Decoding runs ahead in a thread while the encoders work on the previous chunk.
    rows = (frames_for_model(f) for _, f in prefetch(frames.windows(), depth=chunk))
    video_emb = encode_chunked(encode_video, rows, chunk, cancel)
    if audio is None:
        native, rate = select_channel(source.audio, channel), source.sample_rate
    elif channel is not None and native is None:
        raise MediaError("channel", "a channel was asked of media without an audio track", kind=ErrorKind.BAD_REQUEST)
    clip = clip_row(frames.clip(), native, rate)
    fallback = getattr(source, "fallback", None)
    return _Decoded(frames.windows_s, frames.duration_s, video_emb, clip, native, rate, source.name, fallback)


def _window_audio(
    d: _Decoded, whole: bool, encode_audio: Encode, chunk: int, cancel: Cancel | None, speech: np.ndarray | None
) -> tuple[list[int], np.ndarray] | None:
    """(windows with audio, their audio embeddings); a single window spanning the media is the clip's input.

    With ``speech`` (vad), windows without speech are left out: no encoder call is made for them.
    """
    if d.clip.waveform is None or d.native is None or not d.rate:
        return None
    if whole:
        return None if speech is not None and not speech[0] else ([0], encode_audio(d.clip.waveform[None]))
    mono = to_mono(d.native)
    keep = np.ones(len(d.windows), dtype=bool) if speech is None else speech
    has = [i for i, w in enumerate(audio_windows(mono, d.rate, d.windows)) if w is not None and keep[i]]
    if not has:
        return None
    rows = (w for i, w in enumerate(audio_windows(mono, d.rate, d.windows)) if w is not None and keep[i])
    return has, encode_chunked(encode_audio, rows, chunk, cancel)


def _speech(d: _Decoded) -> np.ndarray:
    """bool [W]: which windows hold speech (the track at 16 kHz through the VAD, :mod:`core.vad`)."""
    if d.native is None or not d.rate:
        raise MediaError("vad", "vad needs an audio track", kind=ErrorKind.BAD_REQUEST)
    mono = to_mono(d.native)
    track = resample_range(mono, d.rate, 0, resampled_length(mono.shape[0], d.rate))
    return window_speech(speech_frames(track), d.windows)


def compute_timeline(
    video: bytes | None,
    audio: bytes | None,
    params: WindowParams,
    *,
    encode_video: Encode,
    encode_audio: Encode,
    head: FusionHead,
    backend: VideoBackend = PYAV,
    limits: MediaLimits = DEFAULT_LIMITS,
    chunk: int = DEFAULT_CHUNK,
    max_windows: int | None = DEFAULT_MAX_WINDOWS,
    cancel: Cancel | None = None,
    channel: int | None = None,
    vad: bool = False,
) -> Timeline:
    """Decode once, encode the windows (and the clip) in chunks, score with the fusion head.

    The clip-level result is what the ``fusion_emotion`` model computes for the same request; when a
    single window spans the whole media, it is the clip. ``cancel`` is polled while decoding and between
    encoder calls; more than ``max_windows`` windows are refused before any work. ``channel`` analyses one
    channel of the audio track as mono; ``vad`` leaves windows without speech unscored (NaN probabilities,
    no audio encoder call; the video encoder still sees every window of a video).
    """
    require_media(video, audio)
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    d = _decode(video, audio, params, encode_video, backend, limits, chunk, max_windows, cancel, channel)
    n = len(d.windows)
    whole = n == 1 and d.windows[0, 0] == 0.0 and abs(d.windows[0, 1] - d.duration_s) < 1e-9
    every = list(range(n))
    speech = _speech(d) if vad else None
    audio_emb = _window_audio(d, whole, encode_audio, chunk, cancel, speech)
    emb = embeddings(n, (every, d.video_emb) if d.video_emb is not None else None, audio_emb)
    whole_emb = emb if whole and (speech is None or speech[0]) else None  # a silent window has no audio row
    clip = _clip_embeddings(d, whole_emb, encode_video, encode_audio)
    clip_probs, clip_flags = score_embeddings(head, clip)
    probs = clip_probs.copy() if whole else probabilities(head, emb)
    if speech is not None:
        probs = np.where(speech[:, None], probs, np.float32(np.nan)).astype(np.float32)
    log.debug("timeline: %d windows over %.2f s", n, d.duration_s)
    return Timeline(d.windows, probs, clip_probs[0], clip_flags[0], float(d.duration_s), d.decoder, d.fallback, speech)


def _clip_embeddings(d: _Decoded, whole: Embeddings | None, encode_video: Encode, encode_audio: Encode) -> Embeddings:
    """The clip row's embeddings (the window's own when one window is the whole clip)."""
    if whole is not None:
        return Embeddings(whole.video, whole.audio, whole.mask, d.clip.media_qa[None])
    video = ([0], encode_video(d.clip.frames[None])) if d.clip.frames is not None else None
    audio = ([0], encode_audio(d.clip.waveform[None])) if d.clip.waveform is not None else None
    return embeddings(1, video, audio, d.clip.media_qa[None])


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
    call: CallOptions | None = None,
) -> dict[str, Any]:
    """In-process reference (a ``pipeline.ReferencePipeline``): the same JSON the front end returns."""
    options = call or CallOptions()
    params = window_params(window_s, hop_s)

    def one(channel: int | None) -> dict[str, Any]:
        timeline = compute_timeline(
            video,
            audio,
            params,
            encode_video=pipeline.video_encoder,
            encode_audio=pipeline.audio_encoder,
            head=pipeline.head,
            backend=pipeline.backend,
            limits=timeline_limits(max_duration_s, pipeline.limits),
            chunk=chunk,
            channel=channel,
            vad=options.vad,
        )
        segments, probs, qa = timeline.segments(), timeline.clip_probabilities, timeline.clip_qa_flags
        return timeline_result(segments, probs, qa, vad=options.vad)

    return run_per_speaker(options, one)
