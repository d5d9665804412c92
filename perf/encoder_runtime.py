"""The encoders on onnxruntime against OpenVINO (f32, and bf16 for reference): CPU ms per call, and the gap.

    .venv/bin/python perf/encoder_runtime.py build/perf/repo --repeats 5
    .venv/bin/python perf/encoder_runtime.py build/perf/repo --graph model_int8.onnx --precisions f32
    .venv/bin/python perf/encoder_runtime.py build/perf/repo --precisions f32 --batch 4

One thread each, batch 1 unless ``--batch`` (times are then per item, to show whether batching saves CPU), the same exported graph through ``fusion_emotion.core.onnx_runtime.Encoder`` (the code
the cpu profile serves with). Prints, per encoder and runtime, the minimum and median process CPU time of
``--repeats`` calls after one warm-up, and the largest absolute difference to onnxruntime's output.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.core.onnx_runtime import PRECISIONS, Encoder

SHAPES = {C.VIDEO_ENCODER: C.VIDEO_FRAMES.dims, C.AUDIO_ENCODER: C.AUDIO_WAVEFORM.dims}  # one item


def cpu_ms(fn, repeats: int, per: int = 1) -> tuple[float, float]:
    """Minimum and median process CPU ms of ``repeats`` calls after one warm-up, divided by ``per``."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.process_time()
        fn()
        times.append(1000 * (time.process_time() - t) / per)
    return min(times), float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("repository", type=Path, help="an exported repository (fusion-emotion export)")
    p.add_argument("--graph", default=C.ONNX_FILENAME, help="file in each encoder's version folder")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="OpenVINO precisions to time")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=1, help="items per call (times are per item)")
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error("--batch must be at least 1")
    print(f"batch {args.batch}")
    print("encoder | runtime | CPU ms min per item | CPU ms median per item | max |diff| to onnxruntime | max |output|")
    for model, shape in SHAPES.items():
        path = args.repository / model / "1" / args.graph
        x = np.random.default_rng(0).standard_normal((args.batch, *shape)).astype(np.float32)
        ort = Encoder(path, 1, "onnxruntime")
        want = ort(x)
        scale = float(np.abs(want).max())
        lo, med = cpu_ms(lambda ort=ort, x=x: ort(x), args.repeats, args.batch)
        print(f"{model} | onnxruntime | {lo:.0f} | {med:.0f} | 0 | {scale:.2f}")
        for precision in args.precisions.split(","):
            ov = Encoder(path, 1, "openvino", precision)
            diff = float(np.abs(ov(x) - want).max())
            lo, med = cpu_ms(lambda ov=ov, x=x: ov(x), args.repeats, args.batch)
            print(f"{model} | openvino {precision} | {lo:.0f} | {med:.0f} | {diff:.1e} | {scale:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
