"""The product's flat JSON results (a clip, a timeline), shared by every client route and the front end."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fusion_emotion import contract as C


def qa_dict(qa_flags: np.ndarray | None) -> dict[str, float | None]:
    """QA flags in contract order -> dict; NaN (not computed / modality absent) -> None."""
    if qa_flags is None:
        return {name: None for name in C.QA_FLAG_NAMES}
    out: dict[str, float | None] = {}
    for name, value in zip(C.QA_FLAG_NAMES, np.asarray(qa_flags, dtype=np.float64).reshape(-1)):
        out[name] = None if math.isnan(value) else float(value)
    return out


def result_dict(probabilities: np.ndarray, qa_flags: np.ndarray | None = None) -> dict[str, Any]:
    """``{"angry": p, …, "sad": p, "qa_flags": {…}, "dominant_emotion": label}``."""
    probs = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if probs.shape != (C.NUM_CLASSES,):
        raise ValueError(f"expected {C.NUM_CLASSES} probabilities, got shape {probs.shape}")
    out: dict[str, Any] = {label: float(p) for label, p in zip(C.LABELS, probs)}
    out["qa_flags"] = qa_dict(qa_flags)
    out["dominant_emotion"] = C.LABELS[int(np.argmax(probs))]
    return out


SEGMENT_COLUMNS = 2 + C.NUM_CLASSES
"""Columns of a timeline's ``segments`` output: start, end, then the six probabilities."""


def _segment(row: np.ndarray, vad: bool) -> dict[str, Any]:
    """One window: its span, then its probabilities, or ``"speech": false`` alone when vad found none."""
    out: dict[str, Any] = {"start": round(float(row[0]), 6), "end": round(float(row[1]), 6)}
    probs = row[2:]
    if vad:
        out["speech"] = not bool(np.isnan(probs).any())
        if not out["speech"]:
            return out
    out.update({label: float(p) for label, p in zip(C.LABELS, probs, strict=True)})
    out["dominant_emotion"] = C.LABELS[int(np.argmax(probs))]
    return out


def timeline_result(
    segments: np.ndarray, probabilities: np.ndarray, qa_flags: np.ndarray | None, *, vad: bool = False
) -> dict[str, Any]:
    """The product's JSON (:func:`result_dict`) plus ``"segments"`` in time order.

    With ``vad``, every segment carries ``"speech"``; a silent one (NaN probabilities on the wire) carries no
    probabilities.
    """
    out = result_dict(probabilities, qa_flags)
    rows = np.asarray(segments, dtype=np.float64).reshape(-1, SEGMENT_COLUMNS)
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    out["segments"] = [_segment(r, vad) for r in rows]
    return out


def speakers_result(per_speaker: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-speaker timelines (``speakers=channels``) -> one result.

    ``"speakers"``: each speaker's clip-level result (its channel analysed alone); ``"segments"``: every
    speaker's segments, each with ``"speaker"``, in time order (speakers in the order given at equal times).
    """
    speakers: dict[str, Any] = {}
    segments: list[dict[str, Any]] = []
    for name, result in per_speaker.items():
        speakers[name] = {k: v for k, v in result.items() if k != "segments"}
        segments.extend({"speaker": name, **seg} for seg in result["segments"])
    segments.sort(key=lambda seg: seg["start"])  # stable: speaker order kept at equal starts
    return {"speakers": speakers, "segments": segments}
