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

import av
import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.core import qa
from fusion_emotion.core.fusion import FusionHead, score
from fusion_emotion.core.media import (
    DEFAULT_LIMITS,
    VIDEO_FORMATS,
    MediaError,
    MediaLimits,
    _check_audio_stream,
    _check_stream_duration,
    _duration_s,
    _float_audio,
    _frame_time,
    _open,
    _resize,
    decode_audio,
    fit_window,
    frames_for_model,
    resample,
    sample_times,
    to_mono,
    waveform_for_model,
)

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
        raise MediaError("window_s", f"{window:g} s is outside [{MIN_WINDOW_S:g}, {MAX_WINDOW_S:g}] s")
    if hop_s is None or math.isnan(hop_s):
        hop = min(DEFAULT_HOP_S, window)
    else:
        hop = float(hop_s)
    if not MIN_HOP_S <= hop <= window:
        raise MediaError("hop_s", f"{hop:g} s is outside [{MIN_HOP_S:g} s, window_s = {window:g} s]")
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


class VideoTimelineDecoder:
    """One sequential decode pass serving every window plus the clip-level sample.

    Iterate :meth:`windows` to receive ``(index, uint8 [16, 128, 171, 3])`` in
    window order, each as soon as its frames are decoded; afterwards
    ``clip_frames``, ``audio`` and ``sample_rate`` hold the clip-level frames
    (exactly what ``media.decode_video`` samples) and the audio track.
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
    ) -> None:
        self.input_name = input_name
        self.limits = limits
        self.num_frames = num_frames
        self.container = _open(data, input_name, VIDEO_FORMATS, limits)
        try:
            self._probe(want_audio)
        except BaseException:
            self.container.close()
            raise
        self.windows_s = plan_windows(self.duration_s, params)
        self.clip_frames: np.ndarray | None = None
        self.audio: np.ndarray | None = None
        self.sample_rate: int | None = None

    def _probe(self, want_audio: bool) -> None:
        container, limits, name = self.container, self.limits, self.input_name
        if not container.streams.video:
            raise MediaError(name, "container has no video stream")
        self.vstream = container.streams.video[0]
        cc = self.vstream.codec_context
        if cc is None:
            raise MediaError(name, "video stream has an unknown codec")
        if (cc.width or 0) > limits.max_width or (cc.height or 0) > limits.max_height:
            raise MediaError(
                name,
                f"frame size {cc.width}x{cc.height} is over the {limits.max_width}x{limits.max_height} limit",
                too_large=True,
            )
        _check_stream_duration(self.vstream, name, limits)
        cc.skip_frame = "NONREF"  # as media.decode_video: the same frames are seen
        self.astream = container.streams.audio[0] if (want_audio and container.streams.audio) else None
        if self.astream is not None:
            _check_audio_stream(self.astream, name, limits)
            _check_stream_duration(self.astream, name, limits)
        duration = _duration_s(container, self.vstream)
        if not duration or duration <= 0:
            raise MediaError(name, "the container declares no duration; timelines need one")
        if duration > limits.max_duration_s:
            raise MediaError(
                name,
                f"duration {duration:.1f} s is over the {limits.max_duration_s:.0f} s timeline limit",
                too_large=True,
            )
        self.duration_s = float(duration)
        self.fps = float(self.vstream.average_rate) if self.vstream.average_rate else 0.0
        vs = self.vstream
        self.start_s = float(vs.start_time * vs.time_base) if vs.start_time is not None else 0.0

    def windows(self) -> Iterator[tuple[int, np.ndarray]]:
        """Decode once; yield each window's frames in window order."""
        n, num = len(self.windows_s), self.num_frames
        # Slot owners: 0..n-1 are the windows, n is the clip-level sample.
        times = np.concatenate(
            [
                window_frame_times(self.windows_s, self.start_s, num).reshape(-1),
                sample_times(self.duration_s, num, self.start_s),
            ]
        )
        owners = np.concatenate([np.repeat(np.arange(n), num), np.full(num, n)])
        order = np.argsort(times, kind="stable")
        slots: list[list[np.ndarray]] = [[] for _ in range(n + 1)]
        next_target = 0
        next_window = 0
        index = 0
        last_frame: av.VideoFrame | None = None
        max_frames = self.limits.max_frames  # bounds decode time whatever the timestamps say
        audio_samples = audio_values = 0
        audio_chunks: list[np.ndarray] = []
        streams = [self.vstream] + ([self.astream] if self.astream is not None else [])
        try:
            for packet in self.container.demux(*streams):
                if packet.stream is self.vstream:
                    if next_target == len(order):
                        if self.astream is None:
                            break
                        continue
                    for frame in packet.decode():
                        t = _frame_time(frame, index, self.fps)
                        index += 1
                        if index > max_frames:
                            raise MediaError(
                                self.input_name,
                                f"video has more than {max_frames} frames, over the decoded-frame limit",
                                too_large=True,
                            )
                        last_frame = frame
                        rgb = None
                        while next_target < len(order) and t + 1e-6 >= times[order[next_target]]:
                            rgb = _resize(frame) if rgb is None else rgb
                            slots[owners[order[next_target]]].append(rgb)
                            next_target += 1
                        while next_window < n and len(slots[next_window]) == num:
                            yield next_window, np.stack(slots[next_window])
                            slots[next_window] = []
                            next_window += 1
                else:
                    for frame in packet.decode():
                        audio_chunk = _float_audio(frame, self.input_name)  # refuses NaN / infinity
                        audio_chunks.append(audio_chunk)
                        audio_samples += audio_chunk.shape[1]
                        audio_values += audio_chunk.size
                        self.sample_rate = frame.sample_rate
                        if audio_samples > self.limits.max_duration_s * (self.sample_rate or 1):
                            raise MediaError(
                                self.input_name,
                                f"audio track is over the {self.limits.max_duration_s:.0f} s limit",
                                too_large=True,
                            )
                        if audio_values > self.limits.max_audio_values:
                            raise MediaError(
                                self.input_name,
                                f"decoded audio is over the {self.limits.max_audio_values}-value limit",
                                too_large=True,
                            )
            if index == 0 or last_frame is None:
                raise MediaError(self.input_name, "no decodable video frames")
            if not slots[n]:
                raise MediaError(self.input_name, "no video frames inside the declared duration")
            tail = _resize(last_frame)
            # Stream ended early: hold each sample's last frame (as media.decode_video does).
            for owner in range(n + 1):
                if len(slots[owner]) < num:
                    hold = slots[owner][-1] if slots[owner] else tail
                    slots[owner].extend([hold] * (num - len(slots[owner])))
            while next_window < n:
                yield next_window, np.stack(slots[next_window])
                slots[next_window] = []
                next_window += 1
        except MediaError:
            raise
        except (av.error.FFmpegError, ValueError, OSError, MemoryError) as exc:
            raise MediaError(self.input_name, f"decoding failed ({type(exc).__name__})") from None
        finally:
            self.container.close()
        self.clip_frames = np.stack(slots[n])
        audio = np.concatenate(audio_chunks, axis=1) if audio_chunks else None
        if audio is None or audio.shape[1] == 0:
            self.audio, self.sample_rate = None, None
        else:
            self.audio = audio


