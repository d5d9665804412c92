"""Observability end to end: good, bad, timeline and stream traffic through the real front end and tritonserver;
``/metrics``, Triton's metrics port and the EMF records count exactly what was sent, and every query of the
Grafana dashboard resolves in a real Prometheus (Debian's ``prometheus``) scraping both. 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fusion_emotion.client.stream import MediaSource, play
from helpers import serve_app
from prometheus_client.parser import text_string_to_metric_families

from fusion_emotion import contract as C
from fusion_emotion.frontend import emf
from fusion_emotion.frontend.app import create_app
from fusion_emotion.frontend.metrics import PREFIX
from fusion_emotion.frontend.settings import Settings
from fusion_emotion.server.procs import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "observability" / "grafana-dashboard.json"
REQ = f"{PREFIX}_requests_total"


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def get(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum over every series of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


@pytest.fixture(scope="module")
def service(triton) -> Iterator[tuple[str, Any]]:
    app = create_app(Settings(triton_url=triton.grpc_url))
    with serve_app(app) as base:
        yield base, app


def send_traffic(base: str, media: dict[str, bytes]) -> dict[str, Any]:
    """Two good clips (video+audio, audio only), a timeline, one undecodable video, one malformed body, a stream."""
    with httpx.Client(base_url=base, timeout=120) as client:
        good = client.post("/invocations", files={"video_file": ("a.mp4", media["mp4"])})
        audio = client.post("/predict", files={"audio_file": ("b.wav", media["wav16k"])})
        timeline = client.post("/invocations?timeline=true", files={"video_file": ("c.mp4", media["mp4"])})
        garbage = client.post("/invocations", files={"video_file": ("d.mp4", media["garbage"])})
        malformed = client.post("/invocations", content=b"{", headers={"content-type": "application/json"})
    assert [r.status_code for r in (good, audio, timeline, garbage, malformed)] == [200, 200, 200, 422, 400]
    pcm = (np.resize(np.sin(np.arange(16_000) / 7.0), 3 * 16_000) * 8000).astype("<i2")[:, None]
    stream = asyncio.run(play(base.replace("http://", "ws://") + "/stream", MediaSource(pcm, 16_000, []), hop_s=1.0))
    assert stream.close_code == 1000 and stream.updates
    return {"results": [good.json(), audio.json(), timeline.json()], "stream": stream}


def test_metrics_count_what_was_sent_and_dashboard_resolves(service, triton, media, tmp_path: Path) -> None:
    base, app = service
    triton_url = f"http://127.0.0.1:{triton.metrics_port}/metrics"
    triton_before = scrape(triton_url)
    lines: list[str] = []
    reporter = emf.EmfReporter(app.state.metrics, "ep-live", 60, triton_url, write=lines.append)
    asyncio.run(reporter.flush())  # the first interval: Triton's counts so far (other tests' traffic)
    lines.clear()
    sent = send_traffic(base, media)
    fe, tr = scrape(f"{base}/metrics"), scrape(triton_url)

    # requests by route, mode, status and kind
    assert get(fe, REQ, route="/invocations", mode="clip", status="200", kind="ok") == 1
    assert get(fe, REQ, route="/predict", mode="clip", status="200", kind="ok") == 1
    assert get(fe, REQ, route="/invocations", mode="timeline", status="200", kind="ok") == 1
    assert get(fe, REQ, route="/invocations", mode="clip", status="422", kind="invalid_media") == 1
    assert get(fe, REQ, route="/invocations", mode="clip", status="400", kind="bad_request") == 1
    assert total(fe, f"{PREFIX}_request_seconds_count", mode="clip") == 4
    assert get(fe, f"{PREFIX}_stage_seconds_count", stage="body_read") == 5
    assert get(fe, f"{PREFIX}_stage_seconds_count", stage="triton") == 4  # the malformed body never got there
    assert get(fe, f"{PREFIX}_in_flight") == 0 and get(fe, f"{PREFIX}_admission_refusals_total") == 0

    # what the model said: one count per answered result, as the results themselves say
    emotions = [r["dominant_emotion"] for r in sent["results"]]
    for emotion in C.LABELS:
        assert get(fe, f"{PREFIX}_dominant_emotion_total", emotion=emotion) == emotions.count(emotion)
    assert get(fe, f"{PREFIX}_modality_total", modality="video+audio") == 2
    assert get(fe, f"{PREFIX}_modality_total", modality="audio_only") == 1
    assert get(fe, f"{PREFIX}_top_probability_count") == 3
    low = sum(r["qa_flags"]["overall_confidence"] < 0.5 for r in sent["results"])
    assert get(fe, f"{PREFIX}_low_confidence_total") == low
    for flag in C.QA_FLAG_NAMES:
        seen = sum(r["qa_flags"][flag] is not None for r in sent["results"])
        assert get(fe, f"{PREFIX}_qa_flag_count", flag=flag) == seen, flag

    # streams: opened, updates sent, closed normally
    stream = sent["stream"]
    assert get(fe, f"{PREFIX}_stream_updates_total") == len(stream.updates)
    assert get(fe, f"{PREFIX}_stream_closes_total", code="1000") == 1
    assert get(fe, f"{PREFIX}_streams_open") == 0

    def delta(name: str, **labels: str) -> float:  # what this test's traffic added to a Triton counter
        return total(tr, name, **labels) - total(triton_before, name, **labels)

    # inside Triton: one PyAV decode each for the clip and the timeline (the garbage was never decoded)
    for model in (C.PREPROCESS, C.TIMELINE_MODEL):
        assert delta("fusion_emotion_decodes_total", model=model, decoder="pyav", fallback="none") == 1, model

    # Triton 2.51's own counters, as docs/observability/index.md warns: the undecodable video's error
    # *response* from the Python backend counts as a preprocess success (server#7713), and the one failed
    # ensemble request adds 2 to the ensemble's failures
    assert delta("nv_inference_request_success_total", model=C.PREPROCESS) == 3  # the mp4, the wav, the garbage
    assert delta("nv_inference_request_failure_total", model=C.PREPROCESS) == 0
    assert delta("nv_inference_request_failure_total", model=C.ENSEMBLE, reason="OTHER") == 2
    assert delta("fusion_emotion_stage_seconds_count", model=C.PREPROCESS, stage="decode") > 0

    # EMF: one interval's records from the same app, Triton's decodes read from its port
    asyncio.run(reporter.flush())
    records = [json.loads(line) for line in lines]
    for record in records:
        directive = record["_aws"]["CloudWatchMetrics"][0]
        assert all(m["Name"] in record and m["Name"] in emf.METRICS for m in directive["Metrics"])
        assert all(d in record for dims in directive["Dimensions"] for d in dims)
    summary = records[0]
    assert summary["Requests"] == 5 and summary["Errors4xx"] == 2 and summary["Errors5xx"] == 0
    assert len(summary["Latency"]) == 5 and summary["Results"] == 3
    assert summary["StreamUpdates"] == len(stream.updates) and summary["StreamCloses"] == 1
    decoded = {(r["Model"], r["Decoder"], r["Fallback"]): r["Decodes"] for r in records if "Decoder" in r}
    assert decoded == {(C.PREPROCESS, "pyav", "none"): 1, (C.TIMELINE_MODEL, "pyav", "none"): 1}

    prometheus_checks(base, triton, tmp_path, fe, tr)


def prometheus_checks(base: str, triton, tmp_path: Path, fe: dict, tr: dict) -> None:
    """Every dashboard query names exported metrics and returns series in a real Prometheus scraping both."""
    exported = {name for name, _ in fe} | {name for name, _ in tr}
    exported |= {re.sub(r"_total$", "", n) for n in exported}  # Triton's own counters carry no _total
    for query in dashboard_queries():
        names = set(re.findall(r"\b((?:fusion_emotion|nv)_[a-z_]+)\b", query))
        assert names and names <= exported, (query, names - exported)

    port = free_port()
    config = tmp_path / "prometheus.yml"
    fe_host = base.removeprefix("http://")
    config.write_text(
        "global: {scrape_interval: 1s}\nscrape_configs:\n"
        f"  - {{job_name: frontend, static_configs: [{{targets: ['{fe_host}']}}]}}\n"
        f"  - {{job_name: triton, static_configs: [{{targets: ['127.0.0.1:{triton.metrics_port}']}}]}}\n"
    )
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus (make setup installs it)"
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"),  # noqa: SIM115
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}/api/v1/query"
    try:
        deadline = time.monotonic() + 60
        while True:  # both targets up, with a few scrapes each (rate() needs two samples in its window)
            try:
                up = httpx.get(api, params={"query": "count_over_time(up[1m]) >= 4"}, timeout=5).json()
                if len(up["data"]["result"]) == 2:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[-2000:]
            time.sleep(0.5)
        for query in dashboard_queries():
            body = httpx.get(api, params={"query": query}, timeout=10).json()
            assert body["status"] == "success", (query, body)
            assert body["data"]["result"], f"no series for {query}"
        # the counts Prometheus holds are the ones sent (/metrics itself is scraped meanwhile: not compared)
        query = f'sum({REQ}{{route="/invocations"}})'
        raw = httpx.get(api, params={"query": query}, timeout=10).json()["data"]["result"]
        assert float(raw[0]["value"][1]) == total(fe, REQ, route="/invocations") == 4
    finally:
        proc.terminate()
        proc.wait(20)
