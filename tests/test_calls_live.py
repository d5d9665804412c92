"""Recorded calls through the real front end and tritonserver: per-speaker timelines of a generated stereo call
equal each channel analysed alone as mono, silent windows cost no audio-encoder call (Triton's statistics),
the header route and batch agree, and a clip request is unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_frontend import RESULT_KEYS, run_frontend

from fusion_emotion import contract as C
from fusion_emotion import testmedia
from fusion_emotion.core.summary import call_summary, summary_json
from fusion_emotion.frontend.settings import Settings
from fusion_emotion.frontend.timeline import CUSTOM_ATTRIBUTES_HEADER
from fusion_emotion.ops.server_stats import TritonStats
from fusion_emotion.testmedia.calls import two_speaker_call

pytestmark = pytest.mark.integration

NAMES = ("agent", "customer")
# The generated call's turns (testmedia.calls.DEFAULT_TURNS) in its four 4 s windows: agent 0.5-3.3 s and
# 9.0-10.2 s, customer 4.6-7.4 s, then a silent tail.
SPEECH = {"agent": [True, False, True, False], "customer": [False, True, False, False]}
WAV = {"content-type": "audio/wav"}


def _audio_encoder_count(stats: TritonStats) -> int:
    return stats.snapshot()[C.AUDIO_ENCODER]["inference_count"]


def _assert_close(got: dict, want: dict) -> None:
    """Same spans, same speech flags, probabilities within 1e-4 (segments and the clip level)."""
    assert [(s["start"], s["end"], s["speech"]) for s in got["segments"]] == [
        (s["start"], s["end"], s["speech"]) for s in want["segments"]
    ]
    for a, b in zip(got["segments"], want["segments"], strict=True):
        assert set(a) == set(b)
        if a["speech"]:
            np.testing.assert_allclose([a[k] for k in C.LABELS], [b[k] for k in C.LABELS], atol=1e-4, rtol=0)
    np.testing.assert_allclose([got[k] for k in C.LABELS], [want[k] for k in C.LABELS], atol=1e-4, rtol=0)


def _speaker(body: dict, name: str) -> dict:
    segments = [{k: v for k, v in s.items() if k != "speaker"} for s in body["segments"] if s["speaker"] == name]
    return {**body["speakers"][name], "segments": segments}


@pytest.fixture(scope="module")
def call_wavs() -> tuple[bytes, list[bytes]]:
    call = two_speaker_call()
    return testmedia.wav(call.samples, call.rate), [testmedia.wav(call.samples[:, k], call.rate) for k in (0, 1)]


def test_per_speaker_timeline_is_each_channel_alone(triton, call_wavs, tmp_path: Path) -> None:
    from fusion_emotion.cli import main

    stereo, monos = call_wavs
    stats = TritonStats(triton.grpc_url)
    params = {"timeline": "true", "speakers": "channels", "speaker_names": ",".join(NAMES)}
    try:
        with run_frontend(Settings(triton_url=triton.grpc_url, request_timeout_s=120)) as base:
            before = _audio_encoder_count(stats)
            resp = httpx.post(f"{base}/invocations", params=params, content=stereo, headers=WAV, timeout=120)
            spent = _audio_encoder_count(stats) - before
            assert resp.status_code == 200, resp.text
            body = resp.json()
            # speech windows only, plus each speaker's clip-level row: the 5 silent windows cost nothing
            assert spent == sum(map(sum, SPEECH.values())) + len(NAMES)
            assert list(body) == ["speakers", "segments"] and list(body["speakers"]) == list(NAMES)
            for k, name in enumerate(NAMES):
                assert [s["speech"] for s in body["segments"] if s["speaker"] == name] == SPEECH[name]
                alone = httpx.post(
                    f"{base}/invocations", params={"timeline": "true", "vad": "true"}, content=monos[k], headers=WAV
                )
                assert alone.status_code == 200, alone.text
                _assert_close(_speaker(body, name), alone.json())
            attributes = ",".join(f"{k}={v}" for k, v in {**params, "summary": "true"}.items())
            header = {**WAV, CUSTOM_ATTRIBUTES_HEADER: attributes}
            via_header = httpx.post(f"{base}/invocations", content=stereo, headers=header, timeout=120).json()
            for name in NAMES:
                _assert_close(_speaker(via_header, name), _speaker(body, name))
            assert via_header["summary"] == summary_json(call_summary(body))  # the summary of the same result
            mono_refused = httpx.post(f"{base}/invocations", params=params, content=monos[0], headers=WAV)
            assert mono_refused.status_code == 400 and "channel 1" in mono_refused.json()["error"]
            clip = httpx.post(f"{base}/invocations", content=stereo, headers=WAV, timeout=120)
            assert clip.status_code == 200 and set(clip.json()) == RESULT_KEYS  # the clip contract is unchanged
    finally:
        stats.close()
    # batch over gRPC (the synchronous per-speaker path) writes the same result as the front end
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "call.wav").write_bytes(stereo)
    out = tmp_path / "results.jsonl"
    argv = ["batch", str(tmp_path / "in"), "--output", str(out), "--triton", triton.grpc_url, "--timeline"]
    assert main([*argv, "--speakers", "channels", "--speaker-names", ",".join(NAMES), "--summary"]) == 0
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert line["status"] == "ok", line
    summary = line["result"]["summary"]
    assert list(summary) == list(NAMES) and summary["customer"]["speech_s"] == 4.0  # one scored window
    for name in NAMES:
        _assert_close(
            _speaker({"speakers": line["result"]["speakers"], "segments": line["segments"]}, name), _speaker(body, name)
        )
