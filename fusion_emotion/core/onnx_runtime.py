"""onnxruntime sessions configured the same way in Triton's CPU profile and in-process."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def make_session(path: str | Path, intra_op_threads: int = 0, providers: list[str] | None = None):
    """An inference session tuned for serving: full graph optimisation, one inter-op thread.

    ``intra_op_threads`` 0 lets onnxruntime use one thread per physical core.
    """
    import onnxruntime as ort

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


class Encoder:
    """One ONNX encoder: float32 batch in, float32 embeddings out."""

    def __init__(self, path: str | Path, intra_op_threads: int = 0) -> None:
        self.session = make_session(path, intra_op_threads)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return out
