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


def timeline_result(segments: np.ndarray, probabilities: np.ndarray, qa_flags: np.ndarray | None) -> dict[str, Any]:
    """The product's JSON (:func:`result_dict`) plus ``"segments"`` in time order."""
    out = result_dict(probabilities, qa_flags)
    rows = np.asarray(segments, dtype=np.float64).reshape(-1, SEGMENT_COLUMNS)
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    out["segments"] = [
        {
            "start": round(float(r[0]), 6),
            "end": round(float(r[1]), 6),
            **{label: float(p) for label, p in zip(C.LABELS, r[2:], strict=True)},
            "dominant_emotion": C.LABELS[int(np.argmax(r[2:]))],
        }
        for r in rows
    ]
    return out
