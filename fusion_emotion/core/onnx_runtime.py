"""ONNX encoder sessions configured the same way in Triton's CPU profile and in-process.

Two runtimes run the same ``model.onnx``:

- ``openvino`` (the cpu profile's default): OpenVINO's CPU plugin at f32 inference precision. On the
  2-vCPU Intel Xeon (AVX-512) this project is tested on, one thread ran R3D-18 in 437 ms CPU against
  onnxruntime 1.32's 768 ms, and HuBERT-base (4 s) in 413 against 459 ms, with outputs within 1e-6
  of onnxruntime's (perf/README.md, "CPU encoder runtime").
- ``onnxruntime``: the CPU execution provider (the cpu_int8 profile's QDQ graphs, and the GPU profiles'
  runtime through Triton's onnxruntime backend).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

RUNTIMES = ("openvino", "onnxruntime")
DEFAULT_RUNTIME = "openvino"
"""What the cpu profile's encoder configs name (parameter ``runtime``) and the in-process reference uses."""

SERVING_THREADS = 2
"""OpenVINO threads per encoder in the cpu profiles (parameter ``intra_op_threads``). With one, an encoder
left running alone (every ``preprocess`` instance waiting on it, or a burst's last requests) kept one core
of two busy; two threads cut the idle share from 5-7 % to ~1 % at ~1 % more CPU per request (perf/README.md,
"Two encoder threads")."""

PRECISIONS = ("f32", "bf16")
DEFAULT_PRECISION = "f32"
"""OpenVINO's inference precision. f32 keeps the exported model's numerics; without the hint OpenVINO
computes in bf16 on CPUs with AMX, which is a different model (max |diff| 4e-3 .. 1.3e-2 on the embeddings)."""


def make_session(path: str | Path, intra_op_threads: int = 0, providers: list[str] | None = None):
    """An onnxruntime session tuned for serving: full graph optimisation, one inter-op thread.

    ``intra_op_threads`` 0 lets onnxruntime use one thread per physical core.
    """
    import onnxruntime as ort  # deferred: a stub loads only the runtime its profile names (openvino or this)

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if intra_op_threads > 0:
        opts.intra_op_num_threads = intra_op_threads
    # Idle intra-op threads busy-wait for work by default. Serving runs several
    # processes (decoders, two encoders) on few cores, where a spinning thread
    # steals the core another stage needs; blocking waits measured faster (perf/README.md).
    spin = os.environ.get("FUSION_EMOTION_ORT_SPINNING", "0")
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin == "1" else "0")
    # No CPU arena: with the arena, HuBERT's session grew from 1.2 to 1.4 GB over 55 runs of batch sizes it had
    # already seen and never gave memory back (the soak's per-request growth); without it, 0.65-0.9 GB and flat,
    # at the same speed within this machine's noise (docs/reliability.md, "Encoder memory").
    opts.enable_cpu_mem_arena = os.environ.get("FUSION_EMOTION_ORT_CPU_ARENA", "0") == "1"
    available = ort.get_available_providers()
    chosen = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), sess_options=opts, providers=chosen)
    log.info("loaded %s with %s (intra_op_threads=%s)", Path(path).name, chosen, intra_op_threads or "auto")
    return session


def openvino_config(threads: int = 0, precision: str = DEFAULT_PRECISION) -> dict[str, object]:
    """OpenVINO CPU plugin properties for serving beside other processes.

    One stream, latency hint, and no CPU pinning: OpenVINO pins its threads to cores by default, and two
    encoder processes plus the decoders would then queue on the same core. ``threads`` 0 = OpenVINO's choice.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    config: dict[str, object] = {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "ENABLE_CPU_PINNING": False,
        "INFERENCE_PRECISION_HINT": precision,
    }
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


class _OpenVinoModel:
    """A compiled OpenVINO model with one infer request per calling thread (a request is not thread-safe)."""

    def __init__(self, path: Path, threads: int, precision: str) -> None:
        import openvino as ov  # deferred: a cpu_int8 stub (onnxruntime) never loads OpenVINO (~2 s to import here)

        self.compiled = ov.Core().compile_model(str(path), "CPU", openvino_config(threads, precision))
        self._local = threading.local()
        log.info("loaded %s with OpenVINO CPU, %s (threads=%s)", path.name, precision, threads or "auto")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        # share_outputs=False (the default) copies the output out of the request's reused buffer
        return np.asarray(request.infer({0: batch})[0])


class _OnnxRuntimeModel:
    """An onnxruntime session (thread-safe) called with its one input and one output."""

    def __init__(self, path: Path, threads: int) -> None:
        self.session = make_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self.output_name], {self.input_name: batch})
        return out


class Encoder:
    """One ONNX encoder: float32 batch in, float32 embeddings out, on ``runtime`` (see RUNTIMES)."""

    def __init__(
        self,
        path: str | Path,
        intra_op_threads: int = 0,
        runtime: str = DEFAULT_RUNTIME,
        precision: str = DEFAULT_PRECISION,
    ) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
        self._run: _OpenVinoModel | _OnnxRuntimeModel = (
            _OpenVinoModel(Path(path), intra_op_threads, precision)
            if runtime == "openvino"
            else _OnnxRuntimeModel(Path(path), intra_op_threads)
        )

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._run(np.ascontiguousarray(batch, dtype=np.float32))

    def warm_up(self, item_shape: Sequence[int], max_batch: int) -> tuple[int, ...]:
        """Run the largest batch, then batch 1, on zeros; returns the batch sizes run.

        Paid while the model loads, so READY means ready: lazy initialisation is done, and OpenVINO's
        buffers, sized for the largest batch it has run, are near their steady state (RSS grows by ~30 MB
        after, instead of ~400 MB when warmed at batch 1: docs/reliability.md, "Encoder memory under
        OpenVINO"). In-process rather than Triton's model_warmup, whose batch-8 video tensor (19 MB) would
        grow the stub's shared-memory region for good and fill a 64 MiB /dev/shm (same section).
        """
        sizes = tuple(dict.fromkeys((max(1, max_batch), 1)))
        for n in sizes:
            self(np.zeros((n, *item_shape), dtype=np.float32))
        return sizes
