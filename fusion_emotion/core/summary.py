"""Call summaries and sustained-emotion runs, from a timeline or batch result's segments (pure functions).

A result with ``speakers=channels`` has one summary per speaker; any other timeline has one, under the
name ``mixed``. Only scored segments count (with vad, silent windows are neither speech nor emotion). Times
are weighted by each segment's length, so overlapping windows (hop < window) weigh as much as they cover.

A *run* of an emotion is consecutive scored segments of one speaker whose dominant emotion it is, bridging
pauses of at most ``max_gap_s`` (silence between two angry sentences does not end the anger); its length is
from its first segment's start to its last one's end.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from fusion_emotion import contract as C

NEGATIVE = ("angry", "fearful", "sad")
"""The emotions whose first sustained run a summary reports (where a call turned)."""
DEFAULT_SUSTAIN_S = 8.0
"""A run this long (two default windows) counts as sustained."""
DEFAULT_MAX_GAP_S = 4.0
"""Pauses up to one default window do not break a run."""
DEFAULT_TOP = 3

Segment = Mapping[str, Any]


@dataclass(frozen=True)
class Run:
    """A stretch of one speaker's call dominated by one emotion."""

    emotion: str
    start: float
    end: float
    peak: float  # the highest probability of ``emotion`` in the run

    @property
    def length_s(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Moment:
    start: float
    end: float
    p: float


@dataclass(frozen=True)
class SpeakerSummary:
    """One speaker's call in a few numbers (JSON through :func:`summary_json`)."""

    speech_s: float
    share: dict[str, float]  # emotion -> fraction of the scored time it dominates
    mean: dict[str, float]  # emotion -> time-weighted mean probability
    top_moments: dict[str, list[Moment]] = field(default_factory=dict)
    first_negative_run: Run | None = None


def scored(segments: Iterable[Segment]) -> list[Segment]:
    """The segments that carry probabilities (silent vad windows, ``"speech": false``, do not), in time order."""
    return sorted((s for s in segments if s.get("speech") is not False), key=lambda s: s["start"])


def dominant(seg: Segment) -> str:
    """A scored segment's dominant emotion (its own field, else its highest probability)."""
    return str(seg.get("dominant_emotion") or max(C.LABELS, key=lambda e: float(seg[e])))


def by_speaker(result: Mapping[str, Any], segments: Sequence[Segment] | None = None) -> dict[str, list[Segment]]:
    """A result's segments per speaker (``mixed`` when the result has no speakers); ``segments`` overrides
    the result's own (a batch record keeps them beside the result)."""
    segs = result.get("segments", []) if segments is None else segments
    names = list(result.get("speakers", {})) or [C.SPEAKERS_MIXED]
    out: dict[str, list[Segment]] = {name: [] for name in names}
    for seg in segs:
        out.setdefault(seg.get("speaker", C.SPEAKERS_MIXED), []).append(seg)
    return out


def runs(
    segments: Iterable[Segment], emotion: str, *, min_p: float | None = None, max_gap_s: float = DEFAULT_MAX_GAP_S
) -> list[Run]:
    """Every run of ``emotion`` (dominant, and at least ``min_p`` when given), in time order."""
    if emotion not in C.LABELS:
        raise ValueError(f"unknown emotion {emotion!r}; one of {', '.join(C.LABELS)}")
    out: list[Run] = []
    current: Run | None = None
    for seg in scored(segments):
        hit = dominant(seg) == emotion and (min_p is None or seg[emotion] >= min_p)
        if current is not None and (not hit or seg["start"] > current.end + max_gap_s):
            out.append(current)
            current = None
        if hit:
            p = float(seg[emotion])
            if current is None:
                current = Run(emotion, float(seg["start"]), float(seg["end"]), p)
            else:
                current = Run(emotion, current.start, max(current.end, float(seg["end"])), max(current.peak, p))
    if current is not None:
        out.append(current)
    return out


def first_sustained(
    segments: Sequence[Segment], emotions: Sequence[str] = NEGATIVE, sustain_s: float = DEFAULT_SUSTAIN_S
) -> Run | None:
    """The earliest run of any of ``emotions`` lasting at least ``sustain_s``."""
    found = [r for e in emotions for r in runs(segments, e) if r.length_s + 1e-9 >= sustain_s]
    return min(found, key=lambda r: (r.start, r.emotion)) if found else None


def summarize(
    segments: Sequence[Segment], top: int = DEFAULT_TOP, sustain_s: float = DEFAULT_SUSTAIN_S
) -> SpeakerSummary:
    """One speaker's summary from its segments."""
    segs = scored(segments)
    weights = [max(float(s["end"]) - float(s["start"]), 0.0) for s in segs]
    total = sum(weights)
    share = {e: 0.0 for e in C.LABELS}
    mean = {e: 0.0 for e in C.LABELS}
    for seg, w in zip(segs, weights, strict=True):
        share[dominant(seg)] += w / total if total else 0.0
        for e in C.LABELS:
            mean[e] += float(seg[e]) * w / total if total else 0.0
    moments = {
        e: [Moment(float(s["start"]), float(s["end"]), float(s[e])) for s in sorted(segs, key=lambda s: -s[e])[:top]]
        for e in C.LABELS
    }
    return SpeakerSummary(_speech_s(segs), share, mean, moments, first_sustained(segs, sustain_s=sustain_s))


def _speech_s(segs: Sequence[Segment]) -> float:
    """Length of the union of the scored spans (overlapping windows count once)."""
    total, end = 0.0, float("-inf")
    for s in segs:  # in start order
        a, b = float(s["start"]), float(s["end"])
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def call_summary(
    result: Mapping[str, Any], segments: Sequence[Segment] | None = None, **kwargs: Any
) -> dict[str, SpeakerSummary]:
    """A summary per speaker of a timeline or batch result."""
    return {name: summarize(segs, **kwargs) for name, segs in by_speaker(result, segments).items()}


def summary_json(summary: Mapping[str, SpeakerSummary]) -> dict[str, Any]:
    """JSON-ready (rounded to 4 decimals: a summary is read by people)."""

    def rounded(value: Any) -> Any:
        if isinstance(value, float):
            return round(value, 4)
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rounded(v) for v in value]
        return value

    return {name: rounded(asdict(s)) for name, s in summary.items()}
