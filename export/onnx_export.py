"""Export the encoders to ONNX (and optionally TorchScript) and check the numbers."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from fusion_emotion import contract as C
from fusion_emotion.core.fusion import FusionHead

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-4
OPSET = 17


class ExportValidationError(RuntimeError):
    """Exported numbers differ from PyTorch beyond the tolerance."""


@dataclass
class Check:
    """Worst absolute difference of one exported output against PyTorch."""

    model: str
    output: str
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def __str__(self) -> str:
        return f"{self.model}.{self.output}: max |diff| {self.max_abs_diff:.3g} (tolerance {self.tolerance:g})"


def example_input(name: str, batch: int, seed: int = 1234) -> np.ndarray:
    """Deterministic validation inputs shaped like real requests."""
    rng = np.random.default_rng(seed)
    if name == C.VIDEO_FRAMES.name:
        return rng.standard_normal((batch, *C.VIDEO_FRAMES.dims), dtype=np.float32)
    if name == C.AUDIO_WAVEFORM.name:
        return (0.1 * rng.standard_normal((batch, *C.AUDIO_WAVEFORM.dims))).astype(np.float32)
    raise KeyError(name)


def export_encoder(
    module: nn.Module,
    model_name: str,
    input_spec: C.TensorSpec,
    output_spec: C.TensorSpec,
    version_dir: Path,
    *,
    opset: int = OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    torchscript: bool = False,
) -> list[Check]:
    """Write ``model.onnx`` (dynamic batch axis) into ``version_dir`` and validate it."""

    module = module.eval()
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = version_dir / C.ONNX_FILENAME
    x = torch.from_numpy(example_input(input_spec.name, 2))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (x,),
            str(onnx_path),
            input_names=[input_spec.name],
            output_names=[output_spec.name],
            dynamic_axes={input_spec.name: {0: "batch"}, output_spec.name: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    log.info("wrote %s (%.1f MB)", onnx_path, onnx_path.stat().st_size / 1e6)

    checks = []
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # a batch size not used when tracing proves the axis is dynamic
        xb = example_input(input_spec.name, batch, seed=batch)
        with torch.no_grad():
            ref = module(torch.from_numpy(xb)).numpy()
        (got,) = session.run([output_spec.name], {input_spec.name: xb})
        if got.shape != (batch, *output_spec.dims):
            raise ExportValidationError(f"{model_name}.{output_spec.name}: ONNX shape {got.shape} at batch {batch}")
        checks.append(
            Check(f"{model_name}[onnx,batch={batch}]", output_spec.name, float(np.abs(got - ref).max()), tolerance)
        )

    if torchscript:
        ts_path = version_dir / C.TORCHSCRIPT_FILENAME
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, (x,), check_trace=False)
        traced.save(str(ts_path))
        xb = example_input(input_spec.name, 3, seed=3)
        loaded = torch.jit.load(str(ts_path)).eval()
        with torch.no_grad():
            ref = module(torch.from_numpy(xb)).numpy()
            got = loaded(torch.from_numpy(xb)).numpy()
        checks.append(Check(f"{model_name}[torchscript]", output_spec.name, float(np.abs(got - ref).max()), tolerance))
        log.info("wrote %s", ts_path)
    return checks


def export_head(head: nn.Sequential, temperature: float, path: Path, tolerance: float = DEFAULT_TOLERANCE) -> Check:
    """Write the fusion head as numpy weights and check the numpy head against PyTorch."""
    linears = [m for m in head if isinstance(m, nn.Linear)]
    np_head = FusionHead(
        weights=[m.weight.detach().numpy().astype(np.float32) for m in linears],
        biases=[m.bias.detach().numpy().astype(np.float32) for m in linears],
        temperature=temperature,
    )
    np_head.validate()
    path.parent.mkdir(parents=True, exist_ok=True)
    np_head.save(path)

    rng = np.random.default_rng(7)
    v = rng.standard_normal((4, C.VIDEO_EMBED_DIM), dtype=np.float32)
    a = rng.standard_normal((4, C.AUDIO_EMBED_DIM), dtype=np.float32)
    mask = np.array([[1, 1], [1, 0], [0, 1], [1, 1]], dtype=np.float32)
    got = FusionHead.load(path).probabilities(v, a, mask)
    with torch.no_grad():
        x = torch.cat([torch.from_numpy(v * mask[:, :1]), torch.from_numpy(a * mask[:, 1:2])], dim=1)
        ref = torch.softmax(head.eval()(x) / temperature, dim=1).numpy()
    return Check(C.FUSION_HEAD, C.OUT_PROBABILITIES.name, float(np.abs(got - ref).max()), tolerance)


def require_ok(checks: list[Check]) -> None:
    """Fail loudly on the worst output beyond tolerance."""
    worst = max(checks, key=lambda c: (not c.ok, c.max_abs_diff / c.tolerance if c.tolerance > 0 else c.max_abs_diff))
    for check in checks:
        log.info("validated %s", check)
    if not worst.ok:
        raise ExportValidationError(f"export validation failed: {worst}")
