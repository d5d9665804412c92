"""ONNX Runtime's CPU arena on or off for an encoder: RSS and per-item time over mixed batch sizes.

    .venv/bin/python perf/ort_arena.py build/demo_repo/audio_encoder/1/model.onnx --runs 60

Runs the model once per batch size (1, 2, 3, 4, 8), then draws batch sizes at random;
prints, per mode, RSS after that first pass, RSS at the end and the median milliseconds
per item by batch size. Each mode runs in its own process (arenas never shrink).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time

import numpy as np

BATCHES = (1, 2, 3, 4, 8)
MODES = ("on", "off", "same")


def measure(path: str, mode: str, runs: int) -> dict:
    """One mode in this process: "on" (ORT default), "off" (no CPU arena), "same" (arena, kSameAsRequested)."""
    # in the measuring child only: each mode runs in a process of its own (an arena never shrinks)
    import onnxruntime as ort
    import psutil

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    if mode == "off":
        opts.enable_cpu_mem_arena = False
    if mode == "same":
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))
        opts.add_session_config_entry("session.use_env_allocators", "1")
    session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    item_shape = [d if isinstance(d, int) else 64000 for d in inp.shape[1:]]
    proc, rng = psutil.Process(), random.Random(0)
    rss, times = [], {}
    for i in range(max(runs, len(BATCHES))):
        b = BATCHES[i] if i < len(BATCHES) else rng.choice(BATCHES)
        x = np.random.default_rng(i).standard_normal((b, *item_shape), dtype=np.float32)
        t = time.perf_counter()
        session.run(None, {inp.name: x})
        times.setdefault(b, []).append(time.perf_counter() - t)
        rss.append(proc.memory_info().rss / 2**20)
    return {
        "mode": mode,
        "rss_after_first_pass_mb": round(rss[len(BATCHES) - 1]),
        "rss_end_mb": round(rss[-1]),
        "rss_max_mb": round(max(rss)),
        "ms_per_item": {b: round(1000 * float(np.median(v)) / b) for b, v in sorted(times.items())},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="an encoder's model.onnx")
    p.add_argument("--runs", type=int, default=60)
    p.add_argument("--mode", choices=MODES, help="measure one mode in this process (used by the parent)")
    args = p.parse_args(argv)
    if args.mode:
        sys.stdout.write(json.dumps(measure(args.model, args.mode, args.runs)) + "\n")
        return 0
    for mode in MODES:
        out = subprocess.run(
            [sys.executable, __file__, args.model, "--runs", str(args.runs), "--mode", mode],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        sys.stdout.write(out.strip().splitlines()[-1] + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
