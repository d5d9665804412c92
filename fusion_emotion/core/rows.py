"""A request's media -> rows: the encoders' inputs and media QA of one scored unit.

A *row* is what the encoders and the fusion head see once: a file request (its clip), one window of a
timeline, or one update of a live stream. Every route builds its rows here or from :func:`media_row`, so
the rule of which audio counts, the finite checks and the QA flags are written once.

**Which audio counts**: a WAV, when sent, is the audio; otherwise the video's own track is used. A request
with neither a video nor an audio is refused before any work (:func:`require_media`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.core import qa
from fusion_emotion.core.audio import decode_audio
from fusion_emotion.core.model_inputs import waveform_for_model
from fusion_emotion.core.probe import DEFAULT_LIMITS, Cancel, MediaError, MediaLimits
from fusion_emotion.core.video import ClipFrames, VideoDecoder
from fusion_emotion.errors import ErrorKind


class VideoSource(Protocol):
    """One opened video, from whichever decoder: its time span, frames at target times, and its audio track."""

    name: str
    duration_s: float
    start_s: float
    audio: np.ndarray | None  # complete once sample() or clip() has run
    sample_rate: int | None

    def clip_times(self, num: int = C.NUM_FRAMES) -> np.ndarray: ...

    def sample(self, times: np.ndarray, qa_slots: Sequence[int] = ()) -> Any:
        """Iterator of ``(slot, rgb uint8 [128, 171, 3], qa_rgb or None)`` for every target time."""

    def clip(self) -> ClipFrames: ...


class VideoBackend(Protocol):
    """A video decoder: PyAV (:class:`PyAvBackend`), or DALI on the CPU or NVDEC (``core.dali_video``)."""

    name: str

    def open(
        self, data: bytes, *, want_audio: bool, limits: MediaLimits, cancel: Cancel | None, input_name: str = "video"
    ) -> VideoSource: ...


class PyAvBackend:
    """PyAV for every video (the default, and what the DALI backend falls back to)."""

    name = "pyav"

    def open(
        self, data: bytes, *, want_audio: bool, limits: MediaLimits, cancel: Cancel | None, input_name: str = "video"
    ) -> VideoDecoder:
        return VideoDecoder(data, want_audio=want_audio, limits=limits, input_name=input_name, cancel=cancel)


PYAV = PyAvBackend()
VIDEO_DECODERS = ("pyav", "dali_cpu", "dali_gpu")
"""Values of the Triton models' ``video_decoder`` parameter (and the reference pipeline's)."""


def video_backend(name: str = "pyav", *, device_id: int = 0, pipelines: int = 2) -> VideoBackend:
    """The one place a decoder is chosen: ``pyav``, ``dali_cpu`` (profile cpu_dali) or ``dali_gpu`` (NVDEC)."""
    if name == "pyav":
        return PYAV
    if name not in VIDEO_DECODERS:
        raise ValueError(f"video_decoder must be one of {', '.join(VIDEO_DECODERS)}, not {name!r}")
    from fusion_emotion.core.dali_video import DaliBackend  # optional: [dali]

    return DaliBackend("gpu" if name == "dali_gpu" else "cpu", pipelines, device_id=device_id)


@dataclass
class Row:
    """One scored unit's encoder inputs and media QA (a missing modality is None)."""

    frames: Any | None  # float32 [3, 16, 112, 112] numpy, or a DLPack device tensor [1, 3, 16, 112, 112]
    waveform: np.ndarray | None  # float32 [AUDIO_SAMPLES]
    media_qa: np.ndarray  # float32 [4] in contract.MEDIA_QA_NAMES order, NaN = absent
    decoder: str = "none"  # which decoder served the video: "pyav", "dali_cpu", "dali_gpu", "stream", "none"
    fallback: str | None = None  # why a DALI decoder left the video to PyAV
    decode_s: float = 0.0  # wall seconds spent decoding this row's media (its request's, for a file)
    qa_s: float = 0.0  # wall seconds spent on its media QA flags
    _release: Callable[[], None] | None = None

    @property
    def frames_on_host(self) -> bool:
        return isinstance(self.frames, np.ndarray)

    def host_frames(self) -> np.ndarray | None:
        """The video encoder's input as a host array [3, 16, 112, 112] (a copy of a device clip)."""
        if self.frames is None or self.frames_on_host:
            return self.frames
        tensor = self.frames.as_cpu() if hasattr(self.frames, "as_cpu") else self.frames
        return np.array(tensor, dtype=np.float32)[0]

    def release(self) -> None:
        """Hand a device buffer back once the encoder has consumed it (or never will). Idempotent."""
        release, self._release = self._release, None
        if release is not None:
            release()


