"""Alert rules on a live stream through the real front end and tritonserver.

The emotion sequence is made known by playing the same audio twice: the first stream's updates (deterministic
random-init weights) give each rule its threshold, so that where each alert must start and end is known; the
second stream carries the rules, and its alerts are checked against those times and against the rules
replayed over its own updates (core/alerts.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
from fusion_emotion.client.stream import MediaSource, play
from test_frontend import run_frontend

from fusion_emotion import contract as C
from fusion_emotion import testmedia
from fusion_emotion.core.alerts import AlertTracker, parse_rules
from fusion_emotion.frontend.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
RATE = 16_000


@pytest.fixture(scope="module")
def url(triton) -> Iterator[str]:
    with run_frontend(Settings(triton_url=triton.grpc_url)) as base:
        yield base.replace("http://", "ws://") + "/stream"


@pytest.fixture(scope="module")
def source() -> MediaSource:
    speech = np.resize(testmedia.speech(rate=RATE).astype(np.float32), 7 * RATE)
    return MediaSource((speech * 32767).astype("<i2")[:, None], RATE)


def test_alerts_start_and_end_where_the_updates_say(url: str, source: MediaSource) -> None:
    first = asyncio.run(play(url, source, hop_s=1.0))
    assert first.close_code == 1000 and len(first.updates) >= 5 and not first.alerts
    emotion = first.updates[0]["dominant_emotion"]
    p = [u[emotion] for u in first.updates]
    t = [u["t_end"] for u in first.updates]
    k = int(np.argmax(p))  # the peak: the third rule holds there only
    above_rest = min(p) - 1e-3  # holds on every update
    gap = p[k] - max(q for i, q in enumerate(p) if i != k)
    assert gap > 1e-3, "the peak must stand out of replay noise"  # random-init weights: checked, it does
    rules = [
        {"emotion": emotion, "min_p": above_rest},  # starts at once, ends with the stream
        {"emotion": emotion, "min_p": above_rest, "for_s": 2},  # starts 2 s after it began to hold
        {"emotion": emotion, "min_p": p[k] - gap / 2},  # holds at the peak only: starts there, ends after it
    ]
    peak_end = t[k + 1] if k + 1 < len(t) else t[-1]  # the next update, or the stream's end
    second = asyncio.run(play(url, source, hop_s=1.0, alerts=rules))
    assert second.close_code == 1000 and not second.errors, second.errors
    got = [(a["alert"]["rule"], a["alert"]["state"], a["alert"]["t"]) for a in second.alerts]
    expected_times = [(0, "start", t[0]), (1, "start", t[2]), (2, "start", t[k]), (2, "end", peak_end),
                      (0, "end", t[-1]), (1, "end", t[-1])]  # fmt: skip
    assert sorted(got) == sorted(expected_times), got

    replay = AlertTracker(parse_rules(rules))
    expected = [m for u in second.updates for m in replay.update(u["t_end"], u)] + replay.finish()
    assert second.alerts == expected  # the same messages, evidence included, in the same order
    peak = [a["alert"] for a in second.alerts if a["alert"]["rule"] == 2 and a["alert"]["state"] == "start"][0]
    assert peak["emotion"] == emotion and peak["since"] == t[k] and abs(peak["peak"] - p[k]) < 1e-4


def test_bad_rules_refuse_the_stream_with_the_reason(url: str, source: MediaSource) -> None:
    short = MediaSource(source.pcm[:RATE], RATE)
    result = asyncio.run(play(url, short, alerts=[{"emotion": "furious", "min_p": 0.5}]))
    assert result.close_code == 1008 and not result.updates
    (error,) = result.errors
    assert error["subject"] == "alerts" and "emotion must be one of" in error["error"]
    assert all(label in error["error"] for label in C.LABELS)
