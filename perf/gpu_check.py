"""The GPU check: what a bare GPU machine can tell about the GPU profiles, in minutes, with one summary table.

Run by ``perf/gpu_check.sh`` on a machine with an NVIDIA GPU, CUDA, PyTorch, torchvision, transformers and
scipy, and no network: the repository, plus at most 64 MiB of carried wheels (``.whl/``: PyAV for decoding
and making the test clips, PyNvVideoCodec for NVDEC). DALI's wheel (~400 MB) does not travel, so the
project's own DALI/NVDEC pipeline runs only where DALI is already installed. Stages, each under its own
time budget:

1. ``encoders``: R3D-18 and HuBERT-base with torch, FP32 and FP16, batch 1..32 (random init: the weights do
   not change the cost), with cuDNN's heuristic algorithm choice, and at batches 1 and 8 the exhaustive
   search (``cudnn.benchmark``): what the first request of a new batch size costs under each.
2. ``drift``: FP16 against FP32 on the serving path's own model inputs of generated clips with speech
   (``perf/fp16_drift.py``): embeddings, probabilities, top emotion. A changed top emotion where FP32's
   top-two margin is clear, or an embedding off by more than 1 % of its scale, is a correctness failure.
3. ``nvdec``: every frame of the generated 720p H.264 clip with an audio track, decoded by NVDEC
   (PyNvVideoCodec); frames/s, the frame count against the demuxer's, and the pixels against PyAV's.
4. ``dali``: the project's DALI pipeline on NVDEC (``core.dali_video``) against the CPU decoder, with the
   clip path's parity tolerances, where DALI is installed.

Each stage imports what it needs inside it: a bare GPU machine may lack one package (PyAV, DALI, the
project's extras) and the other stages still run.

Every result is a JSON line in ``OUT/results.jsonl``; the table goes to stdout; the exit status is 1 when
a stage found a correctness failure (skipped stages are not failures).

    python perf/gpu_check.py --out OUT [--device cuda|cpu] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # perf/ tools beside this one

BATCHES = (1, 2, 4, 8, 16, 32)
EMBEDDING_REL_BOUND = 0.01  # FP16 embedding error, as a share of the embedding's largest magnitude
NVDEC_PIXEL_BOUND = 4.0  # mean |difference| in uint8 levels between NVDEC's and PyAV's RGB frames


@dataclass
class Stage:
    name: str
    status: str = "ok"  # ok | skipped | FAILED
    lines: list[str] = field(default_factory=list)
    failure: str | None = None


class Check:
    def __init__(self, out: Path, device: str, quick: bool) -> None:
        self.out, self.device, self.quick = out, device, quick
        self.stages: list[Stage] = []
        out.mkdir(parents=True, exist_ok=True)
        self.results = (out / "results.jsonl").open("w")

    def emit(self, **fields: Any) -> None:
        self.results.write(json.dumps(fields) + "\n")
        self.results.flush()

    def run(self, name: str, fn: Callable[[Stage], None]) -> None:
        stage = Stage(name)
        t0 = time.monotonic()
        try:
            fn(stage)
        except _Skip as skip:
            stage.status, stage.lines = "skipped", [str(skip)]
        except Exception as exc:  # a stage's own error: the next stages still run
            stage.status, stage.failure = "FAILED", f"{type(exc).__name__}: {exc}"
            (self.out / f"{name}.traceback.txt").write_text(traceback.format_exc())
        if stage.failure and stage.status == "ok":
            stage.status = "FAILED"
        stage.lines.append(f"({time.monotonic() - t0:.0f} s)")
        self.emit(stage=name, status=stage.status, failure=stage.failure)
        self.stages.append(stage)

    def table(self) -> str:
        rows = ["| stage | status | result |", "|---|---|---|"]
        for s in self.stages:
            detail = "; ".join(([s.failure] if s.failure else []) + s.lines)
            rows.append(f"| {s.name} | {s.status} | {detail} |")
        return "\n".join(rows)


class _Skip(Exception):
    """The stage cannot run on this machine (said why, not a failure)."""


# --------------------------------------------------------------------------- stages


def _timed(fn: Callable[[], Any], device: str, iterations: int) -> float:
    """Median seconds of ``fn`` (synchronised on CUDA)."""
    import torch

    times = []
    for _ in range(iterations):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def stage_encoders(check: Check, stage: Stage) -> None:
    import torch
    from fusion_emotion.export.models import AudioEmbedding, build_audio_encoder, build_video_encoder

    from fusion_emotion import contract as C

    torch.manual_seed(0)
    device = torch.device(check.device)
    models = {
        "video": (build_video_encoder().eval(), C.VIDEO_FRAMES.dims),
        "audio": (AudioEmbedding(build_audio_encoder()).eval(), C.AUDIO_WAVEFORM.dims),
    }
    batches = (1,) if check.quick else BATCHES
    for name, (model, dims) in models.items():
        for dtype in (torch.float32, torch.float16):
            m = model.to(device=device, dtype=dtype)
            best = []
            for batch in batches:
                torch.backends.cudnn.benchmark = False  # heuristic: what the profiles set (cudnn_conv_algo_search 1)
                x = torch.randn(batch, *dims, device=device, dtype=dtype)
                with torch.no_grad():
                    first = _timed(lambda: m(x), check.device, 1)  # noqa: B023
                    steady = _timed(lambda: m(x), check.device, 1 if check.quick else 10)  # noqa: B023
                dt = "fp16" if dtype == torch.float16 else "fp32"
                check.emit(stage="encoders", model=name, dtype=dt, batch=batch, first_s=first, steady_s=steady,
                           items_per_s=batch / steady)  # fmt: skip
                best.append(batch / steady)
            stage.lines.append(f"{name} {dt}: up to {max(best):.1f} items/s (batch {batches[int(np.argmax(best))]})")
        if check.device == "cuda" and name == "video":
            _cudnn_search_cost(check, stage, model.to(dtype=torch.float16), dims)


def _cudnn_search_cost(check: Check, stage: Stage, model: Any, dims: tuple[int, ...]) -> None:
    """The first call of a new batch size with cuDNN's exhaustive search (cudnn_conv_algo_search 0) against
    the heuristic, and the steady latency each then gets."""
    import torch

    for batch in (1, 8):
        x = torch.randn(batch + 1, *dims, device="cuda", dtype=torch.float16)  # a shape not seen yet
        out = {}
        for exhaustive in (True, False):
            torch.backends.cudnn.benchmark = exhaustive
            with torch.no_grad():
                out[exhaustive] = (_timed(lambda: model(x), "cuda", 1), _timed(lambda: model(x), "cuda", 10))  # noqa: B023
            x = torch.randn(batch + 2 + int(exhaustive), *dims, device="cuda", dtype=torch.float16)
        check.emit(stage="cudnn_search", batch=batch + 1, exhaustive=out[True], heuristic=out[False])
        stage.lines.append(
            f"video fp16 new batch: first call {out[True][0]:.2f} s exhaustive vs {out[False][0]:.2f} s heuristic, "
            f"then {out[True][1] * 1e3:.1f} vs {out[False][1] * 1e3:.1f} ms"
        )


def stage_drift(check: Check, stage: Stage) -> None:
    try:
        import av  # noqa: F401 - the clips and the serving path's model inputs need it
    except ImportError:
        raise _Skip("PyAV is not installed (carry its wheel in .whl/)") from None
    import fp16_drift

    lines: list[str] = []
    code = fp16_drift.main(
        ["--clips", "1", "--device", check.device] if check.quick else ["--device", check.device, "--naive-layer-norm"],
        write=lines.append,
    )
    for line in lines:
        check.results.write(line)
    summary = json.loads(lines[-1])["summary"]
    naive = summary.get("audio_fp16_layer_norm_max_rel")
    stage.lines.append(
        f"max dp {summary['p_max_abs']:.2e}; embeddings max rel video {summary['video_max_rel']:.1e}, "
        f"audio {summary['audio_max_rel']:.1e}"
        + (f" (FP16 layer norms: {naive:.1e})" if naive else "")
        + f"; top emotion changed on {summary['argmax_flips']} of {summary['clips']}"
    )
    worst = max(summary["video_max_rel"], summary["audio_max_rel"])
    if code != 0 or worst > EMBEDDING_REL_BOUND:
        stage.failure = f"FP16 drift past its bounds (embedding rel {worst:.1e}, flips past margin {code})"


def _clip(check: Check) -> Path:
    """The generated 720p 30 fps H.264 clip with a 48 kHz speech track (made once)."""
    path = check.out / "clip720.mp4"
    if not path.exists():
        from fusion_emotion import testmedia

        seconds = 1.0 if check.quick else 3.5
        speech = testmedia.speech(rate=48_000)[: int(seconds * 48_000)]
        path.write_bytes(testmedia.mp4(seconds=seconds, audio=speech, audio_rate=48_000))
    return path


def stage_nvdec(check: Check, stage: Stage) -> None:
    if check.device != "cuda":
        raise _Skip("no GPU: NVDEC not measured")
    try:
        import av  # noqa: F401
        import PyNvVideoCodec as nvc
    except ImportError as exc:
        raise _Skip(f"{exc.name} is not installed (carry its wheel in .whl/)") from None
    from fusion_emotion.core.video import VideoDecoder

    clip = _clip(check)
    count = VideoDecoder(clip.read_bytes(), want_audio=False).scan_frames().times.size
    decoder = nvc.SimpleDecoder(str(clip), gpu_id=0, use_device_memory=False, output_color_type=nvc.OutputColorType.RGB)
    t0 = time.perf_counter()
    frames = [np.asarray(decoder[i]) for i in range(len(decoder))]
    elapsed = time.perf_counter() - t0
    check.emit(stage="nvdec", frames=len(frames), scan_frames=count, seconds=elapsed, fps=len(frames) / elapsed)
    stage.lines.append(f"{len(frames)} frames of 1280x720 in {elapsed:.2f} s: {len(frames) / elapsed:.0f} frames/s")
    if len(frames) != count:
        stage.failure = f"NVDEC gave {len(frames)} frames, the demuxer has {count}"
        return
    import av as pyav

    with pyav.open(str(clip)) as container:
        ref = [f.to_ndarray(format="rgb24") for _, f in zip(range(8), container.decode(video=0), strict=False)]
    diff = float(np.mean([np.abs(a.reshape(b.shape).astype(int) - b).mean() for a, b in zip(frames, ref)]))
    stage.lines.append(f"first 8 frames vs PyAV: mean |diff| {diff:.2f} levels")
    if diff > NVDEC_PIXEL_BOUND:
        stage.failure = f"NVDEC's frames differ from PyAV's by {diff:.2f} levels (bound {NVDEC_PIXEL_BOUND})"


def stage_dali(check: Check, stage: Stage) -> None:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        raise _Skip("DALI is not installed here (its ~400 MB wheel does not travel): pipeline parity not run") from None
    from fusion_emotion.core.dali_video import DaliBackend
    from fusion_emotion.core.rows import decode_row

    data = _clip(check).read_bytes()
    backend = DaliBackend("gpu" if check.device == "cuda" else "cpu", 1)
    if backend.unavailable:
        stage.failure = f"DALI cannot decode the probe clip: {backend.unavailable}"
        return
    dali, pyav = decode_row(data, None, backend), decode_row(data, None)
    try:
        d = np.abs(dali.host_frames() - pyav.frames)
    finally:
        dali.release()
    stage.lines.append(f"{backend.name} vs PyAV encoder input: mean {d.mean():.4f}, max {d.max():.3f} (0.03 / 0.6)")
    if dali.decoder == "pyav" or d.mean() > 0.03 or d.max() > 0.6:
        stage.failure = f"DALI pipeline parity off (decoder {dali.decoder}, fallback {dali.fallback})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("perf/gpu_check_out"))
    p.add_argument("--device", default=None, help="cuda (default when a GPU is seen) or cpu (a smoke run)")
    p.add_argument("--quick", action="store_true", help="small batches and one clip (smoke run)")
    args = p.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check = Check(args.out, device, args.quick)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none"
    check.emit(stage="env", device=device, gpu=gpu, torch=torch.__version__, cuda=torch.version.cuda)
    for name, fn in (
        ("encoders", stage_encoders),
        ("drift", stage_drift),
        ("nvdec", stage_nvdec),
        ("dali", stage_dali),
    ):
        check.run(name, lambda stage, fn=fn: fn(check, stage))
    table = check.table()
    (args.out / "summary.md").write_text(f"device: {device} ({gpu}), torch {torch.__version__}\n\n{table}\n")
    sys.stdout.write(f"device: {device} ({gpu}), torch {torch.__version__}\n{table}\n")
    return 1 if any(s.status == "FAILED" for s in check.stages) else 0


if __name__ == "__main__":
    sys.exit(main())
