"""Decode container bytes into model-ready numpy arrays: the one decoder.

Pure functions over bytes and numpy arrays (PyAV for demuxing/decoding, scipy for resampling). The Triton
``preprocess`` and ``fusion_emotion_timeline`` models and the in-process reference pipeline all decode through
:class:`VideoDecoder` and :func:`decode_audio`, so their numbers agree by construction and every bound below
protects every route.

Every request's cost is bounded before and while decoding (docs/reliability.md): only whitelisted demuxers
may probe the bytes (no concat/playlist/image demuxer ever opens a path), probing reads a bounded prefix and
at most ``max_streams`` streams, frame sizes are checked per decoded frame and capped inside the decoder
(``max_pixels``), audio keeps running counts and one (rate, channels) per track, float audio is clipped to
full scale, and a cancellation callback is polled while decoding.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from scipy.signal import resample_poly

from fusion_emotion import contract as C
from fusion_emotion.errors import ErrorKind, ServingError

log = logging.getLogger(__name__)

# PyAV's demuxer names for the containers we accept.
VIDEO_FORMATS = {"mov,mp4,m4a,3gp,3g2,mj2": "MP4", "flv": "FLV", "avi": "AVI", "matroska,webm": "MKV/WebM"}
AUDIO_FORMATS = {"wav": "WAV"}
# The only demuxers FFmpeg may even try on request bytes (AVFormatContext.format_whitelist): a text
# playlist (ffconcat, HLS, image sequences) can never make FFmpeg open a path or URL.
_DEMUXER_WHITELIST = "mov,mp4,m4a,3gp,3g2,mj2,flv,avi,matroska,webm,wav"
# Frames the face detector examines, as slots of the 16-frame clip sample (evenly spaced), and the height
# they are kept at (never upscaled): a face of 10 % of the frame height is then >= 36 px.
QA_FRAME_SLOTS: tuple[int, ...] = (2, 6, 10, 14)
QA_MAX_HEIGHT = 360
# Packets between two polls of the cancellation callback.
_CANCEL_POLL_PACKETS = 32

Cancel = Callable[[], bool]


class MediaError(ServingError):
    """A request's media (or parameter) cannot be used; the message names the input and the reason.

    ``kind`` defaults to INVALID_MEDIA; limits use TOO_LARGE (``too_large=True`` is shorthand), the request's
    shape BAD_REQUEST, a cancelled decode CANCELLED.
    """

    def __init__(
        self, input_name: str, reason: str, *, too_large: bool = False, kind: ErrorKind = ErrorKind.INVALID_MEDIA
    ) -> None:
        super().__init__(ErrorKind.TOO_LARGE if too_large else kind, input_name, reason)

    @property
    def input_name(self) -> str:
        return self.subject


def _too_large(input_name: str, reason: str) -> MediaError:
    return MediaError(input_name, reason, kind=ErrorKind.TOO_LARGE)


@dataclass(frozen=True)
class MediaLimits:
    """Bounds checked from container metadata before any heavy decoding, then while decoding.

    The one place the media limits and their defaults live (docs/reliability.md); the Triton models
    override them from their config parameters (``from_params``). Every refusal on these grounds is a
    ``MediaError`` of kind TOO_LARGE.
    """

    max_bytes: int = C.MAX_INPUT_BYTES
    max_duration_s: float = 600.0
    max_width: int = 3840
    max_height: int = 2160
    max_sample_rate: int = 192_000
    # Below telephony's 8 kHz there is no usable speech (and the resampler's ratio would explode).
    min_sample_rate: int = 8_000
    max_channels: int = 8
    # Decoded video frames per request: max_duration_s at this rate (bounds decode time
    # when timestamps never reach the sampling targets).
    max_frame_rate: float = 120.0
    # Decoded audio values (channels x samples) per input: 600 s of 48 kHz stereo,
    # 220 MiB as float32. Compressed silence cannot inflate past it.
    max_audio_values: int = 600 * 48_000 * 2
    # Streams a container may declare: FFmpeg probes (allocates a decoder for) every stream before any
    # other check can run; 40 tiny 4K tracks cost ~800 MiB of probing here.
    max_streams: int = 8
    # Bytes FFmpeg reads to probe the format and streams (its own default is 5 MB).
    probe_bytes: int = 5_000_000
    # Demuxed packets per input (audio and video together): a file of countless tiny packets (1-sample
    # PCM chunks) costs per-packet overhead long before any other limit is reached. 600 s of 60 fps video
    # with 48 kHz AAC is ~64k packets.
    max_packets: int = 120_000
    # Audio frames must carry this many samples on average (checked after the first 1,000): every real
    # codec frames >= 120 samples (AAC 1024, MP3 1152, Opus >= 120), so a track cut into 1-sample packets
    # is refused in milliseconds instead of costing ~70 us of per-packet overhead per sample.
    min_audio_frame_samples: int = 64

    @property
    def max_frames(self) -> int:
        return int(self.max_duration_s * self.max_frame_rate)

    @property
    def max_pixels(self) -> int:
        return self.max_width * self.max_height

    @classmethod
    def from_params(cls, params: dict[str, str]) -> MediaLimits:
        """Limits from Triton model parameters named like the fields (``max_input_bytes`` = ``max_bytes``)."""
        values: dict[str, float | int] = {}
        aliases = {"max_input_bytes": "max_bytes"}
        for key, raw in params.items():
            name = aliases.get(key, key)
            if name not in cls.__dataclass_fields__ or raw is None or str(raw).strip() == "":
                continue
            kind = float if name in ("max_duration_s", "max_frame_rate") else int
            values[name] = kind(raw)
        return cls(**values)


DEFAULT_LIMITS = MediaLimits()


@dataclass
class DecodedVideo:
    """Sampled frames (uint8 [T, H, W, 3] at RESIZE_HW), the face detector's frames, and the audio track if any."""

    frames: np.ndarray
    audio: np.ndarray | None  # float32 [channels, samples] at ``sample_rate``
    sample_rate: int | None
    duration_s: float
    qa_frames: np.ndarray | None = None  # uint8 [len(QA_FRAME_SLOTS), h <= QA_MAX_HEIGHT, w, 3]


