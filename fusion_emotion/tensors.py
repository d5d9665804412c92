"""tritonclient tensors for the contract's models: the inputs to send, the outputs to ask for, the results read.

The one place that turns the contract (``fusion_emotion.contract``) into ``InferInput`` /
``InferRequestedOutput`` objects and back, for the clip ensemble, the timeline model and the stream model.
``module`` is whichever tritonclient flavour the caller uses (``tritonclient.grpc``, ``.grpc.aio`` or
``.http``), so the front end (async gRPC), the clients and the tools share these without importing it here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.core.result import result_dict


def _input(module: Any, spec: C.TensorSpec, array: np.ndarray) -> Any:
    inp = module.InferInput(spec.name, list(array.shape), spec.wire_dtype)
    inp.set_data_from_numpy(array)
    return inp


def _row(result: Any, spec: C.TensorSpec) -> np.ndarray | None:
    """The first (only) row of one output, or None when the response lacks it."""
    value = result.as_numpy(spec.name)
    return None if value is None else value[0]


# --------------------------------------------------------------------------- clips (the ensemble)
def build_inputs(video: bytes | None, audio: bytes | None, module: Any) -> list[Any]:
    """The media inputs of one request (only those present: both are optional in the models)."""
    inputs = [
        _input(module, spec, np.array([[data]], dtype=np.object_))
        for spec, data in ((C.IN_VIDEO, video), (C.IN_AUDIO, audio))
        if data is not None
    ]
    if not inputs:
        raise ValueError("send at least one of video and audio")
    return inputs


def requested_outputs(module: Any) -> list[Any]:
    return [module.InferRequestedOutput(C.OUT_PROBABILITIES.name), module.InferRequestedOutput(C.OUT_QA_FLAGS.name)]


def parse_result(result: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """-> (probabilities [6], qa_flags [6]) of the first row; None for an output the response lacks."""
    return _row(result, C.OUT_PROBABILITIES), _row(result, C.OUT_QA_FLAGS)


# --------------------------------------------------------------------------- timelines
def timeline_inputs(
    video: bytes | None,
    audio: bytes | None,
    window_s: float | None,
    hop_s: float | None,
    module: Any,
    *,
    channel: int | None = None,
    vad: bool = False,
) -> list[Any]:
    """The media inputs plus the window and hop, the channel and vad (each only when set: the model's
    defaults otherwise, so a request without them is the one sent before they existed)."""
    inputs = build_inputs(video, audio, module)
    for spec, value in ((C.IN_WINDOW_S, window_s), (C.IN_HOP_S, hop_s)):
        if value is not None:
            inputs.append(_input(module, spec, np.array([[value]], dtype=np.float32)))
    if channel is not None:
        inputs.append(_input(module, C.IN_CHANNEL, np.array([[channel]], dtype=np.int32)))
    if vad:
        inputs.append(_input(module, C.IN_VAD, np.array([[True]], dtype=bool)))
    return inputs


def timeline_outputs(module: Any) -> list[Any]:
    return [module.InferRequestedOutput(s.name) for s in (C.OUT_SEGMENTS, C.OUT_PROBABILITIES, C.OUT_QA_FLAGS)]


def parse_timeline(result: Any) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """-> (segments [n, 2 + 6], probabilities [6], qa_flags [6]) of the first row; None where missing."""
    return _row(result, C.OUT_SEGMENTS), _row(result, C.OUT_PROBABILITIES), _row(result, C.OUT_QA_FLAGS)


# --------------------------------------------------------------------------- streams (sequence batcher)
def chunk_inputs(
    module: Any,
    *,
    audio: np.ndarray | None = None,
    jpegs: list[bytes] | None = None,
    rgbs: np.ndarray | None = None,
    times: list[float] | np.ndarray | None = None,
    sample_rate: int | None = None,
    channels: int | None = None,
    hop_s: float | None = None,
    window_s: float | None = None,
    abort: bool = False,
) -> list[Any]:
    """One chunk's InferInputs (``module`` is tritonclient.grpc or .grpc.aio); settings only on START.

    ``audio``: float32 samples, interleaved when stereo, full scale 1.0. ``jpegs`` or ``rgbs`` (uint8
    [F, H, W, 3]) with ``times`` (stream seconds, one per frame).
    """
    out = []
    if audio is not None:
        out.append(_input(module, C.IN_AUDIO_CHUNK, np.asarray(audio, np.float32).reshape(1, -1)))
    if jpegs:
        out.append(_input(module, C.IN_FRAMES_JPEG, np.array([list(jpegs)], dtype=np.object_)))
    if rgbs is not None:
        out.append(_input(module, C.IN_FRAMES_RGB, np.ascontiguousarray(rgbs, np.uint8)[None]))
    if jpegs or rgbs is not None:
        out.append(_input(module, C.IN_FRAME_TIMES, np.asarray(times, np.float32).reshape(1, -1)))
    for spec, value, dtype in (
        (C.IN_SAMPLE_RATE, sample_rate, np.int32),
        (C.IN_CHANNELS, channels, np.int32),
        (C.IN_HOP_S, hop_s, np.float32),
        (C.IN_WINDOW_S, window_s, np.float32),
    ):
        if value is not None:
            out.append(_input(module, spec, np.array([[value]], dtype)))
    if abort:
        out.append(_input(module, C.IN_ABORT, np.array([[True]], np.bool_)))
    return out


def stream_outputs(module: Any) -> list[Any]:
    return [
        module.InferRequestedOutput(s.name) for s in (C.OUT_T_WINDOW, C.OUT_PROBABILITIES, C.OUT_QA_FLAGS, C.OUT_FINAL)
    ]


def parse_update(result: Any) -> tuple[dict[str, Any] | None, bool]:
    """One stream response -> (the update's JSON or None when it carries none, whether it is the last)."""
    final = result.as_numpy(C.OUT_FINAL.name)
    is_final = bool(final is not None and np.asarray(final).reshape(-1)[0])
    window = result.as_numpy(C.OUT_T_WINDOW.name)
    probs = result.as_numpy(C.OUT_PROBABILITIES.name)
    if window is None or probs is None:
        return None, is_final
    t = np.asarray(window, np.float64).reshape(-1)
    update = {"t_start": round(float(t[0]), 6), "t_end": round(float(t[1]), 6)}
    update.update(result_dict(np.asarray(probs).reshape(-1), result.as_numpy(C.OUT_QA_FLAGS.name)))
    return update, is_final
