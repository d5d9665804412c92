"""Model Analyzer glue: the repository it searches, the tritonserver wrapper it launches, its bounded config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import free_port, http_ready

from fusion_emotion import contract as C
from fusion_emotion.ops import model_analyzer as ma


def _repo(root: Path) -> Path:
    """A miniature exported repository: a model with a cpu profile config and one without."""
    enc = root / C.VIDEO_ENCODER
    (enc / "1").mkdir(parents=True)
    (enc / "configs").mkdir()
    (enc / "config.pbtxt").write_text('name: "video_encoder"\nbackend: "onnxruntime"\n')
    (enc / "configs" / "cpu.pbtxt").write_text('name: "video_encoder"\nbackend: "python"\n')
    (enc / "configs" / "gpu_fp16.pbtxt").write_text("fp16\n")
    (enc / "1" / "model.onnx").write_bytes(b"onnx")
    pre = root / C.PREPROCESS
    (pre / "1" / "__pycache__").mkdir(parents=True)
    (pre / "config.pbtxt").write_text('name: "preprocess"\n')
    (pre / "1" / "model.py").write_text("# adapter\n")
    (pre / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"")
    (root / "notes").mkdir()  # not a model
    return root


def test_prepared_repository_has_the_cpu_profile_as_default_config(tmp_path):
    src = _repo(tmp_path / "src")
    dst = ma.prepare_repository(src, tmp_path / "dst")
    assert (dst / C.VIDEO_ENCODER / "config.pbtxt").read_text() == 'name: "video_encoder"\nbackend: "python"\n'
    assert (dst / C.PREPROCESS / "config.pbtxt").read_text() == 'name: "preprocess"\n'
    assert not (dst / C.VIDEO_ENCODER / "configs").exists()
    assert not (dst / C.PREPROCESS / "1" / "__pycache__").exists() and not (dst / "notes").exists()
    onnx = dst / C.VIDEO_ENCODER / "1" / "model.onnx"
    assert (
        onnx.read_bytes() == b"onnx"
        and onnx.stat().st_ino == (src / C.VIDEO_ENCODER / "1" / "model.onnx").stat().st_ino
    )
    # the source keeps its own default config
    assert (src / C.VIDEO_ENCODER / "config.pbtxt").read_text().endswith('"onnxruntime"\n')
    ma.prepare_repository(src, dst)  # re-runnable


def test_config_bounds_the_search_and_runs_on_cpu(tmp_path):
    cfg = ma.analyzer_config(tmp_path / "r", tmp_path / "o", tmp_path / "w", Path("/pa"), tmp_path / "in.json")
    assert cfg["triton_launch_mode"] == "local" and cfg["run_config_search_mode"] == "quick"
    assert cfg["bls_composing_models"] == cfg["cpu_only_composing_models"] == "video_encoder,audio_encoder"
    spec = cfg["profile_models"][C.PREPROCESS]
    assert spec["cpu_only"] is True
    assert spec["perf_analyzer_flags"]["concurrency-range"] == 4
    assert spec["perf_analyzer_flags"]["measurement-mode"] == "count_windows"
    assert cfg["max_percentage_of_search_space"] == 1.0 and cfg["concurrency_sweep_disable"] is True
    assert cfg["run_config_search_max_instance_count"] == 4 and cfg["run_config_search_max_model_batch_size"] == 4


def test_wrapper_drops_the_flags_the_analyzer_owns():
    text = ma.server_wrapper_text(Path("/x/repo"))
    exec_line = text[text.index("exec ") :]
    for flag in (*ma.ANALYZER_OWNED, *ma.NOT_FOR_ANALYZER):
        assert f"{flag}=" not in exec_line
    assert "--backend-directory=" in exec_line and '"$@"' in exec_line
    assert "shm-region-prefix-name=fema$$_" in exec_line


@pytest.mark.integration
def test_wrapper_starts_the_bundled_server_as_the_analyzer_does(demo_repository, tmp_path):
    """Started with the flags Model Analyzer passes, the wrapper serves a model of the prepared repository."""
    repo = ma.prepare_repository(demo_repository, tmp_path / "repo")
    wrapper = tmp_path / "tritonserver"
    wrapper.write_text(ma.server_wrapper_text(repo))
    wrapper.chmod(0o755)
    http, grpc, metrics = free_port(), free_port(), free_port()
    cmd = [
        str(wrapper), "--model-repository", str(repo), "--model-control-mode", "explicit",
        "--load-model", C.FUSION_HEAD, "--http-port", str(http), "--grpc-port", str(grpc),
        "--metrics-port", str(metrics),
    ]  # fmt: skip
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        deadline = time.monotonic() + 180
        url = f"http://127.0.0.1:{http}/v2/models/{C.FUSION_HEAD}/ready"
        while time.monotonic() < deadline and proc.poll() is None and not http_ready(url):
            time.sleep(0.3)
        assert http_ready(url), (tmp_path / "server.log").read_text(errors="replace")[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _variant(out: Path, name: str, model: str, count: int, batch: int) -> None:
    (out / name).mkdir(parents=True)
    (out / name / "config.pbtxt").write_text(
        f'name: "{model}"\nmax_batch_size: {batch}\ninstance_group {{\n  count: {count}\n  kind: KIND_CPU\n}}\n'
        "dynamic_batching {\n  max_queue_delay_microseconds: 2000\n}\n"
    )


def _measurement(tp: float, avg_ms: float) -> dict:
    tags = [["perf_latency_avg", {"_value": avg_ms}], ["perf_throughput", {"_value": tp}]]
    return {
        "_model_config_measurements": [{"_model_specific_pa_params": {"concurrency-range": "4"}, "_non_gpu_data": tags}]
    }


def test_measurements_are_read_from_the_checkpoint_with_their_settings(tmp_path):
    out = tmp_path / "output_repository"
    _variant(out, "preprocess_config_default", "preprocess", 4, 8)
    _variant(out, "preprocess_config_1", "preprocess", 2, 2)
    _variant(out, "video_encoder_config_1", "video_encoder", 2, 2)
    _variant(out, "audio_encoder_config_0", "audio_encoder", 1, 1)
    pa = "-m preprocess -b 1 -i grpc --concurrency-range=4"
    results = {
        "preprocess_config_default": [{}, {f"preprocess_config_default {pa}": _measurement(0.5, 8000)}],
        "preprocess_config_1": [
            {},
            {f"preprocess_config_1 {pa} video_encoder_config_1,audio_encoder_config_0": _measurement(0.75, 5000)},
        ],
    }
    ckpt = tmp_path / "0.ckpt"
    ckpt.write_text(json.dumps({"ResultManager.results": {"_results": {"preprocess": results}}}))
    found = {m["variants"][0]: m for m in ma.measurements(ckpt, out)}
    assert found["preprocess_config_default"]["throughput_rps"] == 0.5
    assert found["preprocess_config_default"]["settings"]["preprocess"]["instances"] == 4
    best = found["preprocess_config_1"]
    assert best["variants"] == ["preprocess_config_1", "video_encoder_config_1", "audio_encoder_config_0"]
    assert best["settings"]["video_encoder"] == {"instances": 2, "max_batch_size": 2, "dynamic_batching": True}
    assert best["concurrency"] == 4 and best["latency_avg_ms"] == 5000

    # the pick served under --profile cpu: encoders' configs/cpu.pbtxt, preprocess's config.pbtxt; source intact
    src = _repo(tmp_path / "src")
    before = (src / C.VIDEO_ENCODER / "configs" / "cpu.pbtxt").read_text()
    dst = ma.recommended_repository(src, ["preprocess_config_1", "video_encoder_config_1"], out, tmp_path / "rec")
    assert "count: 2" in (dst / C.VIDEO_ENCODER / "configs" / "cpu.pbtxt").read_text()
    assert "max_batch_size: 2" in (dst / C.PREPROCESS / "config.pbtxt").read_text()
    assert (src / C.VIDEO_ENCODER / "configs" / "cpu.pbtxt").read_text() == before
    assert (dst / C.VIDEO_ENCODER / "1" / "model.onnx").stat().st_ino == (
        src / C.VIDEO_ENCODER / "1" / "model.onnx"
    ).stat().st_ino
