"""Audio decode: WAV files, and the audio track of a video container, as float32 with full scale 1.0.

Audio keeps running counts and one (rate, channels) per track, so no bound ever needs a re-scan of what is
stored; float PCM is refused when not finite and clipped to full scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np

from fusion_emotion.core.probe import (
    AUDIO_FORMATS,
    DEFAULT_LIMITS,
    Cancel,
    MediaError,
    MediaLimits,
    check_audio_format,
    check_audio_stream,
    check_stream_duration,
    decoding,
    open_container,
    poll,
    too_large,
)


@dataclass
class DecodedAudio:
    samples: np.ndarray  # float32 [channels, samples], full scale = 1.0
    sample_rate: int


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

    def _check_format(self, rate: int, channels: int) -> None:
        if self.rate is None:
            check_audio_format(rate, channels, self.input_name, self.limits)
            self.rate, self.channels = rate, channels
        elif (rate, channels) != (self.rate, self.channels):
            raise MediaError(
                self.input_name,
                f"audio format changes mid-stream ({self.rate} Hz x {self.channels} ch, then {rate} Hz x {channels} ch)",
            )

    def _check_totals(self, rate: int) -> None:
        limits = self.limits
        if self.frames >= 1000 and self.samples < self.frames * limits.min_audio_frame_samples:
            raise MediaError(
                self.input_name,
                f"audio frames carry {self.samples / self.frames:.1f} samples on average, under the "
                f"{limits.min_audio_frame_samples}-sample minimum",
            )
        if self.samples > limits.max_duration_s * rate:
            raise too_large(self.input_name, f"audio is over the {limits.max_duration_s:.0f} s limit")
        if self.values > limits.max_audio_values:
            raise too_large(self.input_name, f"decoded audio is over the {limits.max_audio_values}-value limit")

    def add(self, frame: av.AudioFrame) -> None:
        rate = int(frame.sample_rate or 0)
        self._check_format(rate, len(frame.layout.channels))
        chunk = audio_frame_to_float(frame)
        if frame.format.name.startswith(("flt", "dbl")):
            if not np.isfinite(chunk).all():
                raise MediaError(self.input_name, "audio contains non-finite samples (NaN or infinity)")
            chunk = np.clip(chunk, -1.0, 1.0)
        self.samples += chunk.shape[1]
        self.values += chunk.size
        self.frames += 1
        self._check_totals(rate)
        if chunk.shape[1]:
            self.chunks.append(chunk)

    def result(self) -> tuple[np.ndarray | None, int | None]:
        """float32 [channels, samples] and its rate, or (None, None) when the track held no samples."""
        if not self.samples or self.rate is None:
            return None, None
        return np.concatenate(self.chunks, axis=1), self.rate


def decode_audio(
    data: bytes, *, limits: MediaLimits = DEFAULT_LIMITS, input_name: str = "audio", cancel: Cancel | None = None
) -> DecodedAudio:
    """Decode a WAV file (any PCM width, any common rate, mono or multichannel)."""
    with decoding(open_container(data, input_name, AUDIO_FORMATS, limits), input_name) as container:
        if not container.streams.audio:
            raise MediaError(input_name, "WAV has no audio stream")
        stream = container.streams.audio[0]
        check_audio_stream(stream, input_name, limits)
        check_stream_duration(stream, input_name, limits)
        acc = AudioAccumulator(input_name, limits)
        for n, packet in enumerate(container.demux(stream)):
            poll(n, cancel, input_name, limits)
            for frame in packet.decode():
                acc.add(frame)
    samples, rate = acc.result()
    if samples is None or rate is None:
        raise MediaError(input_name, "WAV contains no audio samples (header only?)")
    return DecodedAudio(samples, rate)
