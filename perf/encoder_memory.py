"""Encoder RSS after a warm-up, then after every batch size the CPU profile's batcher can form.

    .venv/bin/python perf/encoder_memory.py build/demo_repo/audio_encoder/1/model.onnx --warmup 1 --warmup 8,1

Each ``--warmup`` (batch sizes run in that order; the stubs' ``Encoder.warm_up`` runs 8 then 1) is measured in
its own process with the serving ``Encoder`` (OpenVINO f32, one thread, unless ``--runtime``): RSS after
loading, after the warm-up, and after ``--runs`` batches drawn from 1..``--max-batch`` (each size at least
once). What the warm-up leaves to grow is what a server grows after READY.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np

from fusion_emotion import contract as C


def item_shape(path: str) -> tuple[int, ...]:
    """One item's input shape, from the contract, for ``<repository>/<encoder>/<version>/<graph>``."""
    encoder = Path(path).parents[1].name
    if encoder not in (C.VIDEO_ENCODER, C.AUDIO_ENCODER):
        raise SystemExit(f"{path}: not in a {C.VIDEO_ENCODER} or {C.AUDIO_ENCODER} model folder")
    (spec,), _ = C.MODEL_IO[encoder]
    return tuple(spec.dims)


def measure(path: str, warmup: list[int], runtime: str, max_batch: int, runs: int) -> dict:
    # in the measuring child only: the parent must not load a runtime (RSS is the child's)
    import psutil

    from fusion_emotion.core.onnx_runtime import Encoder

    proc = psutil.Process()
    encoder = Encoder(path, 1, runtime)
    item = item_shape(path)
    loaded = proc.memory_info().rss / 2**20
    for b in warmup:
        encoder(np.zeros((b, *item), dtype=np.float32))
    warm = proc.memory_info().rss / 2**20
    rng = random.Random(0)
    sizes = list(range(1, max_batch + 1)) + [rng.randint(1, max_batch) for _ in range(max(0, runs - max_batch))]
    rng.shuffle(sizes)
    for b in sizes:
        encoder(np.random.default_rng(b).standard_normal((b, *item), dtype=np.float32))
    end = proc.memory_info().rss / 2**20
    return {
        "warmup": warmup,
        "rss_loaded_mb": round(loaded),
        "rss_after_warmup_mb": round(warm),
        "rss_end_mb": round(end),
        "growth_after_warmup_mb": round(end - warm),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="an encoder's model.onnx")
    p.add_argument("--warmup", action="append", help="comma-separated batch sizes (repeatable); default 1 and 8,1")
    p.add_argument("--runtime", default="openvino", choices=("openvino", "onnxruntime"))
    p.add_argument("--max-batch", type=int, default=8, help="the config's max_batch_size")
    p.add_argument("--runs", type=int, default=24)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        warmup = [int(b) for b in args.child.split(",") if b]
        result = measure(args.model, warmup, args.runtime, args.max_batch, args.runs)
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    for warmup in args.warmup or ["1", "8,1"]:
        cmd = [sys.executable, __file__, args.model, "--child", warmup, "--runtime", args.runtime]
        cmd += ["--max-batch", str(args.max_batch), "--runs", str(args.runs)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        sys.stdout.write(out.strip().splitlines()[-1] + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
