"""``fusion-emotion quantize``: an int8 CPU profile of an exported repository.

Why: on CPU the two encoders are about 70 % of a request's compute; int8 kernels
(VNNI/AVX2) cut that by 2-3x. onnxruntime's static quantization (QDQ format) needs
activation ranges from representative inputs, so the tool generates its own
calibration set with ``fusion_emotion.testmedia`` (speech + face clips, several seeds,
texts and resolutions) run through the real preprocessing, and then measures
how far the probabilities move from fp32 on held-out clips.

Outputs, next to the fp32 ``model.onnx`` of each encoder: ``model_int8.onnx`` and
``configs/cpu_int8.pbtxt`` (the cpu profile naming ``model_int8.onnx`` through an
``onnx_filename`` parameter), ``quantize_report.json`` at the repository root, and
with ``--serving-repository OUT`` a ready-to-serve copy (hard links) whose encoders'
``model.onnx`` are the int8 graphs, so ``fusion-emotion triton --profile cpu`` and
``bench --local`` run int8 unchanged.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fusion_emotion import contract as C

log = logging.getLogger(__name__)

INT8_FILENAME = "model_int8.onnx"
INT8_CONFIG = "cpu_int8"
INT8_RUNTIME = "onnxruntime"
"""The int8 graphs run where they were calibrated and measured: onnxruntime's CPU provider (QDQ)."""
INT8_THREADS = 1
"""onnxruntime threads per int8 encoder: two (the fp32 profile's OpenVINO count) served no more requests/s here
and cost ~4.5 % more CPU per request (perf/README.md, "Two encoder threads")."""
# HuBERT's attention (activation x activation MatMuls, softmax, LayerNorm) loses too
# much under static activation quantization; its weight MatMuls and the whole R3D-18
# quantize well. Audio therefore quantizes weight-carrying MatMuls only (measured).
OP_TYPES = {C.VIDEO_ENCODER: ["Conv", "MatMul", "Gemm"], C.AUDIO_ENCODER: ["MatMul", "Gemm"]}

_TEXTS = (
    "Kids are talking by the door.",
    "Dogs are sitting by the door.",
    "It is eleven o'clock. Please sit down.",
    "The quick brown fox jumps over the lazy dog.",
    "I never said she stole my money.",
    "Could you please close the window?",
)


def synth_clips(count: int, offset: int = 0) -> Iterator[bytes]:
    """RAVDESS/CREMA-D-like clips (speech + moving face), different per index."""
    from fusion_emotion import testmedia  # optional: [dev] (espeak-ng speech, the astronaut photo)

    for i in range(offset, offset + count):
        text = _TEXTS[i % len(_TEXTS)]
        if i % 3 == 2:
            yield testmedia.flv(audio=testmedia.speech(text=text, rate=44_100), audio_rate=44_100, seed=i)
        else:
            sec = 2.5 + (i % 4) * 0.5
            yield testmedia.mp4(
                seconds=sec,
                audio=testmedia.speech(text=text, rate=48_000),
                audio_rate=48_000,
                seed=i,
                video_bitrate=2_000_000,
            )


def _weight_matmuls(model_path: Path) -> list[str]:
    """Names of MatMul/Gemm nodes with an initializer input: the ones worth int8 in a transformer."""
    import onnx  # optional: [export]

    model = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and any(x in inits for x in n.input)]


