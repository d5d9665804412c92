"""Decode container bytes into model-ready numpy arrays.

Pure functions over bytes and numpy arrays (PyAV for demuxing/decoding, scipy
for resampling): the Triton ``preprocess`` model and the in-process reference
pipeline both call these, so their numbers agree by construction.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from scipy.signal import resample_poly

from fusion_emotion import contract as C

log = logging.getLogger(__name__)

# PyAV's demuxer names for the containers we accept.
VIDEO_FORMATS = {"mov,mp4,m4a,3gp,3g2,mj2": "MP4", "flv": "FLV", "avi": "AVI"}
AUDIO_FORMATS = {"wav": "WAV"}


class MediaError(ValueError):
    """A request's media cannot be used; the message names the input and the reason."""

    def __init__(self, input_name: str, reason: str, *, too_large: bool = False) -> None:
        super().__init__(f"{input_name}: {reason}")
        self.input_name = input_name
        self.reason = reason
        self.too_large = too_large


@dataclass(frozen=True)
class MediaLimits:
    """Bounds checked from container metadata before any heavy decoding, then while decoding.

    The one place the media limits and their defaults live (docs/reliability.md);
    the Triton ``preprocess`` model overrides them from its config parameters
    (``from_params``). Every refusal on these grounds is a ``MediaError`` with
    ``too_large=True`` whose reason reads "... over the ... limit".
    """

    max_bytes: int = C.MAX_INPUT_BYTES
    max_duration_s: float = 600.0
    max_width: int = 3840
    max_height: int = 2160
    max_sample_rate: int = 192_000
    max_channels: int = 8
    # Decoded video frames per request: max_duration_s at this rate (bounds decode time
    # when timestamps never reach the sampling targets or the duration is unknown).
    max_frame_rate: float = 120.0
    # Resized frames held at once when the duration is unknown (~64 KiB each); past it
    # every other frame is dropped, so sampling stays uniform over time.
    max_buffered_frames: int = 512
    # Decoded audio values (channels x samples) per input: 600 s of 48 kHz stereo,
    # 220 MiB as float32. Compressed silence cannot inflate past it.
    max_audio_values: int = 600 * 48_000 * 2

    @property
    def max_frames(self) -> int:
        return int(self.max_duration_s * self.max_frame_rate)

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
    """Sampled frames (uint8 [T, H, W, 3] at RESIZE_HW) and the audio track if any."""

    frames: np.ndarray
    audio: np.ndarray | None  # float32 [channels, samples] at ``sample_rate``
    sample_rate: int | None
    duration_s: float


@dataclass
class DecodedAudio:
    samples: np.ndarray  # float32 [channels, samples], full scale = 1.0
    sample_rate: int


def _open(data: bytes, input_name: str, allowed: dict[str, str], limits: MediaLimits) -> av.container.InputContainer:
    if not data:
        raise MediaError(input_name, "empty input (0 bytes)")
    if len(data) > limits.max_bytes:
        raise MediaError(
            input_name, f"input is {len(data)} bytes, over the {limits.max_bytes}-byte limit", too_large=True
        )
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
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
        raise MediaError(
            input_name, f"duration {dur:.1f} s is over the {limits.max_duration_s:.0f} s limit", too_large=True
        )
    return container


def _check_stream_duration(stream: av.stream.Stream, input_name: str, limits: MediaLimits) -> None:
    """A stream may declare a longer duration than its container (or the container none at all)."""
    if stream.duration is not None and stream.time_base is not None:
        dur = float(stream.duration * stream.time_base)
        if dur > limits.max_duration_s:
            raise MediaError(
                input_name, f"duration {dur:.1f} s is over the {limits.max_duration_s:.0f} s limit", too_large=True
            )


def _duration_s(container: av.container.InputContainer, stream: av.stream.Stream | None) -> float | None:
    if stream is not None and stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _check_audio_stream(stream: av.audio.stream.AudioStream, input_name: str, limits: MediaLimits) -> None:
    if stream.codec_context is None:
        raise MediaError(input_name, "audio stream has an unknown codec")
    rate = stream.codec_context.sample_rate or 0
    channels = stream.codec_context.channels or 0
    if rate <= 0:
        raise MediaError(input_name, "audio stream has no sample rate")
    if rate > limits.max_sample_rate:
        raise MediaError(
            input_name, f"sample rate {rate} Hz is over the {limits.max_sample_rate} Hz limit", too_large=True
        )
    if channels > limits.max_channels:
        raise MediaError(
            input_name, f"{channels} audio channels is over the {limits.max_channels}-channel limit", too_large=True
        )


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