@dataclass
class DecodedAudio:
    samples: np.ndarray  # float32 [channels, samples], full scale = 1.0
    sample_rate: int


# --------------------------------------------------------------------------- opening and probing


def _open(data: bytes, input_name: str, allowed: dict[str, str], limits: MediaLimits) -> av.container.InputContainer:
    """Open request bytes with bounded probing; refuse what is not one of ``allowed``'s containers."""
    if not data:
        raise MediaError(input_name, "empty input (0 bytes)")
    if len(data) > limits.max_bytes:
        raise _too_large(input_name, f"input is {len(data)} bytes, over the {limits.max_bytes}-byte limit")
    options = {
        "format_whitelist": _DEMUXER_WHITELIST,
        "max_streams": str(limits.max_streams),
        "probesize": str(limits.probe_bytes),
    }
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore", options=options)
    except MemoryError:
        # FFmpeg answers ENOMEM when a container declares more streams than max_streams.
        raise _too_large(input_name, f"container has more than {limits.max_streams} streams, over the limit") from None
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise MediaError(input_name, f"not a decodable media file ({type(exc).__name__})") from None
    fmt = container.format.name
    if fmt not in allowed:
        container.close()
        expected = ", ".join(sorted(set(allowed.values())))
        raise MediaError(input_name, f"unsupported container '{fmt}'; expected {expected}")
    if container.duration is not None and container.duration / av.time_base > limits.max_duration_s:
        dur = container.duration / av.time_base
        container.close()
        raise _too_large(input_name, f"duration {dur:.1f} s is over the {limits.max_duration_s:.0f} s limit")
    return container


def _check_stream_duration(stream: av.stream.Stream, input_name: str, limits: MediaLimits) -> None:
    """A stream may declare a longer duration than its container (or the container none at all)."""
    if stream.duration is not None and stream.time_base is not None:
        dur = float(stream.duration * stream.time_base)
        if dur > limits.max_duration_s:
            raise _too_large(input_name, f"duration {dur:.1f} s is over the {limits.max_duration_s:.0f} s limit")