def audio_windows(mono16k: np.ndarray, windows: np.ndarray, rate: int = C.SAMPLE_RATE) -> Iterator[np.ndarray | None]:
    """Each window's slice of the 16 kHz track brought to the encoder window; None where it has no audio."""
    for s, e in windows:
        a, b = int(round(s * rate)), int(round(e * rate))
        piece = mono16k[a:b]
        yield fit_window(piece) if piece.size else None


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
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

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


def _encode_chunked(encode: Encode, rows: Iterator[np.ndarray], chunk: int, dim: int) -> np.ndarray:
    """Run ``encode`` over an iterator of rows in batches of at most ``chunk`` rows."""
    out: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    for row in rows:
        batch.append(row)
        if len(batch) == chunk:
            out.append(np.asarray(encode(np.stack(batch)), dtype=np.float32))
            batch = []
    if batch:
        out.append(np.asarray(encode(np.stack(batch)), dtype=np.float32))
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
) -> Timeline:
    """Decode once, encode the windows (and the clip) in chunks, score with the fusion head.

    A WAV, when sent, is the audio; otherwise the video's own track is used.
    The clip-level result is computed exactly as the ``fusion_emotion`` model
    does. When a single window spans the whole media, it is the clip.
    """
    if video is None and audio is None:
        raise MediaError("request", "neither 'video' nor 'audio' was sent; at least one is required")
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    native: np.ndarray | None = None
    rate: int | None = None
    if audio is not None:
        dec = decode_audio(audio, limits=limits)
        native, rate = dec.samples, dec.sample_rate
    clip_frames: np.ndarray | None = None
    video_emb: np.ndarray | None = None
    if video is not None:
        decoder = VideoTimelineDecoder(video, params, want_audio=audio is None, limits=limits)
        windows = decoder.windows_s
        duration = decoder.duration_s
        # Decoding runs ahead in a thread while the encoders work on the previous chunk.
        rows = (frames_for_model(f) for _, f in prefetch(decoder.windows(), depth=chunk))
        video_emb = _encode_chunked(encode_video, rows, chunk, C.VIDEO_EMBED_DIM)
        clip_frames = decoder.clip_frames
        if audio is None and decoder.audio is not None:
            native, rate = decoder.audio, decoder.sample_rate
    else:
        assert native is not None and rate
        duration = native.shape[1] / rate
        if duration > limits.max_duration_s:
            raise MediaError("audio", f"audio is over the {limits.max_duration_s:.0f} s limit", too_large=True)
        windows = plan_windows(duration, params)
    n = len(windows)
    whole = n == 1 and windows[0, 0] == 0.0 and abs(windows[0, 1] - duration) < 1e-9
    has_audio = np.zeros(n, dtype=bool)
    audio_emb = np.zeros((n, C.AUDIO_EMBED_DIM), np.float32)
    clip_wave = None
    if native is not None and rate:
        clip_wave = waveform_for_model(native, rate)
        if whole:  # the one window is the clip: the same input as the fusion_emotion model
            has_audio[0] = True
            audio_emb[:1] = encode_audio(clip_wave[None])
        else:
            mono16k = resample(to_mono(native), rate)
            has_audio = np.array([w is not None for w in audio_windows(mono16k, windows)])
            if has_audio.any():
                rows = (w for w in audio_windows(mono16k, windows) if w is not None)
                audio_emb[has_audio] = _encode_chunked(encode_audio, rows, chunk, C.AUDIO_EMBED_DIM)

    # Clip level: the same features as features.prepare_request.
    media_qa = qa.media_qa(clip_frames, native, rate)
    clip_v = np.zeros((1, C.VIDEO_EMBED_DIM), np.float32)
    clip_a = np.zeros((1, C.AUDIO_EMBED_DIM), np.float32)
    clip_mask = np.zeros((1, 2), np.float32)
    if clip_frames is not None:
        clip_mask[0, 0] = 1.0
        clip_v = video_emb[:1] if whole and video_emb is not None else encode_video(frames_for_model(clip_frames)[None])
    if clip_wave is not None:
        clip_mask[0, 1] = 1.0
        clip_a = audio_emb[:1] if whole else encode_audio(clip_wave[None])
    clip_probs, clip_flags = score(
        head, np.asarray(clip_v, np.float32), np.asarray(clip_a, np.float32), clip_mask, media_qa[None]
    )

    mask = np.stack([np.full(n, video_emb is not None, np.float32), has_audio.astype(np.float32)], axis=1)
    v = video_emb if video_emb is not None else np.zeros((n, C.VIDEO_EMBED_DIM), np.float32)
    probs = head.probabilities(v, audio_emb, mask) if n else np.zeros((0, C.NUM_CLASSES), np.float32)
    if whole:
        probs = clip_probs.copy()
    log.debug("timeline: %d windows over %.2f s", n, duration)
    return Timeline(windows, probs, clip_probs[0], clip_flags[0], float(duration))


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
