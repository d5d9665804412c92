"""Opt-in emotion timelines for the front end (``?timeline=true``, ``"timeline": true`` or the
``X-Amzn-SageMaker-Custom-Attributes`` header ``timeline=true``).

Calls the ``fusion_emotion_timeline`` model over the app's one shared gRPC
client (``TritonGateway.client``); errors map to HTTP statuses exactly as for
the main route. Window parameters are checked here first so a bad value is a
400 naming the parameter, not a Triton round trip.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcclient

from fusion_emotion import contract as C
from fusion_emotion.core.calls import CallOptions, call_options, finish
from fusion_emotion.core.result import speakers_result, timeline_result
from fusion_emotion.core.windows import window_params
from fusion_emotion.errors import ApiError, ServingError
from fusion_emotion.frontend.triton import TritonGateway
from fusion_emotion.tensors import parse_timeline, timeline_inputs, timeline_outputs

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
CALL_KEYS = ("speakers", "speaker_names", "vad", "summary")
JSON_KEYS = ("timeline", "window_s", "hop_s", *CALL_KEYS)


@dataclass(frozen=True)
class TimelineOptions:
    """What the client asked for; ``window_s``/``hop_s`` None = the model's defaults."""

    enabled: bool = False
    window_s: float | None = None
    hop_s: float | None = None
    call: CallOptions = field(default_factory=CallOptions)


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
    """From query parameters or JSON keys (``timeline``, ``window_s``, ``hop_s``, ``speakers``,
    ``speaker_names``, ``vad``); 400 on bad values. The call options need a timeline: a clip is unchanged."""
    enabled = _flag(values.get("timeline", False), "timeline")
    window = _seconds(values.get("window_s"), "window_s")
    hop = _seconds(values.get("hop_s"), "hop_s")
    if (window is not None or hop is not None) and not enabled:
        raise ApiError(400, "window_s and hop_s need timeline=true")
    given = [k for k in CALL_KEYS if values.get(k) not in (None, "")]
    if given and not enabled:
        raise ApiError(400, f"{', '.join(given)} need(s) timeline=true")
    call = CallOptions()
    if enabled:
        try:
            window_params(window, hop)
            call = call_options(*(values.get(k) for k in CALL_KEYS))
        except ServingError as exc:
            raise ApiError(400, str(exc)) from None
    return TimelineOptions(enabled, window, hop, call)


# SageMaker passes no query string through InvokeEndpoint; its free-form header carries them instead.
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"


def parse_attributes(text: str) -> dict[str, str]:
    """``"timeline=true,window_s=4"`` (``,`` or ``;`` between pairs) -> our keys only.

    The header is shared with other tooling, so unknown keys are ignored; one of
    our keys without a value is a 400 rather than silently dropped. ``speaker_names=agent,customer``: the
    bare tokens after ``speaker_names`` continue its list.
    """
    out: dict[str, str] = {}
    listing = False
    for token in text.replace(";", ",").split(","):
        key, sep, value = token.partition("=")
        key = key.strip()
        if not sep and listing and key and key not in JSON_KEYS:
            out["speaker_names"] += "," + key
            continue
        listing = key == "speaker_names" and bool(sep)
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
    """One timeline call -> the usual top-level keys plus ``"segments"`` in time order.

    ``speakers=channels``: one timeline per channel, concurrently, each the channel analysed as mono ->
    ``"speakers"`` (each one's clip-level result) and ``"segments"`` labelled with ``"speaker"``.
    """
    call = options.call
    if not call.per_channel:
        return finish(call, await _one_timeline(gateway, video, audio, options, None, timeout_s, request_id))
    tasks = [
        asyncio.ensure_future(_one_timeline(gateway, video, audio, options, i, timeout_s, request_id))
        for i in range(len(call.names))
    ]
    try:
        results = await asyncio.gather(*tasks)
    except BaseException:  # one channel failed (or the client left): the others' calls are cancelled, not left
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return finish(call, speakers_result(dict(zip(call.names, results, strict=True))))


async def _one_timeline(
    gateway: TritonGateway,
    video: bytes | None,
    audio: bytes | None,
    options: TimelineOptions,
    channel: int | None,
    timeout_s: float,
    request_id: str,
) -> dict[str, Any]:
    """One call of the timeline model: the media mixed (``channel`` None) or one channel as mono."""
    vad = options.call.vad
    inputs = timeline_inputs(video, audio, options.window_s, options.hop_s, grpcclient, channel=channel, vad=vad)
    result = await gateway.call(C.TIMELINE_MODEL, inputs, timeline_outputs(grpcclient), timeout_s, request_id)
    segments, probs, qa = parse_timeline(result)
    if segments is None or probs is None:
        raise ApiError(500, "inference returned no timeline")
    return timeline_result(segments, probs, qa, vad=vad)
