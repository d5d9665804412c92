"""FP16 against FP32: how far the encoders' embeddings and the fused probabilities move on generated clips.

The gpu_fp16 profile runs both encoders in TensorRT FP16 engines, with HuBERT's layer norms computed in FP32
(TensorRT builds ONNX LayerNormalization nodes with their FP32 stash type). This tool measures that plan
where no GPU is at hand: PyTorch's FP16 (half) encoders on the CPU, whose layer norms also accumulate in
FP32, against the FP32 encoders, on the same model inputs the serving path builds (``core.rows.decode_row``)
and the same numpy fusion head. ``--naive-layer-norm`` also runs HuBERT with its layer norms computed in FP16
(what the plan avoids), for comparison. On a GPU, ``--device cuda`` measures the real FP16 kernels
(cuDNN/cuBLAS, not TensorRT's).

    .venv/bin/python perf/fp16_drift.py --clips 6              # demo weights (seed 0), CPU
    .venv/bin/python perf/fp16_drift.py --checkpoint model.pt  # your trained weights

Prints one JSON line per clip and a summary line; exits 1 when the top emotion changes on a clip whose FP32
top-two margin exceeds the drift bound (``--margin``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from fusion_emotion.export.checkpoint import load_checkpoint, random_model
from fusion_emotion.export.models import AudioEmbedding

from fusion_emotion import testmedia
from fusion_emotion.core.embed import embeddings, probabilities
from fusion_emotion.core.fusion import FusionHead
from fusion_emotion.core.rows import decode_row


class HalfLayerNorm(torch.nn.Module):
    """A LayerNorm computed in FP16 throughout (mean and variance too): the precision the plan avoids."""

    def __init__(self, norm: torch.nn.LayerNorm) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        var = ((x - mean) * (x - mean)).mean(dim=-1, keepdim=True)
        y = (x - mean) / torch.sqrt(var + torch.tensor(self.norm.eps, dtype=x.dtype))
        return y * self.norm.weight + self.norm.bias


def half_copy(module: torch.nn.Module, naive_layer_norm: bool = False) -> torch.nn.Module:
    out = copy.deepcopy(module).half().eval()
    if naive_layer_norm:
        for child in list(out.modules()):
            for attr, sub in list(child.named_children()):
                if isinstance(sub, torch.nn.LayerNorm):
                    setattr(child, attr, HalfLayerNorm(sub))
    return out


def clips(count: int) -> list[bytes]:
    speech = testmedia.speech(rate=48_000)
    out = []
    for i in range(count):
        seconds = 1.5 + 0.5 * (i % 3)
        track = np.roll(speech, i * 7919)[: int(seconds * 48_000)]
        out.append(testmedia.mp4(width=640, height=360, seconds=seconds, audio=track, audio_rate=48_000, seed=i))
    return out


def head_of(model: Any) -> FusionHead:
    linears = [m for m in model.fusion_head if isinstance(m, torch.nn.Linear)]
    return FusionHead(
        [m.weight.detach().numpy().astype(np.float32) for m in linears],
        [m.bias.detach().numpy().astype(np.float32) for m in linears],
        float(model.config["temperature"]),
    )


def run(args: argparse.Namespace, write: Callable[[str], Any] = sys.stdout.write) -> int:
    loaded = load_checkpoint(args.checkpoint) if args.checkpoint else random_model(args.seed)
    model, device = loaded.model.eval(), torch.device(args.device)
    head = head_of(model)
    encoders = {
        "video": (model.video_encoder.to(device), half_copy(model.video_encoder).to(device)),
        "audio": (AudioEmbedding(model.audio_encoder).to(device), half_copy(AudioEmbedding(model.audio_encoder)).to(device)),
    }  # fmt: skip
    if args.naive_layer_norm:
        encoders["audio_fp16_layer_norm"] = (encoders["audio"][0], half_copy(encoders["audio"][0], True).to(device))
    worst: dict[str, float] = {}
    flips = risky = 0
    with torch.no_grad():
        for i, data in enumerate(clips(args.clips)):
            row = decode_row(data, None)
            inputs = {"video": row.frames, "audio": row.waveform, "audio_fp16_layer_norm": row.waveform}
            emb: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            for name, (fp32, fp16) in encoders.items():
                x = torch.from_numpy(inputs[name][None]).to(device)
                emb[name] = (fp32(x).float().cpu().numpy(), fp16(x.half()).float().cpu().numpy())
            p32 = probabilities(head, embeddings(1, ([0], emb["video"][0]), ([0], emb["audio"][0])))[0]
            p16 = probabilities(head, embeddings(1, ([0], emb["video"][1]), ([0], emb["audio"][1])))[0]
            line: dict[str, Any] = {"clip": i}
            for name, (a, b) in emb.items():
                d = float(np.abs(a - b).max())
                line[f"{name}_max_abs"] = d
                line[f"{name}_max_rel"] = d / max(float(np.abs(a).max()), 1e-12)
                line[f"{name}_cosine"] = float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))
            top2 = np.sort(p32)[-2:]
            line.update(
                p_max_abs=float(np.abs(p32 - p16).max()),
                same_argmax=bool(p32.argmax() == p16.argmax()),
                fp32_margin=float(top2[1] - top2[0]),
            )
            flips += int(not line["same_argmax"])
            risky += int(not line["same_argmax"] and line["fp32_margin"] > args.margin)
            for k, v in line.items():
                if k.endswith(("max_abs", "max_rel")):
                    worst[k] = max(worst.get(k, 0.0), v)
            write(json.dumps(line) + "\n")
    summary = {"clips": args.clips, "device": args.device, "weights": "checkpoint" if args.checkpoint else
               f"random seed {args.seed}", "argmax_flips": flips, "flips_past_margin": risky, **worst}  # fmt: skip
    write(json.dumps({"summary": summary}) + "\n")
    return 1 if risky else 0


def main(argv: list[str] | None = None, write: Callable[[str], Any] = sys.stdout.write) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="a fusion-emotion/v1 checkpoint (default: demo weights)")
    p.add_argument("--seed", type=int, default=0, help="demo weights' seed (default 0)")
    p.add_argument("--clips", type=int, default=6, help="generated clips (default 6)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--naive-layer-norm", action="store_true", help="also HuBERT with FP16 layer norms")
    p.add_argument("--margin", type=float, default=1e-3, help="FP32 top-two margin past which a flip fails")
    return run(p.parse_args(argv), write)


if __name__ == "__main__":
    sys.exit(main())
