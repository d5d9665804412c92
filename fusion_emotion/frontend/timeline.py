"""Opt-in emotion timelines for the front end (``?timeline=true``, ``"timeline": true`` or the
``X-Amzn-SageMaker-Custom-Attributes`` header ``timeline=true``).

Calls the ``fusion_emotion_timeline`` model over the app's one shared gRPC
client (``TritonGateway.client``); errors map to HTTP statuses exactly as for
the main route. Window parameters are checked here first so a bad value is a
400 naming the parameter, not a Triton round trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcclient

from fusion_emotion import contract as C
from fusion_emotion.core.result import timeline_result
from fusion_emotion.core.windows import window_params
from fusion_emotion.errors import ApiError, ServingError
from fusion_emotion.frontend.triton import TritonGateway
from fusion_emotion.tensors import parse_timeline, timeline_inputs, timeline_outputs

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
JSON_KEYS = ("timeline", "window_s", "hop_s")


@dataclass(frozen=True)
class TimelineOptions:
    """What the client asked for; ``window_s``/``hop_s`` None = the model's defaults."""

    enabled: bool = False
    window_s: float | None = None
    hop_s: float | None = None


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ApiError(400, f"{name} must be true or false")


def _seconds(value: Any, name: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ApiError(400, f"{name} must be a number of seconds")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"{name} must be a number of seconds") from None
    if not np.isfinite(out):
        raise ApiError(400, f"{name} must be a finite number of seconds")
    return out


def parse_options(values: dict[str, Any]) -> TimelineOptions:
    """From query parameters or JSON keys (``timeline``, ``window_s``, ``hop_s``); 400 on bad values."""
    enabled = _flag(values.get("timeline", False), "timeline")
    window = _seconds(values.get("window_s"), "window_s")
    hop = _seconds(values.get("hop_s"), "hop_s")
    if (window is not None or hop is not None) and not enabled:
        raise ApiError(400, "window_s and hop_s need timeline=true")
    if enabled:
        try:
            window_params(window, hop)
        except ServingError as exc:
            raise ApiError(400, str(exc)) from None
    return TimelineOptions(enabled, window, hop)


# SageMaker passes no query string through InvokeEndpoint; its free-form header carries them instead.
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"


def parse_attributes(text: str) -> dict[str, str]:
    """``"timeline=true,window_s=4"`` (``,`` or ``;`` between pairs) -> our keys only.

    The header is shared with other tooling, so unknown keys are ignored; one of
    our keys without a value is a 400 rather than silently dropped.
    """
    out: dict[str, str] = {}
    for token in text.replace(";", ",").split(","):
        key, sep, value = token.partition("=")
        key = key.strip()
        if key not in JSON_KEYS:
            continue
        if not sep:
            raise ApiError(400, f"custom attribute {key} needs a value, e.g. {key}=...")
        out[key] = value.strip()
    return out


def request_options(*sources: dict[str, Any], defaults: dict[str, Any] | None = None) -> TimelineOptions:
    """Options from several sources, later ones winning per key; ``defaults`` only when none gives any."""
    values: dict[str, Any] = {}
    for source in sources:
        values.update({k: v for k, v in source.items() if k in JSON_KEYS})
    return parse_options(values if values or not defaults else defaults)


async def timeline_request(
    gateway: TritonGateway,
    video: bytes | None,
    audio: bytes | None,
    options: TimelineOptions,
    timeout_s: float,
    request_id: str,
) -> dict[str, Any]:
    """One timeline call -> the usual top-level keys plus ``"segments"`` in time order."""
    inputs = timeline_inputs(video, audio, options.window_s, options.hop_s, grpcclient)
    result = await gateway.call(C.TIMELINE_MODEL, inputs, timeline_outputs(grpcclient), timeout_s, request_id)
    segments, probs, qa = parse_timeline(result)
    if segments is None or probs is None:
        raise ApiError(500, "inference returned no timeline")
    return timeline_result(segments, probs, qa)
