"""What the playground says about each QA flag: a one-line meaning and when the result is unreliable.

The warning thresholds follow ``overall_confidence`` (docs/quality-flags.md, ``core.qa``): a media flag warns
where it costs its modality at least half of its quality weight (10 % clipping makes audio worthless, so 5 %
halves it; silence or blur above 0.75 halve theirs; a face confidence under 0.5 is no clear face in most
examined frames); consistency warns below 0.5, overall confidence below 0.3 (the docs' "review" cut-off).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class FlagGuide:
    """One flag: what it measures, and the side of a threshold where the page warns."""

    name: str
    meaning: str
    warning: str
    warn_above: float | None = None
    warn_below: float | None = None

    def unreliable(self, value: float | None) -> bool:
        """The page's rule (playground.js applies the same fields): null never warns."""
        if value is None:
            return False
        if self.warn_above is not None and value > self.warn_above:
            return True
        return self.warn_below is not None and value < self.warn_below


FLAG_GUIDES: tuple[FlagGuide, ...] = (
    FlagGuide(
        "audio_clipping_ratio",
        "Share of audio samples at full scale: 0 is clean, above 0.001 the distortion is audible.",
        "Heavily clipped audio: the audio part of the result is unreliable.",
        warn_above=0.05,
    ),
    FlagGuide(
        "audio_silence_ratio",
        "Share of 25 ms audio frames quieter than -40 dBFS: 0 is sound throughout, 1 is silence.",
        "Mostly silence: too little speech to judge from the audio.",
        warn_above=0.75,
    ),
    FlagGuide(
        "video_face_detection_confidence",
        "How clearly a frontal face is seen: 0 is none found, 0.8 and more a clear face.",
        "No clear frontal face: the video part of the result is unreliable.",
        warn_below=0.5,
    ),
    FlagGuide(
        "video_blur_level",
        "Blur of the video (or featureless content): 0 is sharp, 0.5 the usual blurry cut-off.",
        "Heavily blurred or featureless video: the video part of the result is unreliable.",
        warn_above=0.75,
    ),
    FlagGuide(
        "modality_consistency_score",
        "Agreement of the video-only and audio-only predictions: 1 identical, 0 disjoint.",
        "Video and audio disagree: treat the fused result with care.",
        warn_below=0.5,
    ),
    FlagGuide(
        "overall_confidence",
        "Top probability tempered by media quality and agreement: a ranking score, not a probability.",
        "Low overall confidence: review this result before relying on it.",
        warn_below=0.3,
    ),
)
"""In ``contract.QA_FLAG_NAMES`` order (tests/test_playground.py checks it)."""

NOT_AVAILABLE = "not available: the modality it looks at was not sent, or the video has no audio track"


def guide_json() -> list[dict[str, Any]]:
    """The guide as the page reads it (config.json)."""
    return [asdict(g) for g in FLAG_GUIDES]
