"""fusion_emotion_stream: live streams of audio (and frames) in, one update per hop out (decoupled).

A thin adapter over fusion_emotion.core.stream_runtime (states, batching encoder worker, sweeper) and
fusion_emotion.core.stream (windows, buffers, features): it reads each request's tensors, keeps the START
request's response sender as the stream's sink, and closes every other request with its final flag.
Encoders are called through fusion_emotion.server.bls. Synchronous ``execute`` (under load, a decoupled
model's async execute ran a sequence's chunks out of order on Triton 2.51), blocking BLS from the worker thread.
"""

import logging
import threading
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from fusion_emotion import contract as C
from fusion_emotion.core.fusion import FusionHead
from fusion_emotion.core.stream import StreamLimits, Update, stream_config
from fusion_emotion.core.stream_runtime import StreamRuntime
from fusion_emotion.errors import ErrorKind, ServingError
from fusion_emotion.server.bls import Encoders
from fusion_emotion.server.python_model import (
    as_serving_error,
    error_response,
    model_parameters,
    optional_input,
    scalar,
)

log = logging.getLogger(__name__)

_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _update_response(update, final):
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor(C.OUT_T_WINDOW.name, np.array([[update.t_start, update.t_end]], np.float32)),
            pb_utils.Tensor(C.OUT_PROBABILITIES.name, np.asarray(update.probabilities, np.float32)[None]),
            pb_utils.Tensor(C.OUT_QA_FLAGS.name, np.asarray(update.qa_flags, np.float32)[None]),
            pb_utils.Tensor(C.OUT_FINAL.name, np.array([[final]], np.bool_)),
        ]
    )


def _final_only(final):
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(C.OUT_FINAL.name, np.array([[final]], np.bool_))])


class _SenderSink:
    """One stream's responses, on its START request's sender."""

    def __init__(self, request):
        self.request = request
        self.sender = request.get_response_sender()
        # acks come from execute's thread, updates from the encoder worker, errors from either: one send at
        # a time (python_backend does not promise a sender is thread-safe), none after the final one
        self._lock = threading.Lock()
        self._done = False

    def _send(self, response=None, flags=0) -> None:
        with self._lock:
            if self._done:
                return
            self._done = bool(flags & _FINAL)
            if response is None:
                self.sender.send(flags=flags)
            else:
                self.sender.send(response, flags=flags)

    def accepted(self) -> None:
        # the first response of every stream: only `final` (false), so a caller knows START was taken
        self._send(_final_only(False))

    def update(self, update: Update) -> None:
        self._send(_update_response(update, False))

    def ack(self) -> None:
        # a chunk was taken: a flags-only non-final response, so a caller can bound its chunks in flight
        self._send(_final_only(False))

    def finish(self, update):
        if update is None:  # ended on a hop boundary: the final response carries only `final`
            response = _final_only(True)
        else:
            response = _update_response(update, True)
        self._send(response, flags=_FINAL)

    def error(self, error: ServingError) -> None:
        self._send(error_response(error), flags=_FINAL)

    def abort(self) -> None:
        self._send(flags=_FINAL)

    def cancelled(self) -> bool:
        return self.sender.is_cancelled()


class TritonPythonModel:
    def initialize(self, args):
        config, params = model_parameters(args)
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("fusion_emotion_stream must be decoupled")
        repository = Path(args["model_repository"]).parent
        head = FusionHead.load(repository / C.FUSION_HEAD / "1" / C.HEAD_WEIGHTS_FILENAME)
        bls_batch = max(1, int(params.get("bls_max_batch", "8") or 8))
        self.limits = StreamLimits.from_params(params)
        self.encoders = Encoders(C.STREAM_MODEL, bls_batch)
        self.runtime = StreamRuntime(
            self.limits,
            head,
            self.encoders.video,
            self.encoders.audio,
            max_batch=int(params.get("max_batch_windows", "16") or 16),
        )

    def _one(self, request):
        """Handle one chunk; True when its sender was taken as the stream's sink (START)."""
        sid = int(scalar(request, "CORRID"))
        start = bool(scalar(request, "START"))
        end = bool(scalar(request, "END"))
        audio = optional_input(request, C.IN_AUDIO_CHUNK.name)
        jpegs = optional_input(request, C.IN_FRAMES_JPEG.name)
        rgbs = optional_input(request, C.IN_FRAMES_RGB.name)
        times = optional_input(request, C.IN_FRAME_TIMES.name)
        abort = scalar(request, C.IN_ABORT.name)
        held = False
        if start:
            self.encoders.callees.ensure()
            config = stream_config(
                scalar(request, C.IN_SAMPLE_RATE.name),
                scalar(request, C.IN_CHANNELS.name),
                scalar(request, C.IN_HOP_S.name),
                scalar(request, C.IN_WINDOW_S.name),
            )
            self.runtime.start(sid, config, _SenderSink(request))
            held = True
        self.runtime.chunk(
            sid,
            audio=None if audio is None else audio.reshape(-1),
            jpegs=None if jpegs is None else [bytes(b) for b in jpegs.reshape(-1)],
            rgbs=None if rgbs is None else rgbs.reshape(-1, *rgbs.shape[-3:]),
            times=times,
            end=end,
            abort=bool(abort),
        )
        return held

    def execute(self, requests):
        for request in requests:
            if not scalar(request, "READY"):
                continue  # an empty slot the direct strategy filled; it carries nothing
            held = False
            try:
                held = self._one(request)
            except Exception as exc:  # this request's own error; other streams go on
                error = as_serving_error("stream", exc)
                if not isinstance(exc, ServingError) or error.kind is ErrorKind.INTERNAL:
                    log.warning("stream request failed: %s", error.kind.value)
                request.get_response_sender().send(error_response(error), flags=_FINAL)
                continue
            if not held:
                request.get_response_sender().send(flags=_FINAL)
        return None

    def finalize(self):
        self.runtime.close()
