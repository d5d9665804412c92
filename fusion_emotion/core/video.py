"""Video decode with PyAV: one pass over a container gives frames at any set of target times, and its audio.

:class:`VideoDecoder` is the PyAV video source behind file requests and timelines (the DALI source in
``core.dali_video`` wraps it for probing, the frame scan and the audio track). Frames are picked by the rule
of ``core.windows`` while decoding: non-reference frames are skipped by the decoder, only the picked frames
are converted to RGB, directly at the model's 128x171 with an area filter, and video packets are no longer
decoded once every target is served while the audio track (if wanted) is collected to the end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.core import nal
from fusion_emotion.core.audio import AudioAccumulator
from fusion_emotion.core.model_inputs import frames_for_model
from fusion_emotion.core.probe import (
    DECODE_EXCEPTIONS,
    DEFAULT_LIMITS,
    VIDEO_FORMATS,
    Cancel,
    MediaError,
    MediaLimits,
    check_audio_stream,
    check_frame_size,
    check_stream_duration,
    decode_failed,
    decoding,
    open_container,
    poll,
    too_large,
)
from fusion_emotion.core.windows import sample_times, select_frames, serves

log = logging.getLogger(__name__)

# Frames the face detector examines, as slots of the 16-frame clip sample (evenly spaced), and the height
# they are kept at (never upscaled): a face of 10 % of the frame height is then >= 36 px.
QA_FRAME_SLOTS: tuple[int, ...] = (2, 6, 10, 14)
QA_MAX_HEIGHT = 360


def resize_frame(frame: av.VideoFrame) -> np.ndarray:
    """The model's copy of a frame: uint8 [128, 171, 3] RGB."""
    h, w = C.RESIZE_HW
    # swscale's area filter averages every source pixel: a proper low-pass for
    # the large downscale (e.g. 1280x720 -> 171x128) without a full-size RGB copy.
    return frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()


def qa_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) of the face detector's copy: height at most QA_MAX_HEIGHT, aspect kept, never upscaled."""
    if height > QA_MAX_HEIGHT:
        return max(2, int(round(width * QA_MAX_HEIGHT / height))), QA_MAX_HEIGHT
    return width, height


def qa_copy(frame: av.VideoFrame) -> np.ndarray:
    """The frame for the face detector (size: :func:`qa_size`)."""
    w, h = qa_size(frame.width, frame.height)
    return frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()


def _frame_time(frame: av.VideoFrame, index: int, fps: float) -> float:
    if frame.pts is not None and frame.time_base is not None:
        return float(frame.pts * frame.time_base)
    return index / fps if fps > 0 else float(index)


@dataclass
class ClipFrames:
    """The clip-level sample of one video, from whichever decoder: the encoder's input and what QA needs."""

    small: np.ndarray  # uint8 [16, 128, 171, 3] (blur flag; the PyAV path's encoder input before normalising)
    qa_frames: np.ndarray | None  # uint8 [4, h <= QA_MAX_HEIGHT, w, 3] (face flag)
    model_input: Any  # float32 [3, 16, 112, 112] numpy, or a DLPack device tensor [1, 3, 16, 112, 112] (DALI)
    decoder: str  # "pyav", "dali_cpu", "dali_gpu": which decoder served the frames
    release: Callable[[], None] | None = None  # hand a device buffer back once the encoder has consumed it
    fallback: str | None = None  # why a DALI decoder left this video to PyAV (core.dali_video.FALLBACK_REASONS)

    @property
    def on_host(self) -> bool:
        return isinstance(self.model_input, np.ndarray)


@dataclass
class DecodedVideo:
    """Sampled frames (uint8 [T, H, W, 3] at RESIZE_HW), the face detector's frames, and the audio track if any."""

    frames: np.ndarray
    audio: np.ndarray | None  # float32 [channels, samples] at ``sample_rate``
    sample_rate: int | None
    duration_s: float
    qa_frames: np.ndarray | None = None  # uint8 [len(QA_FRAME_SLOTS), h <= QA_MAX_HEIGHT, w, 3]


