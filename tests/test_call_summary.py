"""Call summaries and sustained runs (pure): shares, means, top moments, the first negative run, and
``fusion-emotion search --for-s`` over a results file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fusion_emotion import contract as C
from fusion_emotion.core.summary import call_summary, first_sustained, runs, summarize, summary_json


def _seg(start: float, end: float, emotion: str | None, p: float = 0.7, speaker: str | None = None) -> dict:
    """A segment dominated by ``emotion`` with probability ``p`` (the rest spread evenly); None: silent."""
    out: dict = {"start": start, "end": end} if speaker is None else {"speaker": speaker, "start": start, "end": end}
    if emotion is None:
        return {**out, "speech": False}
    rest = (1 - p) / (C.NUM_CLASSES - 1)
    return {**out, **{e: (p if e == emotion else rest) for e in C.LABELS}, "dominant_emotion": emotion}


CUSTOMER = [
    _seg(0, 4, "neutral"),
    _seg(4, 8, None),
    _seg(8, 12, "angry", 0.6),
    _seg(12, 16, None),  # a pause inside the anger
    _seg(16, 20, "angry", 0.9),
    _seg(20, 24, "angry", 0.8),
    _seg(24, 28, "sad"),
]


def test_runs_bridge_short_pauses_and_respect_min_p() -> None:
    (run,) = runs(CUSTOMER, "angry")
    assert (run.start, run.end, run.peak, run.length_s) == (8.0, 24.0, 0.9, 16.0)
    assert [(r.start, r.end) for r in runs(CUSTOMER, "angry", max_gap_s=1.0)] == [(8.0, 12.0), (16.0, 24.0)]
    assert [(r.start, r.end) for r in runs(CUSTOMER, "angry", min_p=0.75)] == [(16.0, 24.0)]
    assert runs(CUSTOMER, "happy") == []
    with pytest.raises(ValueError, match="unknown emotion"):
        runs(CUSTOMER, "bored")


def test_summary_shares_means_moments_and_first_negative_run() -> None:
    s = summarize(CUSTOMER, top=2)
    assert s.speech_s == 20.0  # five scored windows; the silent ones are not speech
    assert s.share["angry"] == pytest.approx(0.6) and s.share["neutral"] == pytest.approx(0.2)
    assert sum(s.share.values()) == pytest.approx(1.0) and sum(s.mean.values()) == pytest.approx(1.0)
    assert s.mean["angry"] == pytest.approx(
        (0.6 + 0.9 + 0.8 + 0.06 * 2) / 5
    )  # 0.06: angry in the neutral and sad windows
    assert [(m.start, m.p) for m in s.top_moments["angry"]] == [(16.0, 0.9), (20.0, 0.8)]
    assert s.first_negative_run is not None and (s.first_negative_run.emotion, s.first_negative_run.start) == (
        "angry",
        8.0,
    )
    assert first_sustained(CUSTOMER, sustain_s=20.0) is None
    overlapping = [_seg(0, 4, "sad"), _seg(2, 6, "sad")]
    assert summarize(overlapping).speech_s == 6.0  # the union, not the sum
    empty = summarize([_seg(0, 4, None)])
    assert empty.speech_s == 0.0 and sum(empty.share.values()) == 0.0 and empty.first_negative_run is None


def test_call_summary_per_speaker_and_json() -> None:
    result = {
        "speakers": {"agent": {}, "customer": {}},
        "segments": [_seg(0, 4, "happy", speaker="agent"), *({**s, "speaker": "customer"} for s in CUSTOMER)],
    }
    summary = call_summary(result)
    assert list(summary) == ["agent", "customer"]
    assert summary["agent"].share["happy"] == 1.0 and summary["agent"].first_negative_run is None
    doc = summary_json(summary)
    assert doc["customer"]["first_negative_run"] == {"emotion": "angry", "start": 8.0, "end": 24.0, "peak": 0.9}
    assert json.loads(json.dumps(doc)) == doc
    mixed = call_summary({"segments": CUSTOMER[:1]})
    assert list(mixed) == [C.SPEAKERS_MIXED]


def test_search_finds_calls_by_speaker_and_sustained_emotion(tmp_path: Path, capsys) -> None:
    from fusion_emotion.cli import main

    angry_customer = [{**s, "speaker": "customer"} for s in CUSTOMER]
    calm = [_seg(0, 4, "angry", speaker="agent"), _seg(4, 8, "neutral", speaker="customer")]
    records = [
        {"source": "a.wav", "status": "ok", "result": {"speakers": {"agent": {}, "customer": {}}}, "segments": s}
        for s in (angry_customer, calm)
    ] + [{"source": "bad.wav", "status": "error", "error": "x"}]
    results = tmp_path / "results.jsonl"
    records[1]["source"] = "b.wav"
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    argv = ["search", str(results), "--emotion", "angry", "--json"]
    assert main([*argv, "--speaker", "customer", "--for-s", "12"]) == 0
    (hit,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert (hit["source"], hit["speaker"], hit["start"], hit["end"], hit["length_s"]) == (
        "a.wav",
        "customer",
        8,
        24,
        16,
    )
    assert main([*argv, "--speaker", "customer", "--for-s", "20"]) == 0 and capsys.readouterr().out == ""
    assert main([*argv, "--for-s", "4"]) == 0  # any speaker: the agent's 4 s too
    assert {json.loads(x)["source"] for x in capsys.readouterr().out.splitlines()} == {"a.wav", "b.wav"}
    # the index keeps the speaker: top moments of one speaker, silent segments left out
    assert main([*argv, "--speaker", "agent", "--top", "5"]) == 0
    (moment,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert (moment["source"], moment["speaker"], moment["t_start"]) == ("b.wav", "agent", 0.0)
