"""``fusion-emotion bench``: correctness of the numbers it reports (never its speed)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fusion_emotion import contract as C
from fusion_emotion.cli import main
from fusion_emotion.ops import bench, loadgen, server_stats
from fusion_emotion.ops.stages import measure_stages
from fusion_emotion.server.procs import free_port

LATENCY_KEYS = {"avg", "min", "max", "p50", "p90", "p95", "p99"}


# --------------------------------------------------------------------------- pure parts
def test_percentiles_linear_interpolation():
    s = loadgen.latency_summary([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert s["avg"] == pytest.approx(50.5)
    assert s["min"] == pytest.approx(1) and s["max"] == pytest.approx(100)
    # numpy's linear method: rank (n-1)*q -> 1 + 99*q
    assert s["p50"] == pytest.approx(50.5)
    assert s["p90"] == pytest.approx(90.1)
    assert s["p95"] == pytest.approx(95.05)
    assert s["p99"] == pytest.approx(99.01)
    one = loadgen.latency_summary([0.25])
    assert all(one[k] == pytest.approx(250) for k in LATENCY_KEYS)
    assert set(loadgen.latency_summary([])) == LATENCY_KEYS
    assert all(v is None for v in loadgen.latency_summary([]).values())


def test_closed_loop_counts_requests_errors_and_concurrency():
    in_flight = peak = calls = 0
    lock = threading.Lock()

    def send() -> None:
        nonlocal in_flight, peak, calls
        with lock:
            in_flight += 1
            calls += 1
            peak = max(peak, in_flight)
            n = calls
        time.sleep(0.02)
        with lock:
            in_flight -= 1
        if n % 4 == 0:
            raise RuntimeError("boom")

    wall, lat, errors, samples = loadgen.run_closed_loop(send, 12, 3, progress=False)
    assert calls == 12 and errors == 3 and len(lat) == 9
    assert peak == 3
    assert samples and "RuntimeError: boom" in samples[0]
    assert wall >= 4 * 0.02 * 0.9  # 12 requests / 3 in flight = at least 4 sequential rounds
    assert all(x >= 0.015 for x in lat)


def test_pool_runs_and_throughput():
    a = loadgen.RunResult("t", 4, 2, 2.0, [0.1] * 4, 0)
    b = loadgen.RunResult("t", 4, 2, 6.0, [0.3] * 3, 1, ["E: x"], round=1)
    pooled = loadgen.pool_runs([a, b])
    assert pooled["requests"] == 8 and pooled["succeeded"] == 7 and pooled["errors"] == 1
    assert pooled["throughput_rps"] == pytest.approx(7 / 8.0)
    assert pooled["throughput_rps_per_round"] == [pytest.approx(2.0), pytest.approx(0.5)]
    assert pooled["latency_ms"]["max"] == pytest.approx(300)


def _stats(count: int, execs: int, queue_ns: int, infer_ns: int, batch_infer_ns: int) -> dict:
    return {
        "model_stats": [
            {
                "name": "video_encoder",
                "version": "1",
                "inference_count": str(count),
                "execution_count": str(execs),
                "inference_stats": {
                    "success": {"count": str(count), "ns": str(infer_ns + queue_ns)},
                    "queue": {"count": str(count), "ns": str(queue_ns)},
                    "compute_infer": {"count": str(count), "ns": str(infer_ns)},
                },
                "batch_stats": [{"batch_size": "2", "compute_infer": {"count": str(execs), "ns": str(batch_infer_ns)}}],
            },
            {"name": "idle", "version": "1", "inference_stats": {}},
        ]
    }


def test_triton_stats_delta_per_request_and_per_execution():
    before = server_stats.flatten_model_stats(_stats(10, 5, 10_000_000, 100_000_000, 50_000_000))
    after = server_stats.flatten_model_stats(_stats(14, 7, 18_000_000, 180_000_000, 90_000_000))
    d = server_stats.stats_delta(before, after)
    assert set(d) == {"video_encoder"}  # models without traffic are left out
    v = d["video_encoder"]
    assert v["requests"] == 4 and v["executions"] == 2 and v["avg_batch"] == pytest.approx(2.0)
    assert v["queue_ms_per_request"] == pytest.approx(2.0)
    assert v["compute_infer_ms_per_request"] == pytest.approx(20.0)
    assert v["compute_infer_ms_per_execution"] == pytest.approx(20.0)
    assert v["compute_input_ms_per_request"] is None


def test_triton_stats_snapshot_waits_for_lagging_records():
    """Triton records the last requests' statistics after their responses: a window's
    start read right after warm-up must not miss the warm-up (CI saw 4 requests for 3)."""
    reads = [_stats(3, 3, 1, 1, 1), _stats(4, 4, 1, 1, 1), _stats(4, 4, 1, 1, 1), _stats(9, 9, 1, 1, 1)]

    class Client:
        def get_inference_statistics(self, as_json: bool) -> dict:
            return reads.pop(0)

    stats = server_stats.TritonStats.__new__(server_stats.TritonStats)
    stats.client = Client()
    assert stats.snapshot(interval_s=0.01)["video_encoder"]["inference_count"] == 4  # not the lagging 3
    assert len(reads) == 1  # stopped at the first two equal reads

    moving = iter(range(1000))
    stats.client.get_inference_statistics = lambda as_json: _stats(next(moving), 1, 1, 1, 1)
    t0 = time.monotonic()
    stats.snapshot(timeout_s=0.2, interval_s=0.01)  # never settles: bounded by the timeout
    assert time.monotonic() - t0 < 1.0


def test_cpu_timeline_summary_splits_idle_by_cause():
    from fusion_emotion.ops.cpu_timeline import Sample, from_json, summarize, table, to_json

    pre, enc = C.PREPROCESS, C.VIDEO_ENCODER
    samples = [
        Sample(0.0, 0.5, 2.0, {pre: 1.5, enc: 0.5}),  # both cores busy
        Sample(0.5, 0.5, 1.0, {enc: 1.0}),  # one encoder alone, nothing decoding: 0.5 core-s idle
        Sample(1.0, 0.5, 1.5, {pre: 1.0, enc: 0.5}),  # decoding, still 0.25 core-s idle
        Sample(1.5, 0.5, 0.5, {enc: 0.5}),  # the drain: 0.75 core-s idle
    ]
    s = summarize(samples, cores=2, tail_s=0.5)
    assert s["wall_s"] == 2.0 and s["mean_busy_cores"] == 1.25
    assert s["idle_core_s"] == 1.5 and s["idle_share"] == 0.375
    assert s["idle_no_decode_core_s"] == 1.25 and s["idle_last_core_s"] == 0.75
    assert s["part_core_s"] == {pre: 1.25, enc: 1.25}
    assert from_json(to_json(samples, 2, 0.5)) == samples
    assert "busy 1.00" in table(samples).splitlines()[1] and pre not in table(samples).splitlines()[1]
    in_process = summarize([Sample(0.0, 1.0, 1.0, {"in-process": 1.0})], cores=2)
    assert in_process["idle_no_decode_core_s"] == 0.0  # no decode stage to starve


def test_cpu_timeline_samples_this_process():
    from fusion_emotion.ops.cpu_timeline import IN_PROCESS, CpuTimeline

    timeline = CpuTimeline(None, 0.05)
    timeline.start()
    cpu0 = time.process_time()
    end = time.monotonic() + 0.4
    while time.monotonic() < end:  # one busy thread: as much of a core as the machine gives it
        sum(range(1000))
    cpu = time.process_time() - cpu0
    samples = timeline.stop()
    assert len(samples) >= 4
    used = sum(s.parts[IN_PROCESS] * s.dt_s for s in samples)
    # what the timeline attributes to this process is what the process spent (its sampler thread's own
    # share included), however loaded the machine: 0.4 CPU-s alone, 0.19 beside two other busy processes
    assert cpu > 0.05 and used == pytest.approx(cpu, rel=0.35, abs=0.05)
    assert used <= sum(s.dt_s for s in samples) * 1.5
    assert all(s.busy_cores >= s.parts[IN_PROCESS] * 0.5 for s in samples[1:-1])


def test_summary_ratios_and_plot(tmp_path: Path):
    results = {
        "service": {c: [loadgen.RunResult("s", 4, c, 2.0, [0.2 * c] * 4, 0)] for c in (1, 2)},
        "baseline": {c: [loadgen.RunResult("b", 4, c, 4.0, [0.4 * c] * 4, 0)] for c in (1, 2)},
    }
    doc = bench.summarise(results, "service", headline=2)
    assert doc["concurrency"] == 2 and doc["baseline"]["concurrency"] == 2
    cmp = doc["comparisons"]["service_vs_baseline"]["2"]
    assert cmp["throughput_ratio"] == pytest.approx(2.0)
    assert cmp["p95_ratio"] == pytest.approx(0.5)
    assert [r["concurrency"] for r in doc["sweep"]["service"]] == [1, 2]
    png = tmp_path / "sweep.png"
    bench.plot_sweep(doc, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "service_vs_baseline" in bench.report_text(doc)


# --------------------------------------------------------------------------- live runs
def _check_schema(doc: dict, requests: int, concurrency: int) -> None:
    assert doc["requests"] == requests and doc["concurrency"] == concurrency
    assert doc["errors"] == 0 and doc["succeeded"] == requests
    assert doc["throughput_rps"] > 0
    assert set(doc["latency_ms"]) == LATENCY_KEYS
    lat = doc["latency_ms"]
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert doc["host"]["loadavg_before"] is not None and doc["runs"]


@pytest.mark.integration
def test_bench_triton_json(triton, media, tmp_path: Path, capsys):
    video = tmp_path / "clip.flv"
    video.write_bytes(media["flv"])
    out = tmp_path / "r.json"
    args = ["bench", "--triton", triton.grpc_url, "--video", str(video), "--requests", "3", "--concurrency", "2"]
    assert main([*args, "--warmup", "1", "--output", str(out), "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    _check_schema(doc, 3, 2)
    stats = doc["triton_stats"]
    assert {"fusion_emotion", "preprocess", "video_encoder", "audio_encoder", "fusion_head"} <= set(stats)
    assert stats["fusion_emotion"]["requests"] == 3  # the warmup is outside the measured delta
    for model in ("preprocess", "video_encoder", "audio_encoder", "fusion_head"):
        s = stats[model]
        assert s["inferences"] == 3 and 1 <= s["executions"] <= 3
        assert s["queue_ms_per_request"] >= 0 and s["compute_infer_ms_per_request"] > 0
        assert s["compute_infer_ms_per_execution"] > 0
    assert "req/s" in capsys.readouterr().out


@pytest.fixture
def frontend(triton) -> Iterator[str]:
    uvicorn = pytest.importorskip("uvicorn")
    from fusion_emotion.frontend.app import create_app
    from fusion_emotion.frontend.settings import Settings

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(Settings(triton_url=triton.grpc_url, request_timeout_s=120)),
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(20)


@pytest.mark.integration
def test_bench_url_with_triton_stats(frontend, triton, media, tmp_path: Path, capsys):
    video = tmp_path / "clip.flv"
    video.write_bytes(media["flv"])
    out = tmp_path / "r.json"
    args = ["bench", "--url", frontend, "--triton-stats", triton.grpc_url, "--video", str(video)]
    args += ["--server-pid", str(triton.proc.pid), "--cpu-timeline", "0.2"]
    assert main([*args, "-n", "3", "-c", "2", "--warmup", "0", "--output", str(out), "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    _check_schema(doc, 3, 2)
    assert doc["triton_stats"]["fusion_emotion"]["requests"] == 3
    timeline = doc["runs"][0]["cpu_timeline"]
    summary = timeline["summary"]
    assert (
        len(timeline["samples"]) >= 2 and summary["wall_s"] > 0 and 0 < summary["mean_busy_cores"] <= summary["cores"]
    )
    used = summary["part_core_s"]  # the stubs that did the work, by model, from the live server's process tree
    assert all(used[m] > 0 for m in (C.PREPROCESS, C.VIDEO_ENCODER, C.AUDIO_ENCODER)), used
    assert sum(used.values()) <= summary["mean_busy_cores"] * summary["wall_s"] * 1.2 + 0.5  # parts fit the machine
    assert doc["cpu_timeline"] == [summary]
    assert "cpu timeline" in capsys.readouterr().out


def test_bench_local_with_comparison_json(demo_repository, media, tmp_path: Path):
    video = tmp_path / "clip.flv"
    video.write_bytes(media["flv"])
    out = tmp_path / "r.json"
    args = ["bench", "--local", str(demo_repository), "--video", str(video), "-n", "3", "-c", "2"]
    assert main([*args, "--rounds", "2", "--warmup", "0", "--output", str(out), "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    _check_schema(doc, 6, 2)  # 2 rounds of 3, pooled
    assert doc["primary"] == "local" and doc["rounds"] == 2 and len(doc["runs"]) == 2
    assert "triton_stats" not in doc


def test_bench_local_errors_are_counted(demo_repository, tmp_path: Path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(1000))
    out = tmp_path / "r.json"
    args = ["bench", "--local", str(demo_repository), "--video", str(bad), "-n", "2", "-c", "1", "--warmup", "0"]
    assert main([*args, "--output", str(out), "--no-progress"]) == 1
    doc = json.loads(out.read_text())
    assert doc["errors"] == 2 and doc["succeeded"] == 0 and doc["throughput_rps"] == 0
    assert doc["latency_ms"]["p95"] is None and "MediaError" in doc["error_samples"][0]


def test_stages_cover_the_lean_pipeline(demo_repository, media):
    stages = measure_stages(demo_repository, media["flv"], repeats=1)
    for name in ("decode_video", "qa_flags", "video_encoder", "audio_encoder", "fusion_head", "lean_end_to_end"):
        assert stages[name]["wall_ms"] > 0 and stages[name]["cpu_ms"] >= 0


def test_int8_profile_files(tmp_path: Path):
    """quantize's config and hard-linked serving copy (the slow quantization itself is not run here)."""
    from fusion_emotion import contract as C
    from fusion_emotion.ops import quantize

    repo = tmp_path / "repo"
    for model in (C.VIDEO_ENCODER, C.AUDIO_ENCODER):
        (repo / model / "configs").mkdir(parents=True)
        (repo / model / "1").mkdir()
        (repo / model / "configs" / "cpu.pbtxt").write_text(f'name: "{model}"\nbackend: "python"\n')
        (repo / model / "1" / C.ONNX_FILENAME).write_bytes(b"fp32")
        (repo / model / "1" / quantize.INT8_FILENAME).write_bytes(b"int8")
        cfg = quantize.write_int8_config(repo, model).read_text()
        assert f'name: "{model}"' in cfg and '"onnx_filename"' in cfg and quantize.INT8_FILENAME in cfg
    quantize.serving_copy(repo, tmp_path / "int8")
    for model in (C.VIDEO_ENCODER, C.AUDIO_ENCODER):
        assert (tmp_path / "int8" / model / "1" / C.ONNX_FILENAME).read_bytes() == b"int8"
        assert (repo / model / "1" / C.ONNX_FILENAME).read_bytes() == b"fp32"
        assert not (tmp_path / "int8" / model / "1" / quantize.INT8_FILENAME).exists()
        # the copy's cpu profile runs the int8 graphs on onnxruntime; the fp32 repository's config is untouched
        assert (
            '"runtime" value: { string_value: "onnxruntime" }'
            in (tmp_path / "int8" / model / "configs" / "cpu.pbtxt").read_text()
        )
        assert '"runtime"' not in (repo / model / "configs" / "cpu.pbtxt").read_text()


def test_baseline_target_predicts_a_distribution(media):
    """The old design (fusion_emotion.ops.baseline), as `bench --baseline` runs it: full decode + eager PyTorch."""
    from fusion_emotion.ops.baseline import BaselineTarget

    target = BaselineTarget(media["flv"], None, seed=0)
    probs = target.predict(media["flv"], None)
    assert probs.shape == (6,) and abs(float(probs.sum()) - 1.0) < 1e-5
