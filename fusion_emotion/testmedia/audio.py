"""Deterministic test audio: real synthetic speech (espeak-ng), tones, silence, and WAV files of every flavour.

The tests must exercise the real decoders on every WAV flavour the service accepts without shipping data
sets or touching the network; the same call always gives the same samples.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from typing import Literal

import numpy as np
from scipy.signal import resample_poly

SampleFormat = Literal["s16", "s24", "s32", "f32", "u8"]

DEFAULT_TEXT = "Kids are talking by the door. Dogs are sitting by the door."

# RAVDESS / CREMA-D audio sample rates.
RAVDESS_AUDIO_RATE = 48_000
CREMA_AUDIO_RATE = 44_100

_WAVE_FORMAT_PCM = 1
_WAVE_FORMAT_IEEE_FLOAT = 3


def speech(text: str = DEFAULT_TEXT, rate: int = 22050, voice: str = "en") -> np.ndarray:
    """Real synthetic speech (espeak-ng) as float32 mono at ``rate`` Hz.

    Speech, unlike tones, has the pauses, onsets and level changes that the
    silence and clipping flags are meant to see.
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install -y espeak-ng); it is needed for synth.speech()")
    proc = subprocess.run([exe, "-v", voice, "--stdout", text], capture_output=True, check=False, timeout=60)
    if proc.returncode != 0 or len(proc.stdout) < 44:
        raise RuntimeError(f"espeak-ng failed (rc={proc.returncode}): {proc.stderr.decode(errors='replace')[:200]}")
    wave, native = _parse_stream_wav(proc.stdout)
    if native != rate:
        g = np.gcd(native, rate)
        wave = resample_poly(wave, rate // g, native // g).astype(np.float32)
    return wave.astype(np.float32, copy=False)


def _parse_stream_wav(data: bytes) -> tuple[np.ndarray, int]:
    """16-bit PCM WAV as written to a pipe (espeak-ng leaves the size fields at 0x7ffff000)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise RuntimeError("espeak-ng did not write a WAV file")
    pos = 12
    rate = channels = bits = 0
    while pos + 8 <= len(data):
        cid = data[pos : pos + 4]
        size = struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if cid == b"fmt ":
            _, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
        elif cid == b"data":
            if bits != 16:
                raise RuntimeError(f"espeak-ng wrote {bits}-bit audio; expected 16")
            raw = data[body:]
            raw = raw[: len(raw) - len(raw) % (2 * channels)]
            pcm = np.frombuffer(raw, dtype="<i2").reshape(-1, channels).astype(np.float32) / 32768.0
            return pcm.mean(axis=1).astype(np.float32), int(rate)
        pos = body + size + (size & 1)
    raise RuntimeError("espeak-ng output has no data chunk")


def silence(seconds: float, rate: int) -> np.ndarray:
    """Digital silence (exact zeros), float32 mono."""
    return np.zeros(int(round(seconds * rate)), dtype=np.float32)


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    """A sine, float32 mono: a signal whose frequency and level are known exactly."""
    t = np.arange(int(round(seconds * rate)), dtype=np.float64) / rate
    return (amplitude * np.sin(2.0 * np.pi * freq * t)).astype(np.float32)


def _as_frames_by_channels(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError("samples must be [n] or [n, channels]")
    return x


def wav(samples: np.ndarray, rate: int, sample_format: SampleFormat = "s16") -> bytes:
    """A WAV file: mono ``[n]`` or ``[n, channels]`` float samples, full scale 1.0.

    Written by hand (not the ``wave`` module) so that 24-bit and IEEE-float files
    can be made too; float files carry the ``fact`` chunk the spec asks for.
    Integer formats clip to full scale, as a recorder would.
    """
    x = _as_frames_by_channels(samples)
    n, channels = x.shape
    if sample_format == "f32":
        payload = x.astype("<f4").tobytes()
        width, tag = 4, _WAVE_FORMAT_IEEE_FLOAT
    elif sample_format == "u8":
        payload = np.clip(np.round(x * 128.0 + 128.0), 0, 255).astype(np.uint8).tobytes()
        width, tag = 1, _WAVE_FORMAT_PCM
    elif sample_format == "s16":
        payload = np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2").tobytes()
        width, tag = 2, _WAVE_FORMAT_PCM
    elif sample_format == "s32":
        payload = np.clip(np.round(x * 2147483648.0), -2147483648, 2147483647).astype("<i4").tobytes()
        width, tag = 4, _WAVE_FORMAT_PCM
    elif sample_format == "s24":
        v = np.clip(np.round(x * 8388608.0), -8388608, 8388607).astype("<i4")
        payload = v.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
        width, tag = 3, _WAVE_FORMAT_PCM
    else:
        raise ValueError(f"unknown sample format {sample_format!r}")
    return _wav_bytes(payload, rate, channels, width, tag, n)


def _wav_bytes(payload: bytes, rate: int, channels: int, width: int, tag: int, nframes: int) -> bytes:
    block = channels * width
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, width * 8)
    chunks = [b"fmt ", struct.pack("<I", len(fmt)), fmt]
    if tag == _WAVE_FORMAT_IEEE_FLOAT:
        chunks += [b"fact", struct.pack("<II", 4, nframes)]
    chunks += [b"data", struct.pack("<I", len(payload)), payload]
    if len(payload) & 1:
        chunks.append(b"\0")
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def header_only_wav(rate: int = 16_000) -> bytes:
    """A valid 44-byte 16-bit mono WAV header announcing zero samples."""
    return _wav_bytes(b"", rate, 1, 2, _WAVE_FORMAT_PCM, 0)