@dataclass(frozen=True)
class FrameScan:
    """A video stream's frames in presentation order, from the demuxer alone (no frame decoded)."""

    times: np.ndarray  # float64 [n] stream seconds, ascending
    reference: np.ndarray  # bool [n]: decoded by VideoDecoder.sample (False: a skipped non-reference frame)
    codec: str  # FFmpeg's codec name, e.g. "h264", "mpeg4", "flv1", "vp8"
    container: str  # VIDEO_FORMATS value: "MP4", "FLV", "AVI", "MKV/WebM"
    width: int
    height: int
    decode_index: np.ndarray  # int64 [n]: each frame's packet in demux (decode) order
    idr: np.ndarray  # bool [n]: the packet starts a closed group of pictures (H.264 / HEVC IDR)

    def select(self, targets: np.ndarray) -> np.ndarray:
        """Indices into all frames (presentation order) of the frames :meth:`VideoDecoder.sample` would pick."""
        candidates = np.flatnonzero(self.reference)
        if candidates.size == 0:
            candidates = np.arange(self.times.size)
        return candidates[select_frames(self.times[candidates], targets)]


class VideoDecoder:
    """One pass over a video container: frames at any set of target times, and the audio track on the way.

    Opening probes the container under the limits and fixes the clip's time span (``start_s``,
    ``duration_s``; a container that declares no duration, as browser WebM recordings, is measured by a
    packet scan first). :meth:`sample` then decodes once and yields each target's frame as soon as it is
    reached; :meth:`packets` is the demux loop itself, for a decoder that takes packets (DALI).
    """

    name = "pyav"

    def __init__(
        self,
        data: bytes,
        *,
        want_audio: bool = True,
        limits: MediaLimits = DEFAULT_LIMITS,
        input_name: str = "video",
        cancel: Cancel | None = None,
    ) -> None:
        self.data = data
        self.want_audio = want_audio
        self.limits = limits
        self.input_name = input_name
        self.cancel = cancel
        self.audio: np.ndarray | None = None
        self.sample_rate: int | None = None
        self.frames_decoded = 0
        self._sampled = False
        self._want_video = True
        self._container: av.container.InputContainer | None = open_container(data, input_name, VIDEO_FORMATS, limits)
        try:
            self._probe(self._container)
            if self.duration_s is None:  # the scan consumes the container: decoding reopens it
                self.duration_s = self._scan_duration(self._container)
                self._container.close()
                self._container = None
        except BaseException as exc:
            if self._container is not None:
                self._container.close()
            if isinstance(exc, DECODE_EXCEPTIONS):
                raise decode_failed(input_name, exc) from None
            raise

    def _probe(self, container: av.container.InputContainer) -> None:
        limits, name = self.limits, self.input_name
        if not container.streams.video:
            raise MediaError(name, "container has no video stream")
        vstream = container.streams.video[0]
        cc = vstream.codec_context
        if cc is None:
            raise MediaError(name, "video stream has an unknown codec")
        check_frame_size(cc.width or 0, cc.height or 0, name, limits)
        check_stream_duration(vstream, name, limits)
        if self.want_audio and container.streams.audio:
            astream = container.streams.audio[0]
            check_audio_stream(astream, name, limits)
            check_stream_duration(astream, name, limits)
        self.fps = float(vstream.average_rate) if vstream.average_rate else 0.0
        self.width, self.height = int(cc.width or 0), int(cc.height or 0)
        self.start_s = float(vstream.start_time * vstream.time_base) if vstream.start_time is not None else 0.0
        duration: float | None = None
        if vstream.duration is not None and vstream.time_base is not None:
            duration = float(vstream.duration * vstream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        self.duration_s = duration if duration and duration > 0 else None

    def _scan_duration(self, container: av.container.InputContainer) -> float:
        """End of the last video packet, by demuxing without decoding (cheap: no frame is decoded)."""
        vstream = container.streams.video[0]
        first = end = None
        for n, packet in enumerate(container.demux(vstream)):
            poll(n, self.cancel, self.input_name, self.limits)
            if packet.pts is None or packet.time_base is None:
                continue
            t0 = float(packet.pts * packet.time_base)
            t1 = t0 + float((packet.duration or 0) * packet.time_base)
            first = t0 if first is None else min(first, t0)
            end = t1 if end is None else max(end, t1)
        if first is None or end is None:
            raise MediaError(self.input_name, "no decodable video frames")
        if self.fps > 0:
            end = max(end, first + 1.0 / self.fps)  # a single frame still spans one frame period
        duration = end - first
        if duration > self.limits.max_duration_s:
            raise too_large(
                self.input_name, f"duration {duration:.1f} s is over the {self.limits.max_duration_s:.0f} s limit"
            )
        self.start_s = first
        return max(duration, 1e-3)

    def scan_frames(self) -> FrameScan:
        """Every video frame's time, and whether :meth:`sample` may pick it, by demuxing without decoding.

        :meth:`sample` decodes with ``skip_frame=NONREF``: for H.264 a frame whose slices all have
        ``nal_ref_idc == 0`` is never decoded, so it never serves a target. The scan marks those frames, so
        a decoder that sees every frame (DALI) can pick the very frames this one picks, and marks the IDR
        pictures where the stream can be cut. Bounded by the packet limit (``max_packets``); the
        decoded-frame limit is the caller's to apply.
        """
        container = open_container(self.data, self.input_name, VIDEO_FORMATS, self.limits)
        with decoding(container, self.input_name):
            vstream = container.streams.video[0]
            codec = vstream.codec_context.name or ""
            nal_length = nal.nal_length_size(bytes(vstream.codec_context.extradata or b""), codec)
            times: list[float] = []
            refs: list[bool] = []
            idr: list[bool] = []
            for n, packet in enumerate(container.demux(vstream)):
                poll(n, self.cancel, self.input_name, self.limits)
                if packet.pts is None or packet.time_base is None or packet.size == 0:
                    continue
                data = bytes(packet)
                times.append(float(packet.pts * packet.time_base))
                refs.append(nal.h264_is_reference(data, nal_length) if codec == "h264" else True)
                idr.append(nal.is_idr(data, nal_length, codec))
            fmt = VIDEO_FORMATS[container.format.name]
        if not times:
            raise MediaError(self.input_name, "no decodable video frames")
        order = np.argsort(np.asarray(times), kind="stable")
        return FrameScan(
            np.asarray(times, np.float64)[order],
            np.asarray(refs, bool)[order],
            codec,
            fmt,
            self.width,
            self.height,
            order.astype(np.int64),
            np.asarray(idr, bool)[order],
        )

    def clip_times(self, num: int = C.NUM_FRAMES) -> np.ndarray:
        """The clip-level sample: centres of ``num`` equal slices of the whole clip (stream time)."""
        return sample_times(float(self.duration_s), num, self.start_s)

    def packets(self) -> Iterator[av.Packet]:
        """The video packets, in demux order, while video is wanted; the audio track (if wanted) is decoded
        on the way into ``audio`` / ``sample_rate``, complete once the iteration has ended."""
        limits, name = self.limits, self.input_name
        container = self._container or open_container(self.data, name, VIDEO_FORMATS, limits)
        self._container = None
        with decoding(container, name):
            vstream = container.streams.video[0]
            astream = container.streams.audio[0] if (self.want_audio and container.streams.audio) else None
            acc = AudioAccumulator(name, limits) if astream is not None else None
            streams = [vstream] + ([astream] if astream is not None else [])
            for n, packet in enumerate(container.demux(*streams)):
                poll(n, self.cancel, name, limits)
                if packet.stream is vstream:
                    if self._want_video:
                        yield packet
                    elif acc is None:
                        break
                elif acc is not None:
                    for frame in packet.decode():
                        acc.add(frame)
        if acc is not None:
            self.audio, self.sample_rate = acc.result()

    def _frames(self) -> Iterator[tuple[float, av.VideoFrame]]:
        """Decode video frames in order (non-reference frames skipped), under the frame and pixel limits."""
        limits, name = self.limits, self.input_name
        configured = False
        try:
            for packet in self.packets():
                if not configured:
                    cc = packet.stream.codec_context
                    cc.skip_frame = "NONREF"
                    # The decoder refuses frames over the pixel budget itself, whatever the header declared.
                    cc.options = {"max_pixels": str(limits.max_pixels)}
                    configured = True
                for frame in packet.decode():
                    self.frames_decoded += 1
                    if self.frames_decoded > limits.max_frames:
                        raise too_large(
                            name, f"video has more than {limits.max_frames} frames, over the decoded-frame limit"
                        )
                    check_frame_size(frame.width, frame.height, name, limits)
                    yield _frame_time(frame, self.frames_decoded - 1, self.fps), frame
        except DECODE_EXCEPTIONS as exc:
            raise decode_failed(name, exc) from None

    def _start(self) -> None:
        if self._sampled:
            raise RuntimeError("a video source is read once")
        self._sampled = True

    def sample(
        self, times: np.ndarray, qa_slots: Sequence[int] = ()
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """Decode once; yield ``(slot, rgb, qa_rgb)`` for every target time, in time order.

        ``slot`` indexes ``times`` (any order); ``rgb`` is uint8 [128, 171, 3]; ``qa_rgb`` is the larger
        copy for the face detector when ``slot`` is in ``qa_slots``, else None. A target is served by the
        first decoded frame at or after it; targets past the last frame get the last frame (the stream
        ended early). Iterate to the end: the audio track is complete only then.
        """
        self._start()
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        order = np.argsort(times, kind="stable")
        wanted_qa = set(int(s) for s in qa_slots)
        k = 0
        last: av.VideoFrame | None = None
        self._want_video = len(order) > 0
        for t, frame in self._frames():
            last = frame
            rgb = None
            while k < len(order) and serves(t, times[order[k]]):
                slot = int(order[k])
                rgb = resize_frame(frame) if rgb is None else rgb
                yield slot, rgb, (qa_copy(frame) if slot in wanted_qa else None)
                k += 1
            if k == len(order):
                self._want_video = False
        if k < len(order):
            if last is None:
                raise MediaError(self.input_name, "no decodable video frames")
            rgb = resize_frame(last)
            for j in range(k, len(order)):
                slot = int(order[j])
                yield slot, rgb, (qa_copy(last) if slot in wanted_qa else None)

    def clip(self, num_frames: int = C.NUM_FRAMES) -> ClipFrames:
        """The clip-level sample (decodes once; the audio track, if wanted, is complete afterwards)."""
        small, qa_frames = sample_clip(self, num_frames)
        return ClipFrames(small, qa_frames, frames_for_model(small), self.name)


def sample_clip(source: Any, num_frames: int = C.NUM_FRAMES) -> tuple[np.ndarray, np.ndarray | None]:
    """A source's clip-level frames and face-detector frames, through its :meth:`sample`."""
    qa_slots = [s for s in QA_FRAME_SLOTS if s < num_frames] if num_frames == C.NUM_FRAMES else []
    frames: list[np.ndarray | None] = [None] * num_frames
    qa: dict[int, np.ndarray] = {}
    for slot, rgb, qa_rgb in source.sample(source.clip_times(num_frames), qa_slots):
        frames[slot] = rgb
        if qa_rgb is not None:
            qa[slot] = qa_rgb
    qa_frames = np.stack([qa[s] for s in qa_slots]) if qa_slots and len(qa) == len(qa_slots) else None
    return np.stack(frames), qa_frames  # type: ignore[arg-type]  # every slot is served


def decode_video(
    data: bytes,
    *,
    want_audio: bool = True,
    num_frames: int = C.NUM_FRAMES,
    limits: MediaLimits = DEFAULT_LIMITS,
    input_name: str = "video",
    cancel: Cancel | None = None,
) -> DecodedVideo:
    """Sample ``num_frames`` frames uniformly over time (plus the face detector's copies) and, if asked, the audio."""
    decoder = VideoDecoder(data, want_audio=want_audio, limits=limits, input_name=input_name, cancel=cancel)
    frames, qa_frames = sample_clip(decoder, num_frames)
    return DecodedVideo(frames, decoder.audio, decoder.sample_rate, float(decoder.duration_s), qa_frames)