def _check_audio_stream(stream: av.audio.stream.AudioStream, input_name: str, limits: MediaLimits) -> None:
    if stream.codec_context is None:
        raise MediaError(input_name, "audio stream has an unknown codec")
    rate = stream.codec_context.sample_rate or 0
    channels = stream.codec_context.channels or 0
    if rate <= 0:
        raise MediaError(input_name, "audio stream has no sample rate")
    if rate < limits.min_sample_rate:
        raise MediaError(input_name, f"sample rate {rate} Hz is under the {limits.min_sample_rate} Hz minimum")
    if rate > limits.max_sample_rate:
        raise _too_large(input_name, f"sample rate {rate} Hz is over the {limits.max_sample_rate} Hz limit")
    if channels > limits.max_channels:
        raise _too_large(input_name, f"{channels} audio channels is over the {limits.max_channels}-channel limit")


def _check_frame_size(width: int, height: int, input_name: str, limits: MediaLimits) -> None:
    if width > limits.max_width or height > limits.max_height:
        raise _too_large(
            input_name, f"frame size {width}x{height} is over the {limits.max_width}x{limits.max_height} limit"
        )


# --------------------------------------------------------------------------- audio


def audio_frame_to_float(frame: av.AudioFrame) -> np.ndarray:
    """One decoded audio frame as float32 [channels, samples] with full scale at 1.0."""
    arr = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:
        arr = arr.reshape(-1, channels).T
    kind = arr.dtype
    if kind == np.int16:
        out = arr.astype(np.float32) / 32768.0
    elif kind == np.int32:
        out = arr.astype(np.float32) / 2147483648.0
    elif kind == np.uint8:
        out = (arr.astype(np.float32) - 128.0) / 128.0
    else:
        out = arr.astype(np.float32, copy=False)
    return out


class AudioAccumulator:
    """Decoded audio frames of one track, with running bounds (never a re-scan of what is stored).

    Float PCM is refused when not finite and clipped to full scale (finite values of ±3e38 would overflow
    to infinity when channels are mixed); the track must keep one sample rate and channel count.
    """

    def __init__(self, input_name: str, limits: MediaLimits) -> None:
        self.input_name = input_name
        self.limits = limits
        self.chunks: list[np.ndarray] = []
        self.samples = 0
        self.values = 0
        self.frames = 0
        self.rate: int | None = None
        self.channels: int | None = None

    def add(self, frame: av.AudioFrame) -> None:
        rate, channels = int(frame.sample_rate or 0), len(frame.layout.channels)
        if self.rate is None:
            if rate < self.limits.min_sample_rate:
                raise MediaError(
                    self.input_name, f"sample rate {rate} Hz is under the {self.limits.min_sample_rate} Hz minimum"
                )
            if rate > self.limits.max_sample_rate:
                raise _too_large(
                    self.input_name, f"sample rate {rate} Hz is over the {self.limits.max_sample_rate} Hz limit"
                )
            if channels > self.limits.max_channels:
                raise _too_large(
                    self.input_name, f"{channels} audio channels is over the {self.limits.max_channels}-channel limit"
                )
            self.rate, self.channels = rate, channels
        elif (rate, channels) != (self.rate, self.channels):
            raise MediaError(
                self.input_name,
                f"audio format changes mid-stream ({self.rate} Hz x {self.channels} ch, then {rate} Hz x {channels} ch)",
            )
        chunk = audio_frame_to_float(frame)
        if frame.format.name.startswith(("flt", "dbl")):
            if not np.isfinite(chunk).all():
                raise MediaError(self.input_name, "audio contains non-finite samples (NaN or infinity)")
            chunk = np.clip(chunk, -1.0, 1.0)
        self.samples += chunk.shape[1]
        self.values += chunk.size
        self.frames += 1
        if self.frames >= 1000 and self.samples < self.frames * self.limits.min_audio_frame_samples:
            raise MediaError(
                self.input_name,
                f"audio frames carry {self.samples / self.frames:.1f} samples on average, under the "
                f"{self.limits.min_audio_frame_samples}-sample minimum",
            )
        if self.samples > self.limits.max_duration_s * rate:
            raise _too_large(self.input_name, f"audio is over the {self.limits.max_duration_s:.0f} s limit")
        if self.values > self.limits.max_audio_values:
            raise _too_large(self.input_name, f"decoded audio is over the {self.limits.max_audio_values}-value limit")
        if chunk.shape[1]:
            self.chunks.append(chunk)

    def result(self) -> tuple[np.ndarray | None, int | None]:
        """float32 [channels, samples] and its rate, or (None, None) when the track held no samples."""
        if not self.samples or self.rate is None:
            return None, None
        return np.concatenate(self.chunks, axis=1), self.rate


