"""tritonclient gRPC helpers for the ``fusion_emotion`` ensemble."""

from __future__ import annotations

import numpy as np

from fusion_emotion import contract as C


def build_inputs(video: bytes | None, audio: bytes | None, module):
    """InferInput list for one request; ``module`` is tritonclient.grpc or tritonclient.http."""
    inputs = []
    for spec, data in ((C.IN_VIDEO, video), (C.IN_AUDIO, audio)):
        if data is None:
            continue
        arr = np.array([[data]], dtype=np.object_)
        inp = module.InferInput(spec.name, list(arr.shape), spec.wire_dtype)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    if not inputs:
        raise ValueError("send at least one of video and audio")
    return inputs


def requested_outputs(module):
    return [module.InferRequestedOutput(C.OUT_PROBABILITIES.name), module.InferRequestedOutput(C.OUT_QA_FLAGS.name)]


def parse_result(result) -> tuple[np.ndarray, np.ndarray]:
    """-> (probabilities [6], qa_flags [6]) of the first row."""
    return result.as_numpy(C.OUT_PROBABILITIES.name)[0], result.as_numpy(C.OUT_QA_FLAGS.name)[0]


def infer_grpc(url: str, video: bytes | None, audio: bytes | None, timeout_s: float = 60.0, client=None):
    """One synchronous request over gRPC -> (probabilities, qa_flags)."""
    import tritonclient.grpc as grpcclient

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
