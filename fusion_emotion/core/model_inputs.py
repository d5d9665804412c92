"""Decoded media -> the encoders' inputs: mono 16 kHz audio in the fixed window, cropped normalised frames.

Pure numpy/scipy. Every route (file requests, timelines, live streams, the reference) shapes its model
inputs here, so the same samples and pixels give the same tensors everywhere.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from scipy.signal import resample_poly

from fusion_emotion import contract as C


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
    a coprime rate such as 191,999 Hz does not cost a full-track polyphase pass per request.
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
