"""fusion_emotion_timeline: container bytes -> per-window probabilities + the clip-level result.

A thin adapter over fusion_emotion.core.timeline (decoding with the profile's decoder, windows, scoring) and
fusion_emotion.server.bls (the encoder calls). Each request is decoded once and its windows reach the
encoders in chunks of ``bls_max_batch`` rows, so memory stays bounded; the window count is capped
(``max_windows``) and a cancelled request stops between chunks and while decoding.
"""

import logging
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from fusion_emotion import contract as C
from fusion_emotion.core.fusion import FusionHead
from fusion_emotion.core.probe import MediaError, MediaLimits
from fusion_emotion.core.rows import video_backend
from fusion_emotion.core.timeline import DEFAULT_MAX_WINDOWS, compute_timeline, timeline_limits, window_params
from fusion_emotion.errors import ErrorKind
from fusion_emotion.server.bls import Encoders
from fusion_emotion.server.metrics import ModelMetrics
from fusion_emotion.server.python_model import bytes_rows, cancel_check, failure_response, model_parameters, scalar

log = logging.getLogger(__name__)


class TritonPythonModel:
    def initialize(self, args):
        _, params = model_parameters(args)
        repository = Path(args["model_repository"]).parent
        self.head = FusionHead.load(repository / C.FUSION_HEAD / "1" / C.HEAD_WEIGHTS_FILENAME)
        base = MediaLimits.from_params({k: v for k, v in params.items() if k != "max_duration_s"})
        self.limits = timeline_limits(float(params.get("max_duration_s", 600) or 600), base)
        self.max_windows = int(params.get("max_windows", DEFAULT_MAX_WINDOWS) or DEFAULT_MAX_WINDOWS)
        self.chunk = max(1, int(params.get("bls_max_batch", "8") or 8))
        self.encoders = Encoders(C.TIMELINE_MODEL, self.chunk)
        self.metrics = ModelMetrics(C.TIMELINE_MODEL)
        # Parameter video_decoder: "pyav" (default), "dali_cpu" (profile cpu_dali) or "dali_gpu" (NVDEC).
        self.backend = video_backend(
            params.get("video_decoder") or "pyav",
            device_id=int(args.get("model_instance_device_id", 0) or 0),
            pipelines=1,
        )

    def _one(self, request):
        videos = bytes_rows(request, C.IN_VIDEO.name)
        audios = bytes_rows(request, C.IN_AUDIO.name)
        if len(videos if videos is not None else audios or []) > 1:
            raise MediaError(
                "request", "a timeline request carries one media file (batch of 1)", kind=ErrorKind.BAD_REQUEST
            )
        self.encoders.callees.ensure()
        with self.metrics.timed("timeline"):
            timeline = self._compute(videos, audios, request)
        if timeline.decoder != "none":
            self.metrics.decoded(timeline.decoder, timeline.fallback)
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(C.OUT_SEGMENTS.name, timeline.segments()[None]),
                pb_utils.Tensor(C.OUT_PROBABILITIES.name, timeline.clip_probabilities[None].astype(np.float32)),
                pb_utils.Tensor(C.OUT_QA_FLAGS.name, timeline.clip_qa_flags[None].astype(np.float32)),
            ]
        )

    def _compute(self, videos, audios, request):
        return compute_timeline(
            videos[0] if videos else None,
            audios[0] if audios else None,
            window_params(scalar(request, C.IN_WINDOW_S.name), scalar(request, C.IN_HOP_S.name)),
            encode_video=self.encoders.video,
            encode_audio=self.encoders.audio,
            head=self.head,
            backend=self.backend,
            limits=self.limits,
            chunk=self.chunk,
            max_windows=self.max_windows,
            cancel=cancel_check(request),
            channel=scalar(request, C.IN_CHANNEL.name),
            vad=bool(scalar(request, C.IN_VAD.name) or False),
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except Exception as exc:  # one request must never take the others down
                responses.append(failure_response("timeline", exc))
        return responses
