"""Helpers for the Python-backend ``model.py`` adapters (importable only inside the stub).

Everything numeric is delegated to pure modules (media, fusion, qa, onnx_runtime);
this module only moves tensors in and out of Triton and turns failures into
per-request error responses.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from fusion_emotion import contract as C
from fusion_emotion.core.onnx_runtime import DEFAULT_PRECISION, DEFAULT_RUNTIME, Encoder
from fusion_emotion.errors import ErrorKind, ServingError
from fusion_emotion.server.blas import limit_blas_threads

log = logging.getLogger(__name__)


class TritonLog(logging.Handler):
    """Our modules' log records into Triton's own log (``pb_utils.Logger``), at their level.

    A stub configures no logging: without this, every INFO line (a decoder's choice, a fallback's reason)
    would be dropped and the warnings would reach only the stub's stderr, without Triton's level and time.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if record.levelno >= logging.ERROR:
                pb_utils.Logger.log_error(message)
            elif record.levelno >= logging.WARNING:
                pb_utils.Logger.log_warn(message)
            elif record.levelno >= logging.INFO:
                pb_utils.Logger.log_info(message)
            else:
                pb_utils.Logger.log_verbose(message)
        except Exception:  # logging must never fail a request
            self.handleError(record)


def route_logging_to_triton(level: int = logging.INFO) -> None:
    """Once per stub: the ``fusion_emotion`` loggers write into Triton's log."""
    root = logging.getLogger("fusion_emotion")
    if not any(isinstance(h, TritonLog) for h in root.handlers):
        handler = TritonLog()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(level)


route_logging_to_triton()

# From here on each stub runs its BLAS calls on one thread instead of leaving idle workers spinning
# (fusion_emotion.server.blas). numpy's OpenBLAS is always loaded by now (the stub imports numpy before any
# model code); the model.py files that decode import media, and so scipy's OpenBLAS, before this module.
limit_blas_threads(1)


def model_parameters(args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The parsed model config and its string ``parameters``."""
    config = json.loads(args["model_config"])
    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    return config, params


_TRITON_CODE = {
    ErrorKind.BAD_REQUEST: "INVALID_ARG",
    ErrorKind.INVALID_MEDIA: "INVALID_ARG",
    ErrorKind.TOO_LARGE: "INVALID_ARG",
    ErrorKind.CANCELLED: "CANCELLED",
    ErrorKind.DEADLINE: "UNAVAILABLE",
    ErrorKind.OVERLOADED: "UNAVAILABLE",
    ErrorKind.INTERNAL: "INTERNAL",
}


def error_response(error: ServingError) -> Any:
    """One request's error: Triton's code from the kind, the kind itself in the message's tag."""
    code = getattr(pb_utils.TritonError, _TRITON_CODE[error.kind])
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(error.wire(), code))


def internal_error(what: str, exc: BaseException) -> ServingError:
    """An unexpected failure: logged with its traceback here, reported to the client without internals."""
    log.exception("%s failed", what)
    return ServingError(ErrorKind.INTERNAL, what, f"failed ({type(exc).__name__})")


def as_serving_error(what: str, exc: BaseException) -> ServingError:
    return exc if isinstance(exc, ServingError) else internal_error(what, exc)


def failure_response(what: str, exc: BaseException) -> Any:
    """The error response for one request that raised ``exc`` while ``what`` ran."""
    return error_response(as_serving_error(what, exc))


def bytes_rows(request: Any, name: str) -> list[bytes] | None:
    """A BYTES input as one ``bytes`` per batch row, or None when the optional input is absent."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    arr = tensor.as_numpy()
    return [bytes(v) if not isinstance(v, bytes) else v for v in arr.reshape(arr.shape[0], -1)[:, 0]]


def cancel_check(request: Any) -> Callable[[], bool]:
    """A callable the decoders poll: true once Triton marks the request cancelled (client gone, gRPC
    deadline) or once the request's own timeout (the front end's deadline, carried as Triton's request
    timeout) has passed, counted from now: a late upper bound, as Triton does not tell when it was queued."""
    timeout_us = int(request.timeout()) if hasattr(request, "timeout") else 0
    if timeout_us <= 0:
        return request.is_cancelled
    deadline = time.monotonic() + timeout_us / 1e6

    def cancelled() -> bool:
        return time.monotonic() > deadline or request.is_cancelled()

    return cancelled


def optional_input(request: Any, name: str) -> np.ndarray | None:
    """An optional input's array, or None when the request does not carry it."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def scalar(request: Any, name: str) -> Any:
    """An optional scalar input's value (a Python number), or None when absent."""
    value = optional_input(request, name)
    return None if value is None else value.reshape(-1)[0].item()


def fp32_input(request: Any, name: str) -> np.ndarray:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise ServingError(ErrorKind.BAD_REQUEST, name, "input is missing")
    return tensor.as_numpy()


def respond_batched(
    requests: Sequence[Any],
    input_names: Sequence[str],
    output_names: Sequence[str],
    fn: Callable[..., tuple[np.ndarray, ...]],
) -> list[Any]:
    """Concatenate every request's rows, run ``fn`` once, split the outputs back.

    One response per request, always: a request whose inputs cannot be read gets its own error and the
    others go on; if the batched call fails, each request in it gets an error response.
    """
    responses: list[Any] = [None] * len(requests)
    good: list[int] = []
    inputs: list[list[np.ndarray]] = []
    for i, request in enumerate(requests):
        try:
            inputs.append([fp32_input(request, n) for n in input_names])
            good.append(i)
        except Exception as exc:  # one request must not take the batch down
            responses[i] = failure_response("input", exc)
    if not good:
        return responses
    try:
        stacked = [np.concatenate([rows[k] for rows in inputs]) for k in range(len(input_names))]
        outputs = fn(*stacked)
    except Exception as exc:  # every request in the batch gets an answer
        error = as_serving_error("batched execution", exc)
        for i in good:
            responses[i] = error_response(error)
        return responses
    start = 0
    for i, rows in zip(good, inputs, strict=True):
        n = rows[0].shape[0]
        tensors = [
            pb_utils.Tensor(name, np.ascontiguousarray(out[start : start + n]))
            for name, out in zip(output_names, outputs)
        ]
        responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        start += n
    return responses


class OnnxEncoderModel:
    """CPU-profile encoder: OpenVINO (or onnxruntime) over the version folder's model.onnx."""

    def initialize(self, args: dict[str, Any]) -> None:
        config, params = model_parameters(args)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        # `onnx_filename` lets a profile pick another graph, e.g. cpu_int8 -> model_int8.onnx
        filename = params.get("onnx_filename") or C.ONNX_FILENAME
        path = Path(args["model_repository"]) / args["model_version"] / filename
        # `runtime` (openvino in the cpu profile, onnxruntime in cpu_int8) and `precision` (OpenVINO's, f32)
        self.encoder = Encoder(
            path,
            int(params.get("intra_op_threads", "0") or 0),
            params.get("runtime") or DEFAULT_RUNTIME,
            params.get("precision") or DEFAULT_PRECISION,
        )
        dims = [int(d) for d in config["input"][0]["dims"]]
        self.encoder.warm_up(dims, int(config.get("max_batch_size", 1)))

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        return respond_batched(requests, [self.input_name], [self.output_name], lambda x: (self.encoder(x),))

    def finalize(self) -> None:
        self.encoder = None
