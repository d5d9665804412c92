"""fusion_emotion_timeline: container bytes -> per-window probabilities + the clip-level result.

All numerics live in fusion_emotion.core.timeline (shared with the in-process
reference); this adapter only supplies BLS-backed encoders and moves tensors.
Each request is decoded once and its windows reach the encoders in chunks of
``bls_max_batch`` rows (the encoders' max batch), so memory stays bounded.
"""

import logging
import math
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from fusion_emotion import contract as C
from fusion_emotion.core.fusion import FusionHead
from fusion_emotion.core.media import MediaError, MediaLimits
from fusion_emotion.core.timeline import compute_timeline, timeline_limits, validate_params
from fusion_emotion.server.python_model import bytes_rows, ensure_loaded, error_response, model_parameters

log = logging.getLogger(__name__)


class EncoderError(RuntimeError):
    pass


def _bls_encoder(model, input_name):
    def encode(batch):
        request = pb_utils.InferenceRequest(
            model_name=model,
            requested_output_names=["embedding"],
            inputs=[pb_utils.Tensor(input_name, np.ascontiguousarray(batch, dtype=np.float32))],
        )
        response = request.exec()
        if response.has_error():
            raise EncoderError(f"{model}: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, "embedding").as_numpy()

    return encode


def _scalar(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    value = float(np.asarray(tensor.as_numpy(), dtype=np.float64).reshape(-1)[0])
    if not math.isfinite(value):
        raise MediaError(name, "must be a finite number of seconds")
    return value


class TritonPythonModel:
    def initialize(self, args):
        _, params = model_parameters(args)
        repository = Path(args["model_repository"]).parent
        self.head = FusionHead.load(repository / C.FUSION_HEAD / "1" / C.HEAD_WEIGHTS_FILENAME)
        base = MediaLimits(max_bytes=int(params.get("max_input_bytes", C.MAX_INPUT_BYTES)))
        self.limits = timeline_limits(float(params.get("max_duration_s", 600) or 600), base)
        self.chunk = max(1, int(params.get("bls_max_batch", "8") or 8))
        self.encode_video = _bls_encoder(C.VIDEO_ENCODER, C.VIDEO_FRAMES.name)
        self.encode_audio = _bls_encoder(C.AUDIO_ENCODER, C.AUDIO_WAVEFORM.name)
        self.encoders_ready = False

    def _ensure_encoders(self):
        if not self.encoders_ready:
            ensure_loaded((C.VIDEO_ENCODER, C.AUDIO_ENCODER), C.TIMELINE_MODEL)
            self.encoders_ready = True

    def _one(self, request):
        videos = bytes_rows(request, C.IN_VIDEO.name)
        audios = bytes_rows(request, C.IN_AUDIO.name)
        rows = len(videos if videos is not None else audios or [])
        if rows > 1:
            raise MediaError("request", "a timeline request carries one media file (batch of 1)")
        self._ensure_encoders()
        timeline = compute_timeline(
            videos[0] if videos else None,
            audios[0] if audios else None,
            validate_params(_scalar(request, C.IN_WINDOW_S.name), _scalar(request, C.IN_HOP_S.name)),
            encode_video=self.encode_video,
            encode_audio=self.encode_audio,
            head=self.head,
            limits=self.limits,
            chunk=self.chunk,
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
            except MediaError as exc:
                responses.append(error_response(str(exc)))
            except EncoderError as exc:
                log.error("timeline encoder call failed: %s", exc)
                responses.append(error_response(f"encoder failed: {exc}", invalid_arg=False))
            except Exception as exc:  # one request must never take the others down
                log.exception("timeline failed")
                responses.append(error_response(f"timeline failed: {type(exc).__name__}", invalid_arg=False))
        return responses
