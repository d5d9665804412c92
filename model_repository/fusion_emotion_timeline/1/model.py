"""fusion_emotion_timeline: container bytes -> per-window probabilities + the clip-level result.

All numerics live in fusion_emotion.core.timeline (shared with the in-process reference); this adapter
only supplies the BLS encoders (fusion_emotion.server.bls) and moves tensors. Each request is decoded once
and its windows reach the encoders in chunks of ``bls_max_batch`` rows, so memory stays bounded; the
window count is capped (``max_windows``) and a cancelled request stops between chunks and while decoding.
"""

import logging
import math
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from fusion_emotion import contract as C
from fusion_emotion.core.fusion import FusionHead
from fusion_emotion.core.media import MediaError, MediaLimits
from fusion_emotion.core.timeline import DEFAULT_MAX_WINDOWS, compute_timeline, timeline_limits, validate_params
from fusion_emotion.errors import ErrorKind
from fusion_emotion.server.bls import BlsEncoder, Callees
from fusion_emotion.server.python_model import bytes_rows, cancel_check, failure_response, model_parameters

log = logging.getLogger(__name__)


def _scalar(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    value = float(np.asarray(tensor.as_numpy(), dtype=np.float64).reshape(-1)[0])
    if not math.isfinite(value):
        raise MediaError(name, "must be a finite number of seconds", kind=ErrorKind.BAD_REQUEST)
    return value


class TritonPythonModel:
    def initialize(self, args):
        _, params = model_parameters(args)
        repository = Path(args["model_repository"]).parent
        self.head = FusionHead.load(repository / C.FUSION_HEAD / "1" / C.HEAD_WEIGHTS_FILENAME)
        base = MediaLimits.from_params({k: v for k, v in params.items() if k != "max_duration_s"})
        self.limits = timeline_limits(float(params.get("max_duration_s", 600) or 600), base)
        self.max_windows = int(params.get("max_windows", DEFAULT_MAX_WINDOWS) or DEFAULT_MAX_WINDOWS)
        self.chunk = max(1, int(params.get("bls_max_batch", "8") or 8))
        self.encode_video = BlsEncoder(C.VIDEO_ENCODER, C.VIDEO_FRAMES.name, C.VIDEO_ENC_OUT.name, self.chunk)
        self.encode_audio = BlsEncoder(C.AUDIO_ENCODER, C.AUDIO_WAVEFORM.name, C.AUDIO_ENC_OUT.name, self.chunk)
        self.callees = Callees((C.VIDEO_ENCODER, C.AUDIO_ENCODER), C.TIMELINE_MODEL)

    def _one(self, request):
        videos = bytes_rows(request, C.IN_VIDEO.name)
        audios = bytes_rows(request, C.IN_AUDIO.name)
        rows = len(videos if videos is not None else audios or [])
        if rows > 1:
            raise MediaError(
                "request", "a timeline request carries one media file (batch of 1)", kind=ErrorKind.BAD_REQUEST
            )
        self.callees.ensure()
        timeline = compute_timeline(
            videos[0] if videos else None,
            audios[0] if audios else None,
            validate_params(_scalar(request, C.IN_WINDOW_S.name), _scalar(request, C.IN_HOP_S.name)),
            encode_video=self.encode_video,
            encode_audio=self.encode_audio,
            head=self.head,
            limits=self.limits,
            chunk=self.chunk,
            max_windows=self.max_windows,
            cancel=cancel_check(request),
        )
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(C.OUT_SEGMENTS.name, timeline.segments()[None]),
                pb_utils.Tensor(C.OUT_PROBABILITIES.name, timeline.clip_probabilities[None].astype(np.float32)),
                pb_utils.Tensor(C.OUT_QA_FLAGS.name, timeline.clip_qa_flags[None].astype(np.float32)),
            ]
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except Exception as exc:  # one request must never take the others down
                responses.append(failure_response("timeline", exc))
        return responses