def _float_audio(frame: av.AudioFrame, input_name: str) -> np.ndarray:
    """``audio_frame_to_float`` that refuses NaN/infinity (float PCM with corrupted bytes)."""
    out = audio_frame_to_float(frame)
    if out.dtype.kind == "f" and frame.format.name.startswith(("flt", "dbl")) and not np.isfinite(out).all():
        raise MediaError(input_name, "audio contains non-finite samples (NaN or infinity)")
    return out


def _frame_time(frame: av.VideoFrame, index: int, fps: float) -> float:
    if frame.pts is not None and frame.time_base is not None:
        return float(frame.pts * frame.time_base)
    return index / fps if fps > 0 else float(index)


def sample_times(duration_s: float, num: int = C.NUM_FRAMES, start_s: float = 0.0) -> np.ndarray:
    """Centres of ``num`` equal slices of the clip: uniform sampling over time."""
    return start_s + (np.arange(num, dtype=np.float64) + 0.5) * (duration_s / num)


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


def decode_video(
    data: bytes,
    *,
    want_audio: bool = True,
    num_frames: int = C.NUM_FRAMES,
    limits: MediaLimits = DEFAULT_LIMITS,
    input_name: str = "video",
) -> DecodedVideo:
    """Sample ``num_frames`` frames uniformly over time and, if asked, the audio track.

    Only what is needed is decoded: non-reference frames are skipped by the
    decoder, only the sampled frames are converted to RGB (directly at the model's
    resize resolution), and video packets are no longer decoded once every sample
    is taken.
    """
    container = _open(data, input_name, VIDEO_FORMATS, limits)
    try:
        if not container.streams.video:
            raise MediaError(input_name, "container has no video stream")
        vstream = container.streams.video[0]
        cc = vstream.codec_context
        if cc is None:
            raise MediaError(input_name, "video stream has an unknown codec")
        if (cc.width or 0) > limits.max_width or (cc.height or 0) > limits.max_height:
            raise MediaError(
                input_name,
                f"frame size {cc.width}x{cc.height} is over the {limits.max_width}x{limits.max_height} limit",
                too_large=True,
            )
        _check_stream_duration(vstream, input_name, limits)
        cc.skip_frame = "NONREF"
        astream = container.streams.audio[0] if (want_audio and container.streams.audio) else None
        if astream is not None:
            _check_audio_stream(astream, input_name, limits)
            _check_stream_duration(astream, input_name, limits)
        duration = _duration_s(container, vstream)
        fps = float(vstream.average_rate) if vstream.average_rate else 0.0
        start = float(vstream.start_time * vstream.time_base) if vstream.start_time is not None else 0.0
        targets = sample_times(duration, num_frames, start) if duration and duration > 0 else None

        picked: list[np.ndarray] = []
        all_frames: list[np.ndarray] = []  # only used when the duration is unknown: every `stride`-th frame
        stride = 1
        audio_chunks: list[np.ndarray] = []
        audio_values = 0
        sample_rate: int | None = None
        max_frames = limits.max_frames
        index = 0
        video_done = False
        streams = [vstream] + ([astream] if astream is not None else [])
        for packet in container.demux(*streams):
            if packet.stream is vstream:
                if video_done:
                    if astream is None:
                        break
                    continue
                for frame in packet.decode():
                    t = _frame_time(frame, index, fps)
                    index += 1
                    if index > max_frames:
                        raise MediaError(
                            input_name,
                            f"video has more than {max_frames} frames, over the decoded-frame limit",
                            too_large=True,
                        )
                    if targets is None:
                        if (index - 1) % stride == 0:
                            all_frames.append(_resize(frame))
                            if len(all_frames) >= limits.max_buffered_frames:
                                all_frames = all_frames[::2]  # bounded memory, still uniform over time
                                stride *= 2
                        continue
                    if len(picked) < num_frames and t + 1e-6 >= targets[len(picked)]:
                        rgb = _resize(frame)
                        while len(picked) < num_frames and t + 1e-6 >= targets[len(picked)]:
                            picked.append(rgb)
                    if len(picked) == num_frames:
                        video_done = True
            else:
                for frame in packet.decode():
                    chunk = _float_audio(frame, input_name)
                    audio_chunks.append(chunk)
                    audio_values += chunk.size
                    sample_rate = frame.sample_rate
                    if sum(c.shape[1] for c in audio_chunks) > limits.max_duration_s * (sample_rate or 1):
                        raise MediaError(
                            input_name,
                            f"audio track is over the {limits.max_duration_s:.0f} s limit",
                            too_large=True,
                        )
                    if audio_values > limits.max_audio_values:
                        raise MediaError(
                            input_name,
                            f"decoded audio is over the {limits.max_audio_values}-value limit",
                            too_large=True,
                        )
        if targets is None:
            if not all_frames:
                raise MediaError(input_name, "no decodable video frames")
            picked = [all_frames[i] for i in uniform_indices(len(all_frames), num_frames)]
            duration = index / fps if fps > 0 else float(index)
        else:
            if not picked and index == 0:
                raise MediaError(input_name, "no decodable video frames")
            if not picked:
                raise MediaError(input_name, "no video frames inside the declared duration")
            while len(picked) < num_frames:  # stream ended early: hold the last frame
                picked.append(picked[-1])
    except MediaError:
        raise
    except (av.error.FFmpegError, ValueError, OSError, MemoryError) as exc:
        raise MediaError(input_name, f"decoding failed ({type(exc).__name__})") from None
    finally:
        container.close()

    audio = np.concatenate(audio_chunks, axis=1) if audio_chunks else None
    if audio is not None and audio.shape[1] == 0:
        audio = None
    if audio is None:
        sample_rate = None
    return DecodedVideo(np.stack(picked), audio, sample_rate, float(duration))