def _decode_failed(input_name: str, exc: BaseException) -> MediaError:
    return MediaError(input_name, f"decoding failed ({type(exc).__name__})")


_DECODE_EXCEPTIONS = (av.error.FFmpegError, ValueError, OSError, MemoryError, EOFError)


@contextmanager
def _decoding(container: av.container.InputContainer, input_name: str) -> Iterator[av.container.InputContainer]:
    """Decode inside: FFmpeg and numpy failures become a MediaError naming the input; the container is closed."""
    try:
        yield container
    except MediaError:
        raise
    except _DECODE_EXCEPTIONS as exc:
        raise _decode_failed(input_name, exc) from None
    finally:
        container.close()


def decode_audio(
    data: bytes, *, limits: MediaLimits = DEFAULT_LIMITS, input_name: str = "audio", cancel: Cancel | None = None
) -> DecodedAudio:
    """Decode a WAV file (any PCM width, any common rate, mono or multichannel)."""
    with _decoding(_open(data, input_name, AUDIO_FORMATS, limits), input_name) as container:
        if not container.streams.audio:
            raise MediaError(input_name, "WAV has no audio stream")
        stream = container.streams.audio[0]
        _check_audio_stream(stream, input_name, limits)
        _check_stream_duration(stream, input_name, limits)
        acc = AudioAccumulator(input_name, limits)
        for n, packet in enumerate(container.demux(stream)):
            _poll(n, cancel, input_name, limits)
            for frame in packet.decode():
                acc.add(frame)
    samples, rate = acc.result()
    if samples is None or rate is None:
        raise MediaError(input_name, "WAV contains no audio samples (header only?)")
    return DecodedAudio(samples, rate)


def _poll(packets: int, cancel: Cancel | None, input_name: str, limits: MediaLimits) -> None:
    """Per-packet bounds: the packet count, and the cancellation callback every few packets."""
    if packets >= limits.max_packets:
        raise _too_large(input_name, f"media has more than {limits.max_packets} packets, over the packet limit")
    if cancel is not None and packets % _CANCEL_POLL_PACKETS == 0 and cancel():
        raise MediaError(input_name, "request cancelled while decoding", kind=ErrorKind.CANCELLED)


# --------------------------------------------------------------------------- video


def _frame_time(frame: av.VideoFrame, index: int, fps: float) -> float:
    if frame.pts is not None and frame.time_base is not None:
        return float(frame.pts * frame.time_base)
    return index / fps if fps > 0 else float(index)


def sample_times(duration_s: float, num: int = C.NUM_FRAMES, start_s: float = 0.0) -> np.ndarray:
    """Centres of ``num`` equal slices of the clip: uniform sampling over time."""
    return start_s + (np.arange(num, dtype=np.float64) + 0.5) * (duration_s / num)


# A decoded frame serves a target time when it is shown at (or, within this slack, just before) the target.
FRAME_TIME_EPS = 1e-6


def serves(frame_time: float, target: float) -> bool:
    """The clip sampling rule for one frame and one target: the first frame at or after the target serves it."""
    return frame_time + FRAME_TIME_EPS >= target


