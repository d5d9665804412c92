"""A generated two-speaker call: agent and customer on the two channels of one recording, with pauses.

Each turn is real synthetic speech (espeak-ng, a different voice per channel) placed at a known time; the
other channel holds line noise meanwhile. The known speech spans (each utterance trimmed to its first and
last audible sample; the short gaps between its words count as speech, as a human annotator marks them)
are the ground truth for the VAD's frame-level F1 (``perf/call_vad.py``) and for which windows the live
tests expect to be scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion_emotion.testmedia.audio import speech

VOICES = ("en", "en+f3")
"""espeak-ng voices of channel 0 (agent) and channel 1 (customer)."""
NOISE_LEVEL = 0.002
"""Line noise on both channels (about -54 dBFS RMS): silence in a real call is never digital zero."""
AUDIBLE = 1e-3

DEFAULT_TURNS: tuple[tuple[int, float, str], ...] = (
    (0, 0.5, "Thank you for calling. How can I help you today?"),
    (1, 4.6, "My order never arrived and nobody answers my emails."),
    (0, 9.0, "I am sorry to hear that."),
)
"""(channel, start in s, text): three turns with pauses between them, then a silent tail."""


LINES = (
    "Thank you for calling. How can I help you today?",
    "My order never arrived and nobody answers my emails.",
    "I am sorry to hear that. Can you give me the order number?",
    "It is four five six, seven eight nine. I have waited three weeks.",
    "Let me check that for you. One moment please.",
    "This is the third time I am calling about the same problem.",
    "I can see the parcel was returned to the warehouse.",
    "Then send it again, today, and refund the shipping.",
)
"""What the agent (even lines) and the customer (odd lines) say in :func:`scripted_turns`."""


def scripted_turns(duration_s: float, seed: int = 0) -> tuple[tuple[int, float, str], ...]:
    """Alternating turns over ``duration_s`` with pauses of 1-4 s between them (about 40 % silence per
    channel's own turns, as in a real call); each turn budgets 4 s, the longest line's length."""
    rng = np.random.default_rng(seed)
    turns: list[tuple[int, float, str]] = []
    t, i = 0.5, 0
    while t + 4.0 < duration_s:
        turns.append((i % 2, round(t, 2), LINES[i % len(LINES)]))
        t += 4.0 + float(rng.uniform(1.0, 4.0))
        i += 1
    return tuple(turns)


@dataclass(frozen=True)
class Call:
    """Float samples ``[n, 2]`` at ``rate`` and each channel's known speech spans in seconds."""

    samples: np.ndarray
    rate: int
    speech: tuple[tuple[tuple[float, float], ...], ...]

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.rate

    def truth_frames(self, channel: int, frame_s: float) -> np.ndarray:
        """bool per ``frame_s`` frame: whether the frame's centre lies inside a known speech span."""
        centres = (np.arange(int(self.duration_s / frame_s)) + 0.5) * frame_s
        out = np.zeros(centres.shape[0], dtype=bool)
        for s, e in self.speech[channel]:
            out |= (centres >= s) & (centres < e)
        return out


def _trimmed(wave: np.ndarray) -> tuple[np.ndarray, int]:
    """The utterance without espeak's leading/trailing silence, and how many samples were cut in front."""
    loud = np.flatnonzero(np.abs(wave) > AUDIBLE)
    return (wave[loud[0] : loud[-1] + 1], int(loud[0])) if loud.size else (wave[:0], 0)


def two_speaker_call(
    turns: tuple[tuple[int, float, str], ...] = DEFAULT_TURNS,
    duration_s: float = 16.0,
    rate: int = 16_000,
    seed: int = 0,
) -> Call:
    """The stereo recording of ``turns`` (each a (channel, start, text)), ``duration_s`` long."""
    n = int(round(duration_s * rate))
    rng = np.random.default_rng(seed)
    samples = (rng.standard_normal((n, 2)) * NOISE_LEVEL).astype(np.float32)
    spans: list[list[tuple[float, float]]] = [[], []]
    for channel, start, text in turns:
        wave, _ = _trimmed(0.6 * speech(text, rate=rate, voice=VOICES[channel]))
        a = int(round(start * rate))
        b = min(n, a + wave.shape[0])
        samples[a:b, channel] += wave[: b - a]
        spans[channel].append((a / rate, b / rate))
    return Call(samples, rate, tuple(tuple(s) for s in spans))