def require_media(video: Any, audio: Any) -> None:
    """A request names at least one input (BAD_REQUEST otherwise)."""
    if video is None and audio is None:
        raise MediaError(
            "request", "neither 'video' nor 'audio' was sent; at least one is required", kind=ErrorKind.BAD_REQUEST
        )


def request_rows(videos: Sequence[bytes] | None, audios: Sequence[bytes] | None) -> int:
    """The row count of a batched request (both inputs, when sent, must have as many rows)."""
    require_media(videos, audios)
    if videos is not None and audios is not None and len(videos) != len(audios):
        raise MediaError(
            "request", f"'video' has {len(videos)} rows but 'audio' has {len(audios)}", kind=ErrorKind.BAD_REQUEST
        )
    return len(videos if videos is not None else audios)  # type: ignore[arg-type]


def media_row(
    clip: ClipFrames | None,
    waveform: np.ndarray | None,
    audio: np.ndarray | None,
    rate: int | None,
    *,
    input_name: str = "video",
) -> Row:
    """A clip's frames and an audio window (``waveform``, the encoder's input) -> the row, with its QA flags.

    ``audio`` (float32 [channels, n] at ``rate``) is what the audio flags are computed on: the whole track
    of a file, a live window's own span. Every model input is checked finite here, whatever produced it,
    so NaN never reaches an encoder.
    """
    start = time.perf_counter()
    if clip is not None and clip.on_host and not np.isfinite(clip.model_input).all():
        raise MediaError(input_name, "decoded frames are not finite")
    if waveform is not None and not np.isfinite(waveform).all():
        raise MediaError("audio", "decoded audio is not finite")
    media_qa = qa.media_qa(
        clip.small if clip is not None else None,
        audio if audio is not None and audio.size else None,
        rate,
        qa_frames=clip.qa_frames if clip is not None else None,
    )
    qa_s = time.perf_counter() - start
    if clip is None:
        return Row(None, waveform, media_qa, qa_s=qa_s)
    return Row(clip.model_input, waveform, media_qa, clip.decoder, clip.fallback, qa_s=qa_s, _release=clip.release)


def clip_row(clip: ClipFrames | None, native: np.ndarray | None, rate: int | None) -> Row:
    """A file request's row: its clip, and its whole audio track brought to the encoder's window."""
    waveform = waveform_for_model(native, rate) if native is not None and rate else None
    return media_row(clip, waveform, native, rate)


def decode_row(
    video: bytes | None,
    audio: bytes | None,
    backend: VideoBackend = PYAV,
    limits: MediaLimits = DEFAULT_LIMITS,
    cancel: Cancel | None = None,
) -> Row:
    """Decode one request into its row (the caller releases it once the encoders have answered)."""
    require_media(video, audio)
    start = time.perf_counter()
    native = rate = None
    if audio is not None:
        dec = decode_audio(audio, limits=limits, cancel=cancel)
        native, rate = dec.samples, dec.sample_rate
    clip = None
    if video is not None:
        source = backend.open(video, want_audio=audio is None, limits=limits, cancel=cancel)
        clip = source.clip()
        if audio is None:
            native, rate = source.audio, source.sample_rate
    try:
        row = clip_row(clip, native, rate)
    except BaseException:
        if clip is not None and clip.release is not None:
            clip.release()
        raise
    row.decode_s = time.perf_counter() - start - row.qa_s  # demux, decode, resample: all but the QA flags
    return row


def release_rows(rows: Sequence[Row]) -> None:
    for row in rows:
        row.release()


def decode_rows(
    videos: Sequence[bytes] | None,
    audios: Sequence[bytes] | None,
    backend: VideoBackend = PYAV,
    limits: MediaLimits = DEFAULT_LIMITS,
    cancel: Cancel | None = None,
) -> list[Row]:
    """A batched request's rows (row i from ``videos[i]`` and ``audios[i]``); none are left leased on failure."""
    n = request_rows(videos, audios)
    rows: list[Row] = []
    try:
        for i in range(n):
            video = videos[i] if videos is not None else None
            rows.append(decode_row(video, audios[i] if audios is not None else None, backend, limits, cancel))
    except BaseException:
        release_rows(rows)
        raise
    return rows
