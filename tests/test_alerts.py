"""Alert rules on stream updates (core/alerts.py): validation, and start/end at the right times."""

from __future__ import annotations

import pytest

from fusion_emotion import contract as C
from fusion_emotion.core.alerts import MAX_RULES, AlertTracker, parse_rules
from fusion_emotion.errors import ErrorKind, ServingError


def probs(angry: float) -> dict[str, float]:
    rest = (1.0 - angry) / (C.NUM_CLASSES - 1)
    return {label: (angry if label == "angry" else rest) for label in C.LABELS}


def test_rule_starts_after_holding_for_s_and_ends_when_it_drops() -> None:
    tracker = AlertTracker(parse_rules([{"emotion": "angry", "min_p": 0.6, "for_s": 2}]))
    script = [(1, 0.2), (2, 0.7), (3, 0.8), (4, 0.9), (5, 0.65), (6, 0.3), (7, 0.7)]
    got = {t: tracker.update(float(t), probs(p)) for t, p in script}
    assert [t for t, msgs in got.items() if msgs] == [4, 6]  # held from 2: 2 s later at 4; dropped at 6
    start = got[4][0]["alert"]
    assert start["state"] == "start" and start["since"] == 2 and start["held_s"] == 2 and start["peak"] == 0.9
    end = got[6][0]["alert"]
    assert end["state"] == "end" and end["since"] == 2 and end["held_s"] == 4 and end["p"] == 0.3
    assert tracker.finish() == []  # the run that began at 7 never started an alert


def test_for_s_zero_fires_at_once_and_finish_ends_open_alerts() -> None:
    tracker = AlertTracker(parse_rules([{"emotion": "angry", "min_p": 0.5}]))
    assert tracker.update(1.0, probs(0.6))[0]["alert"]["state"] == "start"
    assert tracker.update(2.0, probs(0.7)) == []
    (end,) = tracker.finish()
    assert end["alert"]["state"] == "end" and end["alert"]["t"] == 2.0 and end["alert"]["p"] is None


def test_speakers_are_tracked_apart_and_a_speaker_rule_ignores_the_others() -> None:
    tracker = AlertTracker(parse_rules([{"emotion": "angry", "min_p": 0.6, "for_s": 0, "speaker": "customer"},
                                        {"emotion": "angry", "min_p": 0.6, "for_s": 1}]))  # fmt: skip
    agent = tracker.update(1.0, probs(0.9), "agent")
    assert [(m["alert"]["rule"], m["alert"]["speaker"]) for m in agent] == []  # rule 1 needs 1 s
    customer = tracker.update(1.0, probs(0.9), "customer")
    assert [(m["alert"]["rule"], m["alert"]["speaker"]) for m in customer] == [(0, "customer")]
    assert [m["alert"]["rule"] for m in tracker.update(2.0, probs(0.9), "agent")] == [1]
    assert tracker.update(2.0, probs(0.1), "agent")[0]["alert"]["state"] == "end"


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"emotion": "angry"}, "list"),
        ([{"emotion": "furious", "min_p": 0.5}], "emotion must be one of"),
        ([{"emotion": "angry", "min_p": 1.5}], "min_p must be in (0, 1]"),
        ([{"emotion": "angry", "min_p": float("nan")}], "finite"),
        ([{"emotion": "angry", "min_p": 10**400}], "out of range"),
        ([{"emotion": "angry", "min_p": True}], "number"),
        ([{"emotion": "angry", "min_p": 0.5, "for_s": -1}], "for_s"),
        ([{"emotion": "angry", "min_p": 0.5, "speaker": "a b/c"}], "speaker"),
        ([{"emotion": "angry", "min_p": 0.5, "colour": 1}], "unknown key(s) colour"),
        ([{"emotion": "angry", "min_p": 0.5}] * (MAX_RULES + 1), "over the limit"),
        (["angry"], "must be an object"),
    ],
)
def test_bad_rules_are_refused_with_their_reason(raw, needle: str) -> None:
    with pytest.raises(ServingError) as info:
        parse_rules(raw)
    assert info.value.kind is ErrorKind.BAD_REQUEST and info.value.subject == "alerts"
    assert needle in info.value.reason
