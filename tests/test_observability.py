"""Front-end metrics and EMF records without Triton: counts by route/status/kind, bounded labels, EMF shape.

The live test (tests/test_observability_live.py) sends real traffic through tritonserver; these cover the
mechanisms: what each request adds, that no request text becomes a label, and what an EMF record holds.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import textwrap

import httpx
import pytest
from helpers import serve_app
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

from fusion_emotion import contract as C
from fusion_emotion.frontend import emf
from fusion_emotion.frontend.app import create_app
from fusion_emotion.frontend.metrics import (
    LATENCY_SAMPLE,
    MODES,
    PREFIX,
    ROUTES,
    STAGES,
    FrontendMetrics,
    Tally,
    close_label,
    kind_of_status,
    modality_of,
)
from fusion_emotion.frontend.settings import Settings
from fusion_emotion.server.procs import free_port

PLANTED = "patient-42-secret-name-9c1e"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def result(probs: list[float], **qa: float | None) -> dict:
    flags = {name: qa.get(name) for name in C.QA_FLAG_NAMES}
    return {**dict(zip(C.LABELS, probs)), "qa_flags": flags}


def test_status_kinds_labels_are_fixed_sets() -> None:
    assert kind_of_status(200) == "ok" and kind_of_status(400) == "bad_request"
    assert kind_of_status(422) == "invalid_media" and kind_of_status(413) == "too_large"
    assert kind_of_status(503) == "overloaded" and kind_of_status(504) == "deadline"
    assert kind_of_status(415) == "unsupported_type" and kind_of_status(418) == "other"
    assert close_label(1008) == "1008" and close_label(4321) == "other"
    assert modality_of({"video_blur_level": 0.1, "audio_silence_ratio": 0.2}) == "video+audio"
    assert modality_of({"video_blur_level": 0.1, "audio_silence_ratio": None}) == "video_only"
    assert modality_of({"video_blur_level": None, "audio_silence_ratio": 0.0}) == "audio_only"


def test_result_metrics_flags_emotion_modality_low_confidence() -> None:
    m = FrontendMetrics()
    m.result(result([0.1, 0.1, 0.1, 0.5, 0.1, 0.1], video_blur_level=0.3, audio_silence_ratio=0.0,
                    overall_confidence=0.9))  # fmt: skip
    m.result(result([0.6, 0.1, 0.1, 0.1, 0.05, 0.05], audio_silence_ratio=0.5, overall_confidence=0.2))
    text = m.exposition().decode()
    assert value(text, f"{PREFIX}_dominant_emotion_total", emotion="happy") == 1
    assert value(text, f"{PREFIX}_dominant_emotion_total", emotion="angry") == 1
    assert value(text, f"{PREFIX}_modality_total", modality="video+audio") == 1
    assert value(text, f"{PREFIX}_modality_total", modality="audio_only") == 1
    assert value(text, f"{PREFIX}_low_confidence_total") == 1
    assert value(text, f"{PREFIX}_qa_flag_count", flag="overall_confidence") == 2
    assert value(text, f"{PREFIX}_qa_flag_count", flag="video_blur_level") == 1  # None is not observed
    assert value(text, f"{PREFIX}_top_probability_sum") == pytest.approx(1.1)
    tally = m.take_tally()
    assert tally.results == 2 and tally.low_confidence == 1 and m.tally.results == 0
    two = {"speakers": {"agent": result([0.6, 0.1, 0.1, 0.1, 0.05, 0.05], audio_silence_ratio=0.1),
                        "customer": result([0.1, 0.6, 0.1, 0.1, 0.05, 0.05], audio_silence_ratio=0.2)},
           "segments": [{"speaker": "agent", "start": 0.0, "end": 4.0, "speech": False}]}  # fmt: skip
    m.result(two)  # speakers=channels: each speaker's result counts
    text = m.exposition().decode()
    assert value(text, f"{PREFIX}_dominant_emotion_total", emotion="angry") == 2
    assert value(text, f"{PREFIX}_dominant_emotion_total", emotion="disgust") == 1
    assert value(text, f"{PREFIX}_modality_total", modality="audio_only") == 3


def test_latency_reservoir_is_bounded_and_uniform() -> None:
    tally, rng = Tally(), random.Random(1)
    for i in range(20 * LATENCY_SAMPLE):
        tally.sample_latency(float(i), rng)
    assert len(tally.latencies_ms) == LATENCY_SAMPLE and tally.latency_seen == 20 * LATENCY_SAMPLE
    mean = sum(tally.latencies_ms) / LATENCY_SAMPLE
    assert abs(mean - 10 * LATENCY_SAMPLE) < 0.1 * 10 * LATENCY_SAMPLE  # a uniform sample, not the first 1000


def test_frontend_counts_requests_by_route_status_kind_and_never_labels_request_text() -> None:
    settings = Settings(triton_url=f"127.0.0.1:{free_port()}", max_body_bytes=64 * 1024)
    with serve_app(create_app(settings)) as base, httpx.Client(base_url=base, timeout=30) as client:
        assert (
            client.post("/invocations", content=b"{", headers={"content-type": "application/json"}).status_code == 400
        )
        assert client.post(f"/predict?{PLANTED}=1", content=b"x", headers={"content-type": "text/x-" + PLANTED}).status_code == 415  # fmt: skip
        big = client.post("/invocations", content=b"0" * (65 * 1024), headers={"content-type": "audio/wav"})
        assert big.status_code == 413
        assert client.get(f"/{PLANTED}").status_code == 404
        assert client.get("/ping").status_code == 503  # Triton absent
        text = client.get("/metrics").text
    assert PLANTED not in text
    req = f"{PREFIX}_requests_total"
    assert value(text, req, route="/invocations", mode="clip", status="400", kind="bad_request") == 1
    assert value(text, req, route="/predict", mode="clip", status="415", kind="unsupported_type") == 1
    assert value(text, req, route="/invocations", mode="clip", status="413", kind="too_large") == 1
    assert value(text, req, route="other", mode="none", status="404", kind="not_found") == 1
    assert value(text, req, route="/ping", mode="none", status="503", kind="overloaded") == 1
    # the 413 was refused by its Content-Length before a byte was read: only the "{" body has a size
    assert value(text, f"{PREFIX}_request_body_bytes_count", route="/invocations") == 1
    assert value(text, f"{PREFIX}_stage_seconds_count", stage="body_read") >= 2
    assert value(text, f"{PREFIX}_in_flight") == 0
    allowed = {"route": {*ROUTES, "other"}, "mode": set(MODES), "stage": set(STAGES)}
    for family in text_string_to_metric_families(text):  # every label value from a fixed set
        for s in family.samples:
            for key, label in s.labels.items():
                assert label in allowed.get(key, {label}), (key, label)
                assert key != "status" or label.isdigit()


def test_metrics_route_off() -> None:
    settings = Settings(triton_url=f"127.0.0.1:{free_port()}", metrics=False)
    with serve_app(create_app(settings)) as base:
        assert httpx.get(f"{base}/metrics").status_code == 404


def test_settings_validate_emf_and_endpoint_name() -> None:
    assert Settings.from_env({"FUSION_EMOTION_EMF_INTERVAL_S": "60"}).emf_interval_s == 60
    with pytest.raises(ValueError, match="emf_interval_s"):
        Settings(emf_interval_s=0.5).validated()
    with pytest.raises(ValueError, match="endpoint_name"):
        Settings(endpoint_name="a/b").validated()


def _emf_check(record: dict) -> None:
    """What CloudWatch requires of an EMF record: each named metric and dimension present at the top level."""
    directive = record["_aws"]["CloudWatchMetrics"][0]
    assert isinstance(record["_aws"]["Timestamp"], int) and directive["Namespace"] == emf.NAMESPACE
    for dims in directive["Dimensions"]:
        assert all(isinstance(record[d], str) for d in dims)
    for metric in directive["Metrics"]:
        assert metric["Unit"] == emf.METRICS[metric["Name"]]
        v = record[metric["Name"]]
        assert isinstance(v, int | float) or (isinstance(v, list) and 0 < len(v) <= emf.MAX_VALUES)


def test_emf_records_from_a_tally() -> None:
    m = FrontendMetrics()
    for status in (200, 200, 400, 500):
        m.answered("/invocations", "clip", status, 0.25, 10)
    m.answered("/ping", "none", 200, 0.001, 0)  # not an inference request: not in Requests
    m.result(result([0.6, 0.1, 0.1, 0.1, 0.05, 0.05], audio_silence_ratio=0.5, overall_confidence=0.2))
    m.stream_opened()
    m.stream_update(late=True)
    m.stream_closed(1008, was_open=True)
    records = emf.tally_records("ep-1", m.take_tally(), m.current(), 1_700_000_000_000)
    for r in records:
        _emf_check(json.loads(json.dumps(r)))
    summary = records[0]
    assert summary["Requests"] == 4 and summary["Errors4xx"] == 1 and summary["Errors5xx"] == 1
    assert summary["Latency"] == [250.0] * 4 and summary["LowConfidence"] == 1
    assert summary["StreamUpdates"] == 1 and summary["StreamLateUpdates"] == 1 and summary["StreamsOpen"] == 0
    kinds = {r["Kind"]: r["Requests"] for r in records if "Kind" in r}
    assert kinds == {"ok": 2, "bad_request": 1, "internal": 1}
    assert {r["CloseCode"]: r["StreamCloses"] for r in records if "CloseCode" in r} == {"1008": 1}
    quiet = emf.tally_records("ep-1", Tally(), {"InFlight": 0, "StreamsOpen": 0}, 0)
    assert len(quiet) == 1 and quiet[0]["Requests"] == 0 and "Latency" not in quiet[0]


def test_latency_values_keep_the_distribution_in_100() -> None:
    values = emf.latency_values([float(i) for i in range(1001)])
    assert len(values) == emf.MAX_VALUES and values[0] == 0 and values[-1] == 1000
    assert values[94] == pytest.approx(949.5, abs=1)  # the p95 survives


TRITON_PAGE = textwrap.dedent("""\
    # HELP fusion_emotion_decodes_total Videos decoded
    # TYPE fusion_emotion_decodes_total counter
    fusion_emotion_decodes_total{model="preprocess",decoder="pyav",fallback="dali_error"} 3
    fusion_emotion_decodes_total{model="preprocess",decoder="dali_gpu",fallback="none"} 10
    nv_inference_request_success{model="preprocess",version="1"} 13
    """)


def test_decode_counts_and_deltas_with_restart() -> None:
    now = emf.decode_counts(TRITON_PAGE)
    assert now == {("preprocess", "pyav", "dali_error"): 3, ("preprocess", "dali_gpu", "none"): 10}
    before = {("preprocess", "pyav", "dali_error"): 1, ("preprocess", "dali_gpu", "none"): 12}
    assert emf.decode_deltas(now, before) == {("preprocess", "pyav", "dali_error"): 2,
                                              ("preprocess", "dali_gpu", "none"): 10}  # fmt: skip


def test_reporter_flushes_on_cancel_and_reads_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    m = FrontendMetrics()
    m.answered("/predict", "timeline", 200, 1.0, 100)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=TRITON_PAGE)

    real_client = httpx.AsyncClient
    monkeypatch.setattr(emf.httpx, "AsyncClient", lambda **kw: real_client(transport=httpx.MockTransport(handler)))
    reporter = emf.EmfReporter(m, "ep", 3600, "http://127.0.0.1:1/metrics", write=lines.append)

    async def run() -> None:
        task = asyncio.create_task(reporter.run())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    records = [json.loads(line) for line in lines]
    assert records[0]["Requests"] == 1 and records[0]["Latency"] == [1000.0]
    decodes = {(r["Decoder"], r["Fallback"]): r["Decodes"] for r in records if "Decoder" in r}
    assert decodes == {("pyav", "dali_error"): 3, ("dali_gpu", "none"): 10}


def test_multiprocess_exposition_merges_workers(tmp_path) -> None:
    """Two worker processes write their values to PROMETHEUS_MULTIPROC_DIR; /metrics of either shows both."""
    code = textwrap.dedent("""
        from fusion_emotion.frontend.metrics import FrontendMetrics
        m = FrontendMetrics()
        m.answered("/invocations", "clip", 200, 0.1, 5)
        m.stream_opened()
    """)
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for _ in range(2):
        worker = subprocess.Popen([sys.executable, "-c", code], env=env)
        assert worker.wait(60) == 0
        mark_process_dead(worker.pid, str(tmp_path))  # the process manager's child-exit hook (gunicorn's)
    out = subprocess.run(
        [sys.executable, "-c", "from fusion_emotion.frontend.metrics import FrontendMetrics;"
         "import sys; sys.stdout.write(FrontendMetrics().exposition().decode())"],
        env=env, check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    req = f"{PREFIX}_requests_total"
    assert value(out, req, route="/invocations", mode="clip", status="200", kind="ok") == 2
    assert value(out, f"{PREFIX}_streams_open") == 0  # livesum: the workers that opened them have exited
