"""Helpers for the Python-backend ``model.py`` adapters (importable only inside the stub).

Everything numeric is delegated to pure modules (media, fusion, qa, onnx_runtime);
this module only moves tensors in and out of Triton and turns failures into
per-request error responses.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from fusion_emotion import contract as C
from fusion_emotion.core.onnx_runtime import Encoder

log = logging.getLogger(__name__)


def model_parameters(args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The parsed model config and its string ``parameters``."""
    config = json.loads(args["model_config"])
    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    return config, params


def error_response(message: str, invalid_arg: bool = True) -> Any:
    code = pb_utils.TritonError.INVALID_ARG if invalid_arg else pb_utils.TritonError.INTERNAL
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


def bytes_rows(request: Any, name: str) -> list[bytes] | None:
    """A BYTES input as one ``bytes`` per batch row, or None when the optional input is absent."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    arr = tensor.as_numpy()
    return [bytes(v) if not isinstance(v, bytes) else v for v in arr.reshape(arr.shape[0], -1)[:, 0]]


def ensure_loaded(models: Sequence[str], caller: str) -> None:
    """Load models this one calls through BLS if the server did not (explicit model control).

    SageMaker's stock Triton image starts `--model-control-mode=explicit
    --load-model=fusion_emotion`, which loads the ensemble's steps but not the
    models they call through BLS. The loading API is not available during
    initialize, so callers run this on their first execute.
    """
    for name in models:
        if not pb_utils.is_model_ready(model_name=name):
            pb_utils.Logger.log_info(f"{caller}: loading {name} (not loaded by the server)")
            pb_utils.load_model(model_name=name)


def fp32_input(request: Any, name: str) -> np.ndarray:
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


def respond_batched(
    requests: Sequence[Any],
    input_names: Sequence[str],
    output_names: Sequence[str],
    fn: Callable[..., tuple[np.ndarray, ...]],
) -> list[Any]:
    """Concatenate every request's rows, run ``fn`` once, split the outputs back.

    One response per request, always: if the batched call fails, each request
    gets an error response instead of taking the others down silently.
    """
    inputs = [[fp32_input(r, n) for n in input_names] for r in requests]
    sizes = [rows[0].shape[0] for rows in inputs]
    try:
        stacked = [np.concatenate([rows[i] for rows in inputs]) for i in range(len(input_names))]
        outputs = fn(*stacked)
    except Exception as exc:  # one failure must not lose the batch's responses
        log.exception("batched execution failed")
        return [error_response(f"execution failed: {type(exc).__name__}", invalid_arg=False) for _ in requests]
    responses = []
    start = 0
    for n in sizes:
        tensors = [
            pb_utils.Tensor(name, np.ascontiguousarray(out[start : start + n]))
            for name, out in zip(output_names, outputs)
        ]
        responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        start += n
    return responses


class OnnxEncoderModel:
    """CPU-profile encoder: onnxruntime over the version folder's model.onnx."""

    def initialize(self, args: dict[str, Any]) -> None:
        config, params = model_parameters(args)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        # `onnx_filename` lets a profile pick another graph, e.g. cpu_int8 -> model_int8.onnx
        filename = params.get("onnx_filename") or C.ONNX_FILENAME
        path = Path(args["model_repository"]) / args["model_version"] / filename
        self.encoder = Encoder(path, int(params.get("intra_op_threads", "0") or 0))
        # warm up so the first real request does not pay for lazy initialisation
        dims = [int(d) for d in config["input"][0]["dims"]]
        self.encoder(np.zeros((1, *dims), dtype=np.float32))

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        return respond_batched(requests, [self.input_name], [self.output_name], lambda x: (self.encoder(x),))

    def finalize(self) -> None:
        self.encoder = None
