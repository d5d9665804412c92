"""Synchronous requests over tritonclient gRPC: one clip to the ensemble, one file to the timeline model."""

from __future__ import annotations

from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from fusion_emotion import contract as C
from fusion_emotion.core.calls import CallOptions, run_per_speaker
from fusion_emotion.core.result import timeline_result
from fusion_emotion.tensors import (
    build_inputs,
    parse_result,
    parse_timeline,
    requested_outputs,
    timeline_inputs,
    timeline_outputs,
)


def infer_grpc(
    url: str, video: bytes | None, audio: bytes | None, timeout_s: float = 60.0, client: Any = None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """-> (probabilities, qa_flags); ``client``: an ``InferenceServerClient`` to reuse (kept open), else one per call."""
    own = client is None
    client = client or grpcclient.InferenceServerClient(url)
    try:
        result = client.infer(
            C.ENSEMBLE,
            build_inputs(video, audio, grpcclient),
            outputs=requested_outputs(grpcclient),
            client_timeout=timeout_s,
        )
    finally:
        if own:
            client.close()
    return parse_result(result)


def timeline_grpc(
    url: str,
    video: bytes | None,
    audio: bytes | None,
    window_s: float | None = None,
    hop_s: float | None = None,
    timeout_s: float = 600.0,
    client: Any = None,
    call: CallOptions | None = None,
) -> dict[str, Any]:
    """One call to the timeline model over gRPC (one per channel with ``speakers=channels``) -> the
    product's JSON with ``segments``.

    ``client``: a ``tritonclient.grpc.InferenceServerClient`` to reuse (kept open); else one per call.
    """
    options = call or CallOptions()
    own = client is None
    client = client or grpcclient.InferenceServerClient(url)

    def one(channel: int | None) -> dict[str, Any]:
        inputs = timeline_inputs(video, audio, window_s, hop_s, grpcclient, channel=channel, vad=options.vad)
        result = client.infer(C.TIMELINE_MODEL, inputs, outputs=timeline_outputs(grpcclient), client_timeout=timeout_s)
        return timeline_result(*parse_timeline(result), vad=options.vad)

    try:
        return run_per_speaker(options, one)
    finally:
        if own:
            client.close()
