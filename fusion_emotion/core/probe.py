"""Opening request bytes under the media limits: the bounds every decode path checks first.

Every request's cost is bounded before and while decoding (docs/reliability.md): only whitelisted demuxers
may probe the bytes (no concat/playlist/image demuxer ever opens a path), probing reads a bounded prefix and
at most ``max_streams`` streams, stream metadata is checked against the limits before any frame is decoded,
and the demux loops poll a packet budget and the request's cancellation.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import av

from fusion_emotion import contract as C
from fusion_emotion.errors import ErrorKind, ServingError

log = logging.getLogger(__name__)

# PyAV's demuxer names for the containers we accept.
VIDEO_FORMATS = {"mov,mp4,m4a,3gp,3g2,mj2": "MP4", "flv": "FLV", "avi": "AVI", "matroska,webm": "MKV/WebM"}
AUDIO_FORMATS = {"wav": "WAV"}
# The only demuxers FFmpeg may even try on request bytes (AVFormatContext.format_whitelist): a text
# playlist (ffconcat, HLS, image sequences) can never make FFmpeg open a path or URL.
_DEMUXER_WHITELIST = "mov,mp4,m4a,3gp,3g2,mj2,flv,avi,matroska,webm,wav"
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


def too_large(input_name: str, reason: str) -> MediaError:
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


def open_container(
    data: bytes, input_name: str, allowed: dict[str, str], limits: MediaLimits
) -> av.container.InputContainer:
    """Open request bytes with bounded probing; refuse what is not one of ``allowed``'s containers."""
    if not data:
        raise MediaError(input_name, "empty input (0 bytes)")
    if len(data) > limits.max_bytes:
        raise too_large(input_name, f"input is {len(data)} bytes, over the {limits.max_bytes}-byte limit")
    options = {
        "format_whitelist": _DEMUXER_WHITELIST,
        "max_streams": str(limits.max_streams),
        "probesize": str(limits.probe_bytes),
    }
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore", options=options)
    except MemoryError:
        # FFmpeg answers ENOMEM when a container declares more streams than max_streams.
        raise too_large(input_name, f"container has more than {limits.max_streams} streams, over the limit") from None
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
        raise too_large(input_name, f"duration {dur:.1f} s is over the {limits.max_duration_s:.0f} s limit")
    return container


def check_stream_duration(stream: av.stream.Stream, input_name: str, limits: MediaLimits) -> None:
    """A stream may declare a longer duration than its container (or the container none at all)."""
    if stream.duration is not None and stream.time_base is not None:
        dur = float(stream.duration * stream.time_base)
        if dur > limits.max_duration_s:
            raise too_large(input_name, f"duration {dur:.1f} s is over the {limits.max_duration_s:.0f} s limit")


def check_audio_format(rate: int, channels: int, input_name: str, limits: MediaLimits) -> None:
    """A track's sample rate and channel count against the limits (from its header, or its first frame)."""
    if rate < limits.min_sample_rate:
        raise MediaError(input_name, f"sample rate {rate} Hz is under the {limits.min_sample_rate} Hz minimum")
    if rate > limits.max_sample_rate:
        raise too_large(input_name, f"sample rate {rate} Hz is over the {limits.max_sample_rate} Hz limit")
    if channels > limits.max_channels:
        raise too_large(input_name, f"{channels} audio channels is over the {limits.max_channels}-channel limit")


def check_audio_stream(stream: av.audio.stream.AudioStream, input_name: str, limits: MediaLimits) -> None:
    if stream.codec_context is None:
        raise MediaError(input_name, "audio stream has an unknown codec")
    rate = stream.codec_context.sample_rate or 0
    if rate <= 0:
        raise MediaError(input_name, "audio stream has no sample rate")
    check_audio_format(rate, stream.codec_context.channels or 0, input_name, limits)


def check_frame_size(width: int, height: int, input_name: str, limits: MediaLimits) -> None:
    if width > limits.max_width or height > limits.max_height:
        raise too_large(
            input_name, f"frame size {width}x{height} is over the {limits.max_width}x{limits.max_height} limit"
        )


def poll(packets: int, cancel: Cancel | None, input_name: str, limits: MediaLimits) -> None:
    """Per-packet bounds: the packet count, and the cancellation callback every few packets."""
    if packets >= limits.max_packets:
        raise too_large(input_name, f"media has more than {limits.max_packets} packets, over the packet limit")
    if cancel is not None and packets % _CANCEL_POLL_PACKETS == 0 and cancel():
        raise MediaError(input_name, "request cancelled while decoding", kind=ErrorKind.CANCELLED)


def decode_failed(input_name: str, exc: BaseException) -> MediaError:
    return MediaError(input_name, f"decoding failed ({type(exc).__name__})")


DECODE_EXCEPTIONS = (av.error.FFmpegError, ValueError, OSError, MemoryError, EOFError)


@contextmanager
def decoding(container: av.container.InputContainer, input_name: str) -> Iterator[av.container.InputContainer]:
    """Decode inside: FFmpeg and numpy failures become a MediaError naming the input; the container is closed."""
    try:
        yield container
    except MediaError:
        raise
    except DECODE_EXCEPTIONS as exc:
        raise decode_failed(input_name, exc) from None
    finally:
        container.close()