def quantize_encoder(src: Path, dst: Path, model: str, samples: list[np.ndarray]) -> None:
    """Static QDQ quantization: per-channel symmetric int8 weights, asymmetric uint8 activations."""
    # optional: [models] (onnxruntime; kept out of the CLI's start-up)
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = C.VIDEO_FRAMES.name if model == C.VIDEO_ENCODER else C.AUDIO_WAVEFORM.name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(samples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.it, None)
            return None if x is None else {input_name: x[None]}

    pre = dst.with_name(dst.stem + ".pre.onnx")
    tmp = dst.with_name(dst.stem + ".tmp.onnx")  # renamed at the end: never truncate a served (hard-linked) file
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        nodes = _weight_matmuls(pre) if model == C.AUDIO_ENCODER else None
        quantize_static(
            str(pre),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=OP_TYPES[model],
            nodes_to_quantize=nodes,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
        os.replace(tmp, dst)
    finally:
        pre.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def on_int8_runtime(config_text: str) -> str:
    """A cpu-profile encoder config with its runtime and thread lines swapped for INT8_RUNTIME's."""
    swapped = ('"runtime"', '"precision"', '"intra_op_threads"')
    kept = [line for line in config_text.rstrip().splitlines() if not any(key in line for key in swapped)]
    return "\n".join(kept) + (
        f'\nparameters {{ key: "intra_op_threads" value: {{ string_value: "{INT8_THREADS}" }} }}'
        f'\nparameters {{ key: "runtime" value: {{ string_value: "{INT8_RUNTIME}" }} }}\n'
    )


def write_int8_config(repo: Path, model: str) -> Path:
    """configs/cpu_int8.pbtxt: the cpu profile, pointing the adapter at model_int8.onnx on onnxruntime."""
    cpu = (repo / model / "configs" / "cpu.pbtxt").read_text()
    text = on_int8_runtime(
        "# int8 CPU profile written by `fusion-emotion quantize` (static QDQ, onnxruntime).\n"
        + cpu.rstrip()
        + f'\nparameters {{ key: "onnx_filename" value: {{ string_value: "{INT8_FILENAME}" }} }}\n'
    )
    out = repo / model / "configs" / f"{INT8_CONFIG}.pbtxt"
    out.write_text(text)
    return out


def serving_copy(repo: Path, out: Path) -> None:
    """A hard-linked copy of ``repo`` whose encoders' model.onnx are the int8 graphs, on onnxruntime."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(repo, out, copy_function=os.link, ignore=shutil.ignore_patterns("__pycache__", INT8_FILENAME))
    for model in (C.VIDEO_ENCODER, C.AUDIO_ENCODER):
        target = out / model / "1" / C.ONNX_FILENAME
        target.unlink()
        os.link(repo / model / "1" / INT8_FILENAME, target)
        for config in (out / model / "configs").glob("cpu*.pbtxt"):
            text = on_int8_runtime(config.read_text())
            config.unlink()  # a hard link to the fp32 repository's config: write a file of its own
            config.write_text(text)


def drift_report(repo: Path, int8_repo: Path, clips: list[bytes]) -> dict[str, Any]:
    """fp32 vs int8 probabilities on held-out clips: max/mean |diff|, top-1 agreement."""
    from fusion_emotion.core.pipeline import ReferencePipeline  # optional: [models]

    # each as its profile serves it: fp32 on the cpu profile's runtime, int8 on onnxruntime (INT8_RUNTIME)
    fp32, int8 = ReferencePipeline(repo), ReferencePipeline(int8_repo, runtime=INT8_RUNTIME)
    diffs, agree, per_clip = [], 0, []
    cosines: dict[str, list[float]] = {C.VIDEO_ENCODER: [], C.AUDIO_ENCODER: []}
    for clip in clips:
        feats = fp32.row(clip, None)
        p32, p8 = fp32.score_rows([feats])[0][0], int8.score_rows([feats])[0][0]
        for model, x, a, b in (
            (C.VIDEO_ENCODER, feats.frames, fp32.video_encoder, int8.video_encoder),
            (C.AUDIO_ENCODER, feats.waveform, fp32.audio_encoder, int8.audio_encoder),
        ):
            if x is not None:
                e32, e8 = a(x[None])[0], b(x[None])[0]
                cosines[model].append(float(e32 @ e8 / (np.linalg.norm(e32) * np.linalg.norm(e8) + 1e-12)))
        d = np.abs(p32 - p8)
        diffs.append(d)
        agree += int(np.argmax(p32) == np.argmax(p8))
        per_clip.append({"max_abs": float(d.max()), "fp32": p32.round(5).tolist(), "int8": p8.round(5).tolist()})
    all_d = np.stack(diffs)
    return {
        "clips": len(clips),
        "max_abs_prob_diff": float(all_d.max()),
        "mean_abs_prob_diff": float(all_d.mean()),
        "top1_agreement": agree / len(clips),
        "min_embedding_cosine": {k: min(v) if v else None for k, v in cosines.items()},
        "per_clip": per_clip,
    }


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="int8 CPU profile of an exported repository (onnxruntime static QDQ) + drift report",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--repository", type=Path, required=True, help="exported fp32 model repository")
    p.add_argument("--calibration-clips", type=int, default=8, help="generated calibration clips (default 8)")
    p.add_argument("--test-clips", type=int, default=6, help="held-out generated clips for the drift report")
    p.add_argument("--serving-repository", type=Path, help="also write a hard-linked int8 repository to serve")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fusion_emotion.core.rows import decode_row  # optional: [models]

    repo: Path = args.repository
    t0 = time.perf_counter()
    feats = [decode_row(c, None) for c in synth_clips(args.calibration_clips)]
    samples = {
        C.VIDEO_ENCODER: [f.frames for f in feats if f.frames is not None],
        C.AUDIO_ENCODER: [f.waveform for f in feats if f.waveform is not None],
    }
    for model in (C.VIDEO_ENCODER, C.AUDIO_ENCODER):
        src = repo / model / "1" / C.ONNX_FILENAME
        dst = repo / model / "1" / INT8_FILENAME
        log.info("quantizing %s with %s calibration inputs", model, len(samples[model]))
        quantize_encoder(src, dst, model, samples[model])
        write_int8_config(repo, model)
    serving = args.serving_repository or repo.parent / (repo.name + "_int8")
    serving_copy(repo, serving)
    report = drift_report(repo, serving, list(synth_clips(args.test_clips, offset=1000)))
    report.update(
        calibration_clips=args.calibration_clips,
        method="onnxruntime quantize_static, QDQ, per-channel int8 weights, uint8 activations (MinMax)",
        op_types=OP_TYPES,
        seconds=time.perf_counter() - t0,
    )
    (repo / "quantize_report.json").write_text(json.dumps(report, indent=2))
    if args.serving_repository is None:
        log.info("int8 serving repository: %s", serving)
    sys.stdout.write(
        f"int8 encoders written; drift on {report['clips']} held-out clips: max |dp| {report['max_abs_prob_diff']:.4f}, "
        f"mean {report['mean_abs_prob_diff']:.5f}, top-1 agreement {report['top1_agreement']:.0%}, "
        f"min embedding cosine {report['min_embedding_cosine']}\n"
        f"serve it: fusion-emotion triton --repository {repo} --profile cpu_int8 (or {serving} --profile cpu)\n"
    )
    return 0