def select_frames(frame_times: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each target, the index of the frame that serves it (:func:`serves`), else the last frame.

    ``frame_times`` are the candidate frames' times in presentation order. This is the batch form of what
    :meth:`VideoDecoder.sample` does while streaming; the DALI path (core/dali_video.py) selects with it.
    """
    times = np.asarray(frame_times, dtype=np.float64).reshape(-1)
    if times.size == 0:
        raise ValueError("no frames to select from")
    targets = np.asarray(targets, dtype=np.float64).reshape(-1)
    return np.minimum(np.searchsorted(times, targets - FRAME_TIME_EPS, side="left"), times.size - 1)


def uniform_indices(total: int, num: int = C.NUM_FRAMES) -> np.ndarray:
    """Indices of ``num`` frames spread uniformly over ``total`` (repeats when total < num)."""
    if total <= 0:
        raise ValueError("no frames to sample from")
    return np.minimum(((np.arange(num) + 0.5) * total / num).astype(np.int64), total - 1)


def _resize(frame: av.VideoFrame) -> np.ndarray:
    h, w = C.RESIZE_HW
    # swscale's area filter averages every source pixel: a proper low-pass for
    # the large downscale (e.g. 1280x720 -> 171x128) without a full-size RGB copy.
    return frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()


def qa_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) of the face detector's copy: height at most QA_MAX_HEIGHT, aspect kept, never upscaled."""
    if height > QA_MAX_HEIGHT:
        return max(2, int(round(width * QA_MAX_HEIGHT / height))), QA_MAX_HEIGHT
    return width, height


def _qa_copy(frame: av.VideoFrame) -> np.ndarray:
    """The frame for the face detector (size: :func:`qa_size`)."""
    w, h = qa_size(frame.width, frame.height)
    return frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()


@dataclass(frozen=True)
class FrameScan:
    """A video stream's frames in presentation order, from the demuxer alone (no frame decoded)."""

    times: np.ndarray  # float64 [n] stream seconds, ascending
    reference: np.ndarray  # bool [n]: decoded by VideoDecoder.sample (False: a skipped non-reference frame)
    codec: str  # FFmpeg's codec name, e.g. "h264", "mpeg4", "flv1", "vp8"
    container: str  # VIDEO_FORMATS value: "MP4", "FLV", "AVI", "MKV/WebM"
    width: int
    height: int

    def select(self, targets: np.ndarray) -> np.ndarray:
        """Indices into all frames (presentation order) of the frames :meth:`VideoDecoder.sample` would pick."""
        candidates = np.flatnonzero(self.reference)
        if candidates.size == 0:
            candidates = np.arange(self.times.size)
        return candidates[select_frames(self.times[candidates], targets)]


def h264_nal_length_size(extradata: bytes) -> int:
    """Bytes of each NAL length prefix from an avcC record (MP4/MKV); 0 means Annex B start codes (AVI)."""
    if len(extradata) >= 5 and extradata[0] == 1:
        return (extradata[4] & 0x03) + 1
    return 0


def _length_prefixed(data: bytes, nal_length: int) -> list[int] | None:
    """NAL header bytes of an avcC packet, or None when the length prefixes do not tile it exactly."""
    headers: list[int] = []
    pos = 0
    while pos < len(data):
        size = int.from_bytes(data[pos : pos + nal_length], "big")
        if size <= 0 or pos + nal_length + size > len(data):
            return None
        headers.append(data[pos + nal_length])
        pos += nal_length + size
    return headers


def _nal_headers(data: bytes, nal_length: int) -> list[int]:
    """The first byte of every NAL unit in one H.264 packet (avcC length prefixes, else Annex B)."""
    if nal_length:
        headers = _length_prefixed(data, nal_length)
        if headers is not None:
            return headers
    out: list[int] = []
    start = 0
    while True:  # Annex B: 00 00 01 start codes (AVI, or an avcC stream muxed as Annex B)
        i = data.find(b"\x00\x00\x01", start)
        if i < 0 or i + 3 >= len(data):
            return out
        out.append(data[i + 3])
        start = i + 3


def h264_is_reference(data: bytes, nal_length: int) -> bool:
    """False when every coded slice in the packet has ``nal_ref_idc == 0`` (FFmpeg's ``skip_frame=NONREF``)."""
    slices = [h for h in _nal_headers(data, nal_length) if (h & 0x1F) in (1, 5)]
    return not slices or any((h >> 5) & 0x03 for h in slices)


class VideoDecoder:
    """One pass over a video container: frames at any set of target times, and the audio track on the way.

    Opening probes the container under the limits and fixes the clip's time span (``start_s``,
    ``duration_s``; a container that declares no duration, as browser WebM recordings, is measured by a
    packet scan first). :meth:`sample` then decodes once and yields each target's frame as soon as it is
    reached, converting only those frames to RGB; non-reference frames are skipped by the decoder, and
    video packets are no longer decoded once every target is served, while the audio track (if wanted)
    is collected to the end into ``audio`` / ``sample_rate``.
    """

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
        self._container: av.container.InputContainer | None = _open(data, input_name, VIDEO_FORMATS, limits)
        try:
            self._probe(self._container)
            if self.duration_s is None:  # the scan consumes the container: decoding reopens it
                self.duration_s = self._scan_duration(self._container)
                self._container.close()
                self._container = None
        except BaseException as exc:
            if self._container is not None:
                self._container.close()
            if isinstance(exc, _DECODE_EXCEPTIONS):
                raise _decode_failed(input_name, exc) from None
            raise

    def _probe(self, container: av.container.InputContainer) -> None:
        limits, name = self.limits, self.input_name
        if not container.streams.video:
            raise MediaError(name, "container has no video stream")
        vstream = container.streams.video[0]
        cc = vstream.codec_context
        if cc is None:
            raise MediaError(name, "video stream has an unknown codec")
        _check_frame_size(cc.width or 0, cc.height or 0, name, limits)
        _check_stream_duration(vstream, name, limits)
        if self.want_audio and container.streams.audio:
            astream = container.streams.audio[0]
            _check_audio_stream(astream, name, limits)
            _check_stream_duration(astream, name, limits)
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
            _poll(n, self.cancel, self.input_name, self.limits)
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
            raise _too_large(
                self.input_name, f"duration {duration:.1f} s is over the {self.limits.max_duration_s:.0f} s limit"
            )
        self.start_s = first
        return max(duration, 1e-3)

    def scan_frames(self) -> FrameScan:
        """Every video frame's time and whether :meth:`sample` may pick it, by demuxing without decoding.

        :meth:`sample` decodes with ``skip_frame=NONREF``: for H.264 a frame whose slices all have
        ``nal_ref_idc == 0`` is never decoded, so it never serves a target. The scan marks those frames, so
        a decoder that sees every frame (DALI) can pick the very frames this one picks. Bounded by the
        packet limit (``max_packets``); the decoded-frame limit is the caller's to apply.
        """
        container = _open(self.data, self.input_name, VIDEO_FORMATS, self.limits)
        with _decoding(container, self.input_name):
            vstream = container.streams.video[0]
            codec = vstream.codec_context.name or ""
            extradata = bytes(vstream.codec_context.extradata or b"")
            nal_length = h264_nal_length_size(extradata) if codec == "h264" else 0
            times: list[float] = []
            refs: list[bool] = []
            for n, packet in enumerate(container.demux(vstream)):
                _poll(n, self.cancel, self.input_name, self.limits)
                if packet.pts is None or packet.time_base is None or packet.size == 0:
                    continue
                times.append(float(packet.pts * packet.time_base))
                refs.append(h264_is_reference(bytes(packet), nal_length) if codec == "h264" else True)
            fmt = VIDEO_FORMATS[container.format.name]
        if not times:
            raise MediaError(self.input_name, "no decodable video frames")
        order = np.argsort(np.asarray(times), kind="stable")
        return FrameScan(
            np.asarray(times, np.float64)[order], np.asarray(refs, bool)[order], codec, fmt, self.width, self.height
        )

    def clip_times(self, num: int = C.NUM_FRAMES) -> np.ndarray:
        """The clip-level sample: centres of ``num`` equal slices of the whole clip (stream time)."""
        return sample_times(float(self.duration_s), num, self.start_s)

    def _frames(self) -> Iterator[tuple[float, av.VideoFrame]]:
        """Decode video frames in order, collecting audio packets on the way, while ``_want_video``."""
        limits, name = self.limits, self.input_name
        container = self._container or _open(self.data, name, VIDEO_FORMATS, limits)
        self._container = None
        with _decoding(container, name):
            vstream = container.streams.video[0]
            vstream.codec_context.skip_frame = "NONREF"
            # The decoder refuses frames over the pixel budget itself, whatever the header declared.
            vstream.codec_context.options = {"max_pixels": str(limits.max_pixels)}
            astream = container.streams.audio[0] if (self.want_audio and container.streams.audio) else None
            acc = AudioAccumulator(name, limits) if astream is not None else None
            streams = [vstream] + ([astream] if astream is not None else [])
            max_frames = limits.max_frames
            for n, packet in enumerate(container.demux(*streams)):
                _poll(n, self.cancel, name, limits)
                if packet.stream is vstream:
                    if not self._want_video:
                        if acc is None:
                            break
                        continue
                    for frame in packet.decode():
                        self.frames_decoded += 1
                        if self.frames_decoded > max_frames:
                            raise _too_large(
                                name, f"video has more than {max_frames} frames, over the decoded-frame limit"
                            )
                        _check_frame_size(frame.width, frame.height, name, limits)
                        yield _frame_time(frame, self.frames_decoded - 1, self.fps), frame
                elif acc is not None:
                    for frame in packet.decode():
                        acc.add(frame)
        if acc is not None:
            self.audio, self.sample_rate = acc.result()

    def sample(
        self, times: np.ndarray, qa_slots: Sequence[int] = ()
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """Decode once; yield ``(slot, rgb, qa_rgb)`` for every target time, in time order.

        ``slot`` indexes ``times`` (any order); ``rgb`` is uint8 [128, 171, 3]; ``qa_rgb`` is the larger
        copy for the face detector when ``slot`` is in ``qa_slots``, else None. A target is served by the
        first decoded frame at or after it; targets past the last frame get the last frame (the stream
        ended early). Iterate to the end: the audio track is complete only then.
        """
        if self._sampled:
            raise RuntimeError("VideoDecoder.sample runs once per decoder")
        self._sampled = True
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
                rgb = _resize(frame) if rgb is None else rgb
                yield slot, rgb, (_qa_copy(frame) if slot in wanted_qa else None)
                k += 1
            if k == len(order):
                self._want_video = False
        if k < len(order):
            if last is None:
                raise MediaError(self.input_name, "no decodable video frames")
            rgb = _resize(last)
            for j in range(k, len(order)):
                slot = int(order[j])
                yield slot, rgb, (_qa_copy(last) if slot in wanted_qa else None)


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
    qa_slots = [s for s in QA_FRAME_SLOTS if s < num_frames] if num_frames == C.NUM_FRAMES else []
    frames: list[np.ndarray | None] = [None] * num_frames
    qa: dict[int, np.ndarray] = {}
    for slot, rgb, qa_rgb in decoder.sample(decoder.clip_times(num_frames), qa_slots):
        frames[slot] = rgb
        if qa_rgb is not None:
            qa[slot] = qa_rgb
    qa_frames = np.stack([qa[s] for s in qa_slots]) if qa_slots and len(qa) == len(qa_slots) else None
    return DecodedVideo(
        np.stack(frames),  # type: ignore[arg-type]  # every slot is served
        decoder.audio,
        decoder.sample_rate,
        float(decoder.duration_s),
        qa_frames,
    )


# --------------------------------------------------------------------------- model inputs


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average channels: float32 [channels, n] -> [n]."""
    return samples.mean(axis=0, dtype=np.float32) if samples.shape[0] > 1 else samples[0].astype(np.float32, copy=False)


MAX_POLYPHASE = 2000
"""Largest up/down factor the resampler designs a filter for (its length grows with it: 191,999 Hz -> 16 kHz
exactly needs 3.8M taps, ~0.8 s to design per request). Every common rate is exact within it; other rates
use the nearest ratio within it, a pitch error under 1e-5 (inaudible, and irrelevant to emotion)."""


def _ratio(rate: int, target: int) -> tuple[int, int]:
    """(up, down) of the polyphase resampler from ``rate`` to ``target``."""
    exact = Fraction(int(target), int(rate))
    frac, limit = exact, MAX_POLYPHASE
    while max(frac.numerator, frac.denominator) > MAX_POLYPHASE:
        if limit < 1:
            raise ValueError(f"cannot resample {rate} Hz to {target} Hz")
        frac = exact.limit_denominator(limit)
        limit //= 2
    return frac.numerator, frac.denominator


def resample(wave: np.ndarray, rate: int, target: int = C.SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (anti-aliased) to ``target`` Hz."""
    if rate == target:
        return wave.astype(np.float32, copy=False)
    up, down = _ratio(rate, target)
    return resample_poly(wave, up, down).astype(np.float32)


def resampled_length(n: int, rate: int, target: int = C.SAMPLE_RATE) -> int:
    """Length of ``resample`` of ``n`` samples (scipy: ceil(n * up / down))."""
    if rate == target:
        return n
    up, down = _ratio(rate, target)
    return -(-n * up // down)


def resample_span(rate: int, start: int, stop: int, target: int = C.SAMPLE_RATE) -> tuple[int, int]:
    """Input samples ``[first, last)`` that ``resample_range`` reads for outputs ``[start, stop)``.

    ``first`` is a multiple of the ratio's ``down`` (it maps exactly onto an output sample); ``last`` is not
    clipped to the input's length. A live stream uses it to know when a span's output is final (every
    input sample the filter reaches has arrived) and how much history it must keep.
    """
    if rate == target:
        return max(0, start), stop
    up, down = _ratio(rate, target)
    reach = 10 * max(up, down) // up + 2  # resample_poly's filter half-length, in input samples
    first = max(0, (max(0, start) * down // up - reach) // down * down)
    return first, -(-stop * down // up) + reach


def resample_range(wave: np.ndarray, rate: int, start: int, stop: int, target: int = C.SAMPLE_RATE) -> np.ndarray:
    """``resample(wave, rate)[start:stop]`` without resampling the rest of the track.

    Only the input span that feeds the requested outputs is filtered, plus the filter's reach on both sides,
    starting on an input sample that maps exactly onto an output sample (a multiple of ``down``), so the
    result equals the full resample up to float rounding. Cost and memory follow the span, not the track:
    a coprime rate such as 191,999 Hz no longer costs a full-track polyphase pass per request.
    """
    total = resampled_length(wave.shape[0], rate, target)
    start, stop = max(0, start), min(stop, total)
    if stop <= start:
        return np.zeros(0, dtype=np.float32)
    if rate == target:
        return np.ascontiguousarray(wave[start:stop], dtype=np.float32)
    up, down = _ratio(rate, target)
    first, last = resample_span(rate, start, stop, target)
    last = min(wave.shape[0], last)
    out = resample_poly(wave[first:last], up, down)
    offset = first * up // down
    return out[start - offset : stop - offset].astype(np.float32)


def fit_window(wave: np.ndarray, length: int = C.AUDIO_SAMPLES) -> np.ndarray:
    """Centre-crop or zero-pad (at the end) to the fixed analysis window."""
    n = wave.shape[0]
    if n >= length:
        start = (n - length) // 2
        return np.ascontiguousarray(wave[start : start + length], dtype=np.float32)
    out = np.zeros(length, dtype=np.float32)
    out[:n] = wave
    return out


def waveform_for_model(samples: np.ndarray, rate: int) -> np.ndarray:
    """Raw decoded audio -> the audio encoder's input: mono, 16 kHz, the centred fixed window.

    Equals ``fit_window(resample(to_mono(samples), rate))``, but only the window is resampled.
    """
    mono = to_mono(samples)
    n16 = resampled_length(mono.shape[0], rate)
    start = (n16 - C.AUDIO_SAMPLES) // 2 if n16 >= C.AUDIO_SAMPLES else 0
    return fit_window(resample_range(mono, rate, start, start + C.AUDIO_SAMPLES))


_MEAN = np.asarray(C.KINETICS_MEAN, dtype=np.float32).reshape(3, 1, 1, 1)
_INV_STD = (1.0 / np.asarray(C.KINETICS_STD, dtype=np.float32)).reshape(3, 1, 1, 1)


def crop_box(size_hw: tuple[int, int] = C.RESIZE_HW, crop_hw: tuple[int, int] = C.CROP_HW) -> tuple[int, int]:
    """Top-left corner of torchvision's ``center_crop`` (it rounds half to even)."""
    top = int(round((size_hw[0] - crop_hw[0]) / 2.0))
    left = int(round((size_hw[1] - crop_hw[1]) / 2.0))
    return top, left


def frames_for_model(frames: np.ndarray) -> np.ndarray:
    """uint8 [T, 128, 171, 3] -> centre crop 112x112, Kinetics-normalised float32 [3, T, 112, 112]."""
    top, left = crop_box((frames.shape[1], frames.shape[2]))
    ch, cw = C.CROP_HW
    crop = frames[:, top : top + ch, left : left + cw, :]
    x = np.transpose(crop, (3, 0, 1, 2)).astype(np.float32) * (1.0 / 255.0)
    return np.ascontiguousarray((x - _MEAN) * _INV_STD, dtype=np.float32)
