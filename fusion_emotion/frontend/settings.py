"""Front-end settings: one frozen dataclass filled from the environment, then the CLI.

SageMaker configures containers through environment variables only (it runs
``serve`` with no flags), so every knob has one; flags given on the command line win.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from fusion_emotion import contract as C

# SageMaker real-time InvokeEndpoint bodies are capped at 6 MiB: botocore's
# sagemaker-runtime service model declares ``BodyBlob`` with "max": 6291456
# (botocore/data/sagemaker-runtime/2017-05-13/service-2.json), and AWS support
# answers 413s from endpoints with the same 6 MB real-time payload limit.
# Anything bigger never reaches the container, so that is our default too.
SAGEMAKER_MAX_PAYLOAD_BYTES = 6 * 1024 * 1024

ENV_PREFIX = "FUSION_EMOTION_"

# Front-end in-flight limit; Triton's preprocess queue (model_repository/preprocess/config.pbtxt,
# default_queue_policy.max_queue_size) holds at least this many, so the front end refuses first.
DEFAULT_MAX_IN_FLIGHT = 16
# SageMaker's endpoint-name pattern (CreateEndpoint): the EMF records' EndpointName dimension.
_DIMENSION_RE = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")


@dataclass(frozen=True)
class Settings:
    """Everything the app needs; immutable so handlers can share it without locks."""

    triton_url: str = "127.0.0.1:8001"
    host: str = "0.0.0.0"
    port: int = 8080
    model_name: str = C.ENSEMBLE
    # Whole request body (multipart or JSON), checked before and while reading.
    max_body_bytes: int = SAGEMAKER_MAX_PAYLOAD_BYTES
    # One S3 object; S3 inputs bypass the SageMaker payload cap, Triton's own cap applies.
    max_s3_object_bytes: int = C.MAX_INPUT_BYTES
    # One deadline per request, from admission to answer: body read, S3 download and Triton (504 past it);
    # SageMaker gives containers 60 s.
    request_timeout_s: float = 55.0
    # Inference requests (/invocations, /predict) in flight at once; more get 503 + Retry-After before their
    # body is read. Sized in docs/reliability.md ("Admission control"): 4 preprocess instances each decoding
    # one request, 3 more waiting per instance, and a front-end peak measured at ~<= 1 GiB with 16 x 6 MiB.
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    # /ping must answer inside 2 s even when Triton is gone.
    ping_timeout_s: float = 1.0
    # None = any bucket the credentials can read; otherwise only these.
    s3_allowed_buckets: frozenset[str] | None = field(default=None)
    # Request options (custom-attributes syntax, e.g. "timeline=true,window_s=4") for requests that
    # give none: Batch Transform cannot send per-request options, its job environment can.
    default_options: str = ""
    # The web playground at /ui (docs/playground.md). Off by default: SageMaker forwards only its own routes,
    # and a production endpoint has no use for a page.
    ui: bool = False
    # GET /metrics (Prometheus text format; docs/observability/index.md). Collected either way, for EMF.
    metrics: bool = True
    # Seconds between CloudWatch EMF records on stdout (0 = off; the SageMaker deployment sets 60).
    emf_interval_s: float = 0.0
    # The EndpointName dimension of those records (deploy sets the endpoint's name).
    endpoint_name: str = "local"
    # Triton's metrics page, read for decodes by decoder and fallback reason in the EMF records.
    triton_metrics_url: str = "http://127.0.0.1:8002/metrics"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults < environment < ``overrides`` (non-None CLI values)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}

        # Every field has its variable: FUSION_EMOTION_<FIELD NAME>, read by the field's annotated type.
        for f in fields(cls):
            if raw := env.get(ENV_PREFIX + f.name.upper(), "").strip():
                values[f.name] = _ENV_PARSERS[f.type](raw)
        # SageMaker tells the container where to listen; the platform wins over our own variable.
        if v := env.get("SAGEMAKER_BIND_TO_PORT", "").strip():
            values["port"] = int(v)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values.get("s3_allowed_buckets"), str):
            values["s3_allowed_buckets"] = parse_bucket_list(values["s3_allowed_buckets"])
        return cls(**values).validated()

    def validated(self) -> Settings:
        """Reject nonsense early, at startup, instead of on the first request."""
        if self.max_body_bytes <= 0 or self.max_s3_object_bytes <= 0:
            raise ValueError("byte limits must be positive")
        if self.request_timeout_s <= 0 or self.ping_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_in_flight <= 0:
            raise ValueError("max_in_flight must be positive")
        if not (self.emf_interval_s == 0 or 1 <= self.emf_interval_s <= 3600):
            raise ValueError("emf_interval_s must be 0 (off) or 1..3600 seconds")
        if not _DIMENSION_RE.fullmatch(self.endpoint_name):
            raise ValueError("endpoint_name must be 1..63 letters, digits or hyphens (a SageMaker endpoint name)")
        if self.ping_timeout_s > 1.9:
            # /ping must answer within 2 s whatever Triton does.
            return replace(self, ping_timeout_s=1.9)
        return self


def parse_bucket_list(raw: str) -> frozenset[str] | None:
    """Comma/space separated bucket names; empty means no restriction."""
    names = frozenset(p for p in raw.replace(",", " ").split() if p)
    return names or None


def parse_bool(raw: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case); anything else is a startup error."""
    value = raw.strip().lower()
    if value not in _TRUE | _FALSE:
        raise ValueError(f"expected true or false, got {raw!r}")
    return value in _TRUE


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

# Settings' annotations (strings: postponed evaluation) -> how its environment variable is read.
_ENV_PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": parse_bool,
    "frozenset[str] | None": parse_bucket_list,
}
