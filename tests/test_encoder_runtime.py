"""The encoders' CPU runtimes: OpenVINO (the cpu profile) against onnxruntime on the same exported graphs."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from fusion_emotion import contract as C
from fusion_emotion.core.onnx_runtime import (
    DEFAULT_PRECISION,
    DEFAULT_RUNTIME,
    SERVING_THREADS,
    Encoder,
    openvino_config,
)
from fusion_emotion.repository import parameters

ROOT = Path(__file__).resolve().parents[1]


def _inputs(model: str, batch: int, seed: int = 0) -> np.ndarray:
    dims = C.VIDEO_FRAMES.dims if model == C.VIDEO_ENCODER else C.AUDIO_WAVEFORM.dims
    return np.random.default_rng(seed).standard_normal((batch, *dims)).astype(np.float32)


@pytest.mark.parametrize("model", [C.VIDEO_ENCODER, C.AUDIO_ENCODER])
def test_openvino_f32_matches_onnxruntime(demo_repository: Path, model: str) -> None:
    """Same graph, same numbers: f32 OpenVINO is the exported model, not an approximation of it."""
    path = demo_repository / model / "1" / C.ONNX_FILENAME
    ov, ort = Encoder(path, 1, "openvino"), Encoder(path, 1, "onnxruntime")
    for batch in (1, 3):
        x = _inputs(model, batch, seed=batch)
        got, want = ov(x), ort(x)
        assert got.shape == want.shape == (batch, C.VIDEO_EMBED_DIM if model == C.VIDEO_ENCODER else C.AUDIO_EMBED_DIM)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, float(np.abs(want).max())), rtol=0)


def test_openvino_encoder_is_safe_across_threads(demo_repository: Path) -> None:
    """The in-process reference is called from many threads (bench --local): each gets its own infer request."""
    enc = Encoder(demo_repository / C.AUDIO_ENCODER / "1" / C.ONNX_FILENAME, 1, "openvino")
    xs = [_inputs(C.AUDIO_ENCODER, 1, seed=s) for s in range(4)]
    want = [enc(x) for x in xs]
    got: dict[int, np.ndarray] = {}

    def run(i: int) -> None:
        for _ in range(3):
            got[i] = enc(xs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        np.testing.assert_array_equal(got[i], want[i])
    # outputs are copies, not views of a request's reused buffer
    first = enc(xs[0])
    enc(xs[1])
    np.testing.assert_array_equal(first, want[0])


def test_warm_up_runs_the_largest_batch_so_later_batches_add_little(demo_repository: Path) -> None:
    """OpenVINO keeps buffers for the largest batch it has run. Warmed at batch 1 only, R3D-18's RSS grew
    ~356 MB over batches 1-8 after; warmed at 8 then 1, ~36 MB (docs/reliability.md, "Encoder memory
    under OpenVINO"). The stubs warm up this way in initialize, before READY."""
    import psutil

    enc = Encoder(demo_repository / C.VIDEO_ENCODER / "1" / C.ONNX_FILENAME, 0, "openvino")
    proc = psutil.Process()
    loaded = proc.memory_info().rss
    assert enc.warm_up(C.VIDEO_FRAMES.dims, 8) == (8, 1)
    warm = proc.memory_info().rss
    for batch in (7, 4):
        enc(_inputs(C.VIDEO_ENCODER, batch))
    grown = proc.memory_info().rss - warm
    assert warm - loaded > 200 * 2**20, "the warm-up should have allocated for batch 8"
    assert grown < 100 * 2**20, f"RSS grew {grown / 2**20:.0f} MB after warm-up"
    assert Encoder(demo_repository / C.AUDIO_ENCODER / "1" / C.ONNX_FILENAME, 1, "onnxruntime").warm_up(
        C.AUDIO_WAVEFORM.dims, 0
    ) == (1,)


def test_unknown_runtime_or_precision_is_named(demo_repository: Path) -> None:
    path = demo_repository / C.VIDEO_ENCODER / "1" / C.ONNX_FILENAME
    with pytest.raises(ValueError, match="runtime must be one of openvino, onnxruntime, not 'tensorflow'"):
        Encoder(path, 1, "tensorflow")
    with pytest.raises(ValueError, match="precision must be one of f32, bf16, not 'f16'"):
        Encoder(path, 1, "openvino", "f16")


def test_openvino_config_never_pins_and_keeps_f32() -> None:
    """Pinned threads of two encoder processes would queue on one core; no hint would mean bf16 on AMX CPUs."""
    cfg = openvino_config(1)
    assert cfg["ENABLE_CPU_PINNING"] is False
    assert cfg["INFERENCE_PRECISION_HINT"] == "f32" == DEFAULT_PRECISION
    assert cfg["INFERENCE_NUM_THREADS"] == 1 and cfg["NUM_STREAMS"] == 1
    assert "INFERENCE_NUM_THREADS" not in openvino_config(0)


@pytest.mark.parametrize("profile", ["cpu", "cpu_dali"])
@pytest.mark.parametrize("model", [C.VIDEO_ENCODER, C.AUDIO_ENCODER])
def test_cpu_profiles_name_the_default_runtime(model: str, profile: str) -> None:
    """The served cpu profiles and the in-process reference (DEFAULT_RUNTIME) run the same runtime."""
    params = parameters((ROOT / "model_repository" / model / "configs" / f"{profile}.pbtxt").read_text())
    assert params["runtime"] == DEFAULT_RUNTIME == "openvino"
    assert params["precision"] == DEFAULT_PRECISION
    assert int(params["intra_op_threads"]) == SERVING_THREADS == 2


def test_int8_profile_stays_on_onnxruntime(tmp_path: Path) -> None:
    """quantize's cpu_int8 config swaps the cpu profile's runtime for onnxruntime, where its drift was measured,
    and its OpenVINO thread count for onnxruntime's."""
    from fusion_emotion.ops import quantize

    repo = tmp_path / "repo"
    for model in (C.VIDEO_ENCODER, C.AUDIO_ENCODER):
        (repo / model / "configs").mkdir(parents=True)
        src = ROOT / "model_repository" / model / "configs" / "cpu.pbtxt"
        (repo / model / "configs" / "cpu.pbtxt").write_text(src.read_text())
        text = quantize.write_int8_config(repo, model).read_text()
        params = parameters(text)
        assert params["runtime"] == quantize.INT8_RUNTIME == "onnxruntime"
        assert params["onnx_filename"] == quantize.INT8_FILENAME
        assert text.count('key: "runtime"') == 1 and '"precision"' not in text
        # two onnxruntime threads served no more requests/s than one, at ~4.5 % more CPU per request
        assert int(params["intra_op_threads"]) == quantize.INT8_THREADS == 1 and text.count('"intra_op_threads"') == 1


def _libraries(pid: int) -> set[str]:
    """File names of the shared libraries mapped into ``pid``."""
    from fusion_emotion.server import procs

    return {path.name for path in procs.mapped_libraries(pid)}


@pytest.mark.integration
def test_served_cpu_profile_runs_openvino(triton) -> None:
    """In the live cpu profile exactly the two encoder stubs run OpenVINO, and none loads onnxruntime."""
    from fusion_emotion.server import procs

    stubs = procs.stubs(triton.proc.pid)
    with_ov = {model for pid, model in stubs.items() if any("libopenvino" in lib for lib in _libraries(pid))}
    with_ort = {model for pid, model in stubs.items() if any("onnxruntime" in lib for lib in _libraries(pid))}
    assert with_ov == {C.VIDEO_ENCODER, C.AUDIO_ENCODER}, stubs
    assert with_ort == set(), with_ort
