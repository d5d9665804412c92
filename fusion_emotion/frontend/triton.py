"""The front end's only Triton connection: one async gRPC client for the app's lifetime.

gRPC multiplexes concurrent calls over one HTTP/2 channel, so a single client
is the connection pool; creating one per request would cost a TCP + HTTP/2
handshake each time. Triton status codes are mapped to HTTP statuses here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from fusion_emotion import contract as C
from fusion_emotion.errors import ApiError, ErrorKind, is_shm_exhausted, parse_wire
from fusion_emotion.tensors import build_inputs, parse_result, requested_outputs

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    probabilities: np.ndarray  # float32 [6], LABELS order
    qa_flags: np.ndarray | None  # float32 [6], QA_FLAG_NAMES order, NaN = not computed


class MediaRejected(ApiError):
    """Triton refused one input; ``input_name`` is the tensor ("video"/"audio"), the status follows the kind."""

    def __init__(self, input_name: str, reason: str, kind: ErrorKind) -> None:
        super().__init__(kind.http_status, f"{input_name}: {reason}")
        self.input_name = input_name
        self.reason = reason
        self.kind = kind

    @property
    def too_large(self) -> bool:
        return self.kind is ErrorKind.TOO_LARGE


def _status_name(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    raw = status() if callable(status) else status
    return str(raw or "").rsplit(".", 1)[-1].upper()


def map_triton_error(exc: Exception) -> ApiError:
    """Translate a tritonclient exception into the status the client should see.

    Our models tag every error with its kind (fusion_emotion.errors); the status follows that tag, never the
    wording. Untagged errors come from Triton itself (transport, deadline, its own validation).
    """
    status = _status_name(exc)
    message = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    wire = parse_wire(str(message or ""))
    if wire is not None:
        if wire.kind.client_error and wire.subject in (C.IN_VIDEO.name, C.IN_AUDIO.name):
            return MediaRejected(wire.subject, wire.reason, wire.kind)
        if wire.kind.client_error:
            return ApiError(wire.http_status, f"{wire.subject}: {wire.reason}")
        if wire.kind is ErrorKind.OVERLOADED:
            return ApiError(503, "inference server is overloaded", headers={"Retry-After": "1"})
        if wire.kind is ErrorKind.CANCELLED:
            return ApiError(499, "request cancelled")
        if wire.kind is ErrorKind.DEADLINE:
            return ApiError(504, "inference did not finish within the request timeout")
        return ApiError(500, "inference failed")
    lowered = str(message).lower()
    if is_shm_exhausted(lowered):  # the Python backend could not copy the inputs into its /dev/shm region
        log.warning("inference server's /dev/shm is full: %s", message)
        return ApiError(503, "inference server is overloaded", headers={"Retry-After": "1"})
    if "exceeds maximum queue size" in lowered:  # a model's bounded queue (default_queue_policy) is full
        return ApiError(503, "inference server is overloaded", headers={"Retry-After": "1"})
    if "request timeout expired" in lowered:  # queued in Triton past the request's deadline (REJECT)
        return ApiError(504, "inference did not finish within the request timeout")
    if status == "DEADLINE_EXCEEDED" or "deadline exceeded" in lowered:
        return ApiError(504, "inference did not finish within the request timeout")
    if status in {"UNAVAILABLE", "NOT_FOUND", "CANCELLED"} or not status:
        return ApiError(503, "inference server unavailable")
    if status == "RESOURCE_EXHAUSTED":
        return ApiError(503, "inference server is overloaded", headers={"Retry-After": "1"})
    if status == "INVALID_ARGUMENT":
        return ApiError(422, "the inference server refused the request's inputs")
    return ApiError(500, "inference failed")


class TritonGateway:
    """Owns the shared ``tritonclient.grpc.aio`` client; start/close from the app lifespan."""

    def __init__(self, url: str, model_name: str = C.ENSEMBLE) -> None:
        self.url = url
        self.model_name = model_name
        self._client: Any = None
        self._provenance: str | None = None

    async def start(self) -> None:
        # Must be created inside the serving event loop: grpc.aio channels bind to it.
        self._client = grpcclient.InferenceServerClient(url=self.url)
        log.info("triton client created")

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    @property
    def client(self) -> Any:
        if self._client is None:
            raise ApiError(503, "inference server client not started")
        return self._client

    async def weights_provenance(self) -> str | None:
        """The ensemble's weights provenance (its config parameter), asked once; None while Triton cannot tell."""
        if self._provenance is None:
            try:
                cfg = await self.client.get_model_config(self.model_name, as_json=True, client_timeout=2.0)
            except Exception as exc:  # not known yet is not an error of the request being answered
                log.debug("model config not available: %s", type(exc).__name__)
                return None
            params = cfg.get("config", {}).get("parameters", {})
            self._provenance = params.get(C.PROVENANCE_PARAMETER, {}).get("string_value", "")
        return self._provenance or None

    async def response_headers(self) -> dict[str, str] | None:
        """``weights=untrained`` in the custom-attributes header when the weights are demo weights, so every
        client (HTTP, SageMaker's ``CustomAttributes``) can warn as the in-process route does."""
        provenance = await self.weights_provenance()
        if provenance and provenance.startswith("UNTRAINED"):
            return {C.RESPONSE_ATTRIBUTES_HEADER: C.UNTRAINED_ATTRIBUTE}
        return None

    async def ready(self, timeout_s: float) -> tuple[bool, str]:
        """Server live and model ready, answered within ``timeout_s`` overall whatever Triton does.

        One ``asyncio.wait_for`` around both calls (Python 3.10 has no ``asyncio.timeout``): each call's own
        ``client_timeout`` gets only what is left, so the two together never take longer than ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s

        async def check() -> tuple[bool, str]:
            live = await self.client.is_server_live(client_timeout=max(0.01, deadline - time.monotonic()))
            if not live:
                return False, "inference server is not live"
            ready = await self.client.is_model_ready(
                self.model_name, client_timeout=max(0.01, deadline - time.monotonic())
            )
            if not ready:
                return False, f"model {self.model_name} is not ready"
            return True, "ok"

        try:
            return await asyncio.wait_for(check(), timeout_s)
        except (TimeoutError, asyncio.TimeoutError):
            return False, "inference server did not answer in time"
        except ApiError as exc:
            return False, exc.message
        except Exception as exc:  # any transport failure means "not ready", never a 500
            log.debug("ping failed: %s", type(exc).__name__)
            return False, "inference server unavailable"

    async def call(self, model: str, inputs: list, outputs: list, timeout_s: float, request_id: str) -> Any:
        """One Triton call with the request's deadline carried inside Triton; its errors mapped to ApiError."""

        try:
            return await self.client.infer(
                model,
                inputs,
                outputs=outputs,
                request_id=request_id,
                client_timeout=timeout_s,
                # The same deadline inside Triton: a request still queued when it passes is rejected there
                # (default_queue_policy with allow_timeout_override) instead of decoding for nobody.
                timeout=triton_timeout_us(timeout_s),
            )
        except InferenceServerException as exc:
            err = map_triton_error(exc)
            log.warning("triton %s failed: status=%s -> %d", model, _status_name(exc) or "?", err.status)
            raise err from None

    async def infer(self, video: bytes | None, audio: bytes | None, timeout_s: float, request_id: str) -> Prediction:
        """One ensemble call with only the inputs present (both are optional in the model)."""

        result = await self.call(
            self.model_name,
            build_inputs(video, audio, grpcclient),
            requested_outputs(grpcclient),
            timeout_s,
            request_id,
        )
        probs, qa = parse_result(result)
        if probs is None:
            raise ApiError(500, "inference returned no probabilities")
        probs = np.asarray(probs, dtype=np.float32).reshape(-1)[: C.NUM_CLASSES]
        qa_flat = None if qa is None else np.asarray(qa, dtype=np.float32).reshape(-1)[: len(C.QA_FLAG_NAMES)]
        return Prediction(probabilities=probs, qa_flags=qa_flat)


def triton_timeout_us(timeout_s: float) -> int:
    """The request timeout Triton reads (microseconds; 0 would mean "none", so at least 1)."""
    return max(1, int(timeout_s * 1_000_000))