def decode_audio(data: bytes, *, limits: MediaLimits = DEFAULT_LIMITS, input_name: str = "audio") -> DecodedAudio:
    """Decode a WAV file (any PCM width, any common rate, mono or multichannel)."""
    container = _open(data, input_name, AUDIO_FORMATS, limits)
    try:
        if not container.streams.audio:
            raise MediaError(input_name, "WAV has no audio stream")
        stream = container.streams.audio[0]
        _check_audio_stream(stream, input_name, limits)
        _check_stream_duration(stream, input_name, limits)
        rate = stream.codec_context.sample_rate
        chunks = []
        total = 0
        values = 0
        for frame in container.decode(stream):
            chunk = _float_audio(frame, input_name)
            chunks.append(chunk)
            total += chunk.shape[1]
            values += chunk.size
            if total > limits.max_duration_s * rate:
                raise MediaError(input_name, f"audio is over the {limits.max_duration_s:.0f} s limit", too_large=True)
            if values > limits.max_audio_values:
                raise MediaError(
                    input_name, f"decoded audio is over the {limits.max_audio_values}-value limit", too_large=True
                )
    except MediaError:
        raise
    except (av.error.FFmpegError, ValueError, OSError, MemoryError) as exc:
        raise MediaError(input_name, f"decoding failed ({type(exc).__name__})") from None
    finally:
        container.close()
    if total == 0:
        raise MediaError(input_name, "WAV contains no audio samples (header only?)")
    return DecodedAudio(np.concatenate(chunks, axis=1), int(rate))


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average channels: float32 [channels, n] -> [n]."""
    return samples.mean(axis=0, dtype=np.float32) if samples.shape[0] > 1 else samples[0].astype(np.float32, copy=False)


def resample(wave: np.ndarray, rate: int, target: int = C.SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (anti-aliased) to ``target`` Hz."""
    if rate == target:
        return wave.astype(np.float32, copy=False)
    g = math.gcd(int(rate), int(target))
    frac = Fraction(target // g, rate // g)
    return resample_poly(wave, frac.numerator, frac.denominator).astype(np.float32)


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
    """Raw decoded audio -> the audio encoder's input: mono, 16 kHz, fixed window."""
    return fit_window(resample(to_mono(samples), rate))


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
