"""GPU check stages (run by perf/gpu_check.sh): decode throughput, encoder throughput. Prints numbers, asserts none.

    python perf/gpu_check.py clip OUT.mp4                       # the generated RAVDESS-like 720p H.264 clip
    python perf/gpu_check.py decode CLIP --device gpu --seconds 60 [--pipelines 1,4]
    python perf/gpu_check.py encoders --device cuda --dtype fp16 --batches 1,2,4,8,16,32

``decode`` measures two things with DALI (``device gpu`` = NVDEC through ``decoders.video`` mixed, ``cpu``
= DALI's CPU decoder, for a smoke run without a GPU): every frame of the clip (frames/s, the decoder's
raw rate), and the serving path itself (``core/dali_video.py``: scan, 16 selected frames, resize, crop,
normalise; clips/s), with 1 and several pipelines in threads (one pipeline drives one NVDEC engine).
``encoders`` times R3D-18 and HuBERT-base (random init: the weights do not change the cost) with torch,
in FP16 on CUDA or FP32 on the CPU. Every result is one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from fusion_emotion import contract as C


def _emit(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def cmd_clip(args: argparse.Namespace) -> None:
    from fusion_emotion import testmedia

    data = testmedia.mp4(seconds=args.clip_seconds)  # 1280x720 30 fps H.264 ~8 Mbit/s, as in the tests
    Path(args.output).write_bytes(data)
    _emit(stage="clip", path=str(args.output), bytes=len(data), seconds=args.clip_seconds)


def _all_frames_pipeline(device: str):  # noqa: ANN202 - DALI pipeline
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=2, device_id=0 if device == "gpu" else None)
    def every_frame():  # noqa: ANN202
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        return fn.experimental.decoders.video(encoded, device="mixed" if device == "gpu" else "cpu")

    pipe = every_frame(exec_async=False, exec_pipelined=False)
    pipe.build()
    return pipe


def _threads(n: int, seconds: float, work) -> tuple[int, float]:  # noqa: ANN001 - callable(i) -> units
    """Run ``work(i)`` in ``n`` threads for ``seconds``; (units done, elapsed)."""
    done = [0] * n
    stop = time.monotonic() + seconds

    def loop(i: int) -> None:
        while time.monotonic() < stop:
            done[i] += work(i)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done), time.monotonic() - t0


def _decode_all_frames(data: bytes, device: str, n: int, seconds: float, frames_in_clip: int) -> None:
    pipes = [_all_frames_pipeline(device) for _ in range(n)]

    def every(i: int) -> int:
        pipes[i].feed_input("encoded", [np.frombuffer(data, np.uint8)])
        (out,) = pipes[i].run()
        return int(out.as_tensor().shape()[1])

    every(0)  # warm
    frames, elapsed = _threads(n, seconds, every)
    _emit(stage="decode_all_frames", device=device, pipelines=n, frames=frames, seconds=round(elapsed, 2),
          frames_per_s=round(frames / elapsed, 1), clips_per_s=round(frames / frames_in_clip / elapsed, 2))  # fmt: skip


def _serving_path(data: bytes, device: str, n: int, seconds: float) -> None:
    from fusion_emotion.core import dali_video
    from fusion_emotion.core.rows import decode_row

    backend = dali_video.DaliBackend(device, n)

    def clip(i: int) -> int:
        got = decode_row(data, None, backend)
        if got.decoder == "pyav":
            raise RuntimeError(f"DALI did not serve the clip ({got.fallback})")
        got.release()
        return 1

    clip(0)
    clips, elapsed = _threads(n, seconds, clip)
    _emit(stage="serving_path_clip", device=device, pipelines=n, clips=clips, seconds=round(elapsed, 2),
          clips_per_s=round(clips / elapsed, 2), includes="scan + audio track (PyAV) + 16 frames + QA copies")  # fmt: skip


def cmd_decode(args: argparse.Namespace) -> None:
    from fusion_emotion.core.video import VideoDecoder

    data = Path(args.clip).read_bytes()
    frames_in_clip = VideoDecoder(data, want_audio=False).scan_frames().times.size
    for n in (int(p) for p in args.pipelines.split(",")):
        _decode_all_frames(data, args.device, n, args.seconds / 2, frames_in_clip)
        _serving_path(data, args.device, n, args.seconds / 2)


def cmd_encoders(args: argparse.Namespace) -> None:
    import torch
    from fusion_emotion.export.models import AudioEmbedding, build_audio_encoder, build_video_encoder

    device = torch.device(args.device)
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    torch.manual_seed(0)
    encoders = {
        C.VIDEO_ENCODER: (build_video_encoder(), C.VIDEO_FRAMES.dims),
        C.AUDIO_ENCODER: (AudioEmbedding(build_audio_encoder()), C.AUDIO_WAVEFORM.dims),
    }
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for name, (model, dims) in encoders.items():
        model = model.eval().to(device=device, dtype=dtype)
        for batch in (int(b) for b in args.batches.split(",")):
            x = torch.randn(batch, *dims, device=device, dtype=dtype)
            with torch.inference_mode():
                for _ in range(args.warmup):
                    model(x)
                sync()
                times = []
                for _ in range(args.iterations):
                    t0 = time.perf_counter()
                    model(x)
                    sync()
                    times.append(time.perf_counter() - t0)
            ms = 1000 * float(np.median(times))
            _emit(stage="encoder", model=name, device=args.device, dtype=args.dtype, batch=batch,
                  ms_per_batch=round(ms, 2), items_per_s=round(batch / ms * 1000, 1))  # fmt: skip
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("clip")
    c.add_argument("output")
    c.add_argument("--clip-seconds", type=float, default=3.5)
    d = sub.add_parser("decode")
    d.add_argument("clip")
    d.add_argument("--device", choices=dali_devices(), default="gpu")
    d.add_argument("--seconds", type=float, default=60.0, help="measuring time per pipeline count")
    d.add_argument("--pipelines", default="1,4", help="comma-separated pipeline (thread) counts")
    e = sub.add_parser("encoders")
    e.add_argument("--device", default="cuda")
    e.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16")
    e.add_argument("--batches", default="1,2,4,8,16,32")
    e.add_argument("--iterations", type=int, default=20)
    e.add_argument("--warmup", type=int, default=3)
    args = p.parse_args(argv)
    {"clip": cmd_clip, "decode": cmd_decode, "encoders": cmd_encoders}[args.cmd](args)
    return 0


def dali_devices() -> tuple[str, ...]:
    return ("cpu", "gpu")


if __name__ == "__main__":
    sys.exit(main())
