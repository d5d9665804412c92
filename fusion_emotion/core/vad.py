"""Voice activity: which 30 ms frames of a 16 kHz track hold speech, and which windows hold enough of it.

The detector is WebRTC's (PyPI ``webrtcvad-wheels``, MIT; a C library in the wheel, no model file, nothing
downloaded at run time). It is imported on first use so that a deployment that never asks for ``vad`` does
not need it. A window counts as speech when at least ``MIN_SPEECH_S`` of its frames are speech: a window
with a word in it is scored, one with a click or a breath is not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.errors import ErrorKind, ServingError

FRAME_S = 0.03
"""WebRTC VAD frame length (it takes 10, 20 or 30 ms at 16 kHz)."""
FRAME_SAMPLES = int(round(FRAME_S * C.SAMPLE_RATE))
AGGRESSIVENESS = 2
"""0 (keeps most) .. 3 (drops most non-speech); 2 holds up on telephone noise without eating soft speech."""
MIN_SPEECH_S = 0.24
"""Speech a window needs (8 frames) to be scored."""


def _detector(mode: int) -> Any:
    """A fresh detector per track: it keeps state between frames, so threads never share one."""
    try:
        import webrtcvad  # optional: the [models] extra (webrtcvad-wheels)
    except ImportError:
        raise ServingError(
            ErrorKind.INTERNAL, "vad", "needs the webrtcvad-wheels package (pip install fusion-emotion[models])"
        ) from None
    return webrtcvad.Vad(mode)


def speech_frames(samples16k: np.ndarray, mode: int = AGGRESSIVENESS) -> np.ndarray:
    """bool [n // FRAME_SAMPLES]: whether each whole 30 ms frame of a float 16 kHz mono track is speech."""
    wave = np.asarray(samples16k, dtype=np.float32).reshape(-1)
    count = wave.shape[0] // FRAME_SAMPLES
    pcm = (np.clip(wave[: count * FRAME_SAMPLES], -1.0, 1.0) * 32767.0).astype("<i2")
    vad = _detector(mode)
    frames = pcm.reshape(count, FRAME_SAMPLES)
    # All-zero frames are silence by definition; skipping them keeps a gated silent track almost free.
    loud = np.flatnonzero(np.any(frames != 0, axis=1))
    out = np.zeros(count, dtype=bool)
    for i in loud:
        out[i] = vad.is_speech(frames[i].tobytes(), C.SAMPLE_RATE)
    return out


def window_speech(frames: np.ndarray, windows: np.ndarray, min_speech_s: float = MIN_SPEECH_S) -> np.ndarray:
    """bool [W]: windows ``[start, end]`` (seconds) holding at least ``min_speech_s`` of speech frames."""
    cumulative = np.concatenate([[0], np.cumsum(frames, dtype=np.int64)])
    edges = np.clip(np.round(np.asarray(windows, dtype=np.float64) / FRAME_S).astype(np.int64), 0, frames.shape[0])
    speech_s = (cumulative[edges[:, 1]] - cumulative[edges[:, 0]]) * FRAME_S
    return speech_s + 1e-9 >= min_speech_s


def frame_f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Frame-level F1 of detected speech against known speech (both bool, one entry per frame)."""
    p, t = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    n = min(p.shape[0], t.shape[0])
    p, t = p[:n], t[:n]
    tp = int(np.sum(p & t))
    denom = int(np.sum(p)) + int(np.sum(t))
    return 1.0 if denom == 0 else 2.0 * tp / denom
