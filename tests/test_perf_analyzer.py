"""The real perf_analyzer binary (installed by `make setup`) against the real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fusion_emotion import contract as C
from fusion_emotion.cli import build_parser
from fusion_emotion.ops import perf_analyzer as pa_mod
from fusion_emotion.ops.perf_analyzer import PerfAnalyzer, compare_rows, concurrency_args, parse_report, read_csv
from fusion_emotion.ops.perf_inputs import make_input_data
from fusion_emotion.ops.server_stats import TritonStats, stats_delta

ROOT = Path(__file__).resolve().parents[1]

# perf_analyzer 2.51's stdout and --verbose-csv file for one run on this ensemble (format reference)
REPORT = """*** Measurement Settings ***
  Sending 4 benchmark requests
Request concurrency: 2
  Client:
    Request count: 4
    Throughput: 0.266613 infer/sec
    Avg latency: 6333662 usec (standard deviation 785217 usec)
  Server:
    Inference count: 4
    Successful request count: 4
"""
CSV = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
    "Avg latency,request/response,response wait\n"
    "2,0.266613,4276,25206,5,781,6302410,974,6,6002308,8677271,8677271,8677271,6333662,4282,6329318\n"
)


# --------------------------------------------------------------------------- unit
def test_setup_install_is_found_with_its_cuda_runtime():
    pa = PerfAnalyzer.locate()
    assert pa.binary == pa_mod.tool_prefix() / "bin" / "perf_analyzer"
    assert any((d / pa_mod.CUDART_SONAME).is_file() for d in pa.lib_dirs)
    env = pa.env({"LD_LIBRARY_PATH": "/elsewhere"})
    assert env["LD_LIBRARY_PATH"].split(":") == [*map(str, pa.lib_dirs), "/elsewhere"]


def test_cli_runs_the_real_binary_with_args_unchanged():
    out = subprocess.run(
        [sys.executable, "-m", "fusion_emotion.cli", "perf-analyzer", "--version"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "Perf Analyzer Version 2.51.0" in out.stdout + out.stderr  # it prints the version on stderr
    args = build_parser().parse_args(["perf-analyzer", "-m", "fusion_emotion", "-v", "--", "--help"])
    assert args.args == ["-m", "fusion_emotion", "-v", "--", "--help"]


def test_cuda_runtime_found_from_the_distribution_file_list(tmp_path):
    lib = tmp_path / "somewhere" / "lib"
    lib.mkdir(parents=True)
    (lib / "libcudart.so.12").write_bytes(b"")
    info = tmp_path / "nvidia_cuda_runtime_cu12-12.9.79.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nvidia-cuda-runtime-cu12\nVersion: 12.9.79\n")
    (info / "RECORD").write_text("somewhere/lib/libcudart.so.12,,\nsomewhere/lib/other.so,,\n")
    assert pa_mod.cuda_runtime_dirs([tmp_path]) == [lib.resolve()]
    assert pa_mod.cuda_runtime_dirs([tmp_path / "somewhere"]) == []


def test_missing_binary_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(pa_mod.BINARY_ENV, str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="is not a file"):
        PerfAnalyzer.locate()
    monkeypatch.delenv(pa_mod.BINARY_ENV)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="make setup"):
        PerfAnalyzer.locate(prefix=tmp_path)


def test_report_and_csv_parsing(tmp_path):
    assert parse_report(REPORT) == {2: {"request_count": 4.0, "throughput": 0.266613, "server_success": 4.0}}
    path = tmp_path / "pa.csv"
    path.write_text(CSV + "\nServer Metrics,foo\n1,2\n")
    rows = read_csv(path)
    assert len(rows) == 1 and rows[0]["Concurrency"] == 2 and rows[0]["p50 latency"] == 6002308


def test_concurrency_args_fix_the_request_count():
    args = concurrency_args("fusion_emotion", "h:1", Path("in.json"), 4, 16, csv_path=Path("o.csv"))
    joined = " ".join(args)
    assert "--concurrency-range 4 --request-count 16" in joined and "-f o.csv --verbose-csv" in joined
    with pytest.raises(ValueError):
        concurrency_args("m", "h:1", Path("x"), 0, 1)


def test_comparison_flags_more_than_15_percent():
    def run(tp: float, avg: float, p50: float | None, cpu: float | None = None) -> dict:
        return {"throughput_rps": tp, "latency_ms": {"avg": avg, "p50": p50}, "cpu_ms_per_request": cpu}

    same = compare_rows(run(1.0, 1000, 1000, 900), run(1.1, 950, 1040, 1000))
    assert same["disagree"] == [] and same["cpu_ratio"] == pytest.approx(0.9)
    off = compare_rows(run(2.0, 500, 480), run(1.0, 1000, 1000))
    assert off["disagree"] == ["throughput_ratio", "avg_ratio", "p50_ratio"] and off["cpu_ratio"] is None
    pooled = compare_rows(run(1.0, 1000, None), run(1.05, 1000, None))  # no median: not compared
    assert pooled["disagree"] == [] and pooled["p50_ratio"] is None
    failed = compare_rows(run(1.0, 1000, 1000), run(0.0, 1000, 1000))
    assert failed["disagree"] == ["throughput_ratio"]


# --------------------------------------------------------------------------- against the real server
def _run(triton, requests: list[tuple[bytes | None, bytes | None]], tmp_path: Path, count: int):
    """perf_analyzer through our CLI, gRPC, one count window of ``count`` requests at concurrency 1."""
    data = tmp_path / "input.json"
    data.write_text(json.dumps(make_input_data(requests)))
    csv_path = tmp_path / "pa.csv"
    stats = TritonStats(triton.grpc_url)
    before = stats.snapshot()
    args = concurrency_args(C.ENSEMBLE, triton.grpc_url, data, 1, count, csv_path=csv_path)
    proc = subprocess.run(
        [sys.executable, "-m", "fusion_emotion.cli", "perf-analyzer", *args],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    delta = stats_delta(before, stats.snapshot())
    stats.close()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, read_csv(csv_path), delta


@pytest.mark.integration
def test_perf_analyzer_measures_the_ensemble_on_generated_clips(triton, media, tmp_path):
    proc, rows, delta = _run(triton, [(media["flv"], None), (media["mp4_noaudio"], media["wav"])], tmp_path, 4)
    report = parse_report(proc.stdout)[1]
    assert report["request_count"] == 4 and report["server_success"] == 4
    assert len(rows) == 1 and rows[0]["Concurrency"] == 1
    assert rows[0]["Inferences/Second"] > 0 and rows[0]["Avg latency"] > 0
    assert "error" not in (proc.stdout + proc.stderr).lower()
    ensemble = delta[C.ENSEMBLE]
    assert ensemble["requests"] == 4 and ensemble["failed"] == 0


@pytest.mark.integration
def test_perf_analyzer_sends_audio_only_and_video_audio_entries(triton, media, tmp_path):
    # two entries played in turn: 2 audio-only requests (no video-encoder work) and 2 video+audio ones
    proc, rows, delta = _run(triton, [(None, media["wav"]), (media["flv"], media["wav"])], tmp_path, 4)
    assert rows[0]["Inferences/Second"] > 0
    assert delta[C.ENSEMBLE]["requests"] == 4 and delta[C.ENSEMBLE]["failed"] == 0
    assert delta[C.AUDIO_ENCODER]["inferences"] == 4
    assert delta[C.VIDEO_ENCODER]["inferences"] == 2


@pytest.mark.integration
def test_sweep_script_runs_both_tools_against_one_server(triton, media, tmp_path):
    clip = tmp_path / "clip.flv"
    clip.write_bytes(media["flv"])
    out = tmp_path / "out"
    cmd = [
        sys.executable, str(ROOT / "perf" / "perf_analyzer_sweep.py"), "--triton", triton.grpc_url,
        "--video", str(clip), "--concurrency", "1", "--requests", "2", "--warmup", "0", "--bench",
        "--output-dir", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = json.loads((out / "summary.json").read_text())["runs"][0]
    for tool in ("perf_analyzer", "bench"):
        assert run[tool]["succeeded"] == 2 and run[tool]["errors"] == 0 and run[tool]["throughput_rps"] > 0
        assert run[tool]["triton_stats"][C.ENSEMBLE]["requests"] == 2
    assert set(run["comparison"]) >= {"throughput_ratio", "avg_ratio", "p50_ratio", "disagree"}
    header, row = (out / "perf_analyzer.csv").read_text().splitlines()
    assert header.startswith("Concurrency,Inferences/Second") and row.startswith("1,")
    assert "| 1 | 0 | pa / bench |" in proc.stdout
