"""preprocess: container bytes -> rows -> embeddings, the encoders called through BLS.

A thin adapter over fusion_emotion.core.rows (decoding with the profile's decoder, which audio counts, QA)
and fusion_emotion.server.bls (the encoder calls). The requests of a batch are decoded concurrently in
threads, then their rows reach each encoder together; a modality no row has costs no encoder work. One
response per request, always: a request that fails gets its own error and the rest of the batch goes on.
"""

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import triton_python_backend_utils as pb_utils

from fusion_emotion import contract as C
from fusion_emotion.core.probe import MediaLimits
from fusion_emotion.core.rows import decode_rows, release_rows, video_backend
from fusion_emotion.errors import ErrorKind, ServingError
from fusion_emotion.server.bls import Encoders
from fusion_emotion.server.metrics import ModelMetrics
from fusion_emotion.server.python_model import (
    as_serving_error,
    bytes_rows,
    cancel_check,
    error_response,
    failure_response,
    model_parameters,
)

log = logging.getLogger(__name__)

_CANCELLED = ServingError(ErrorKind.CANCELLED, "request", "request cancelled")


def _response(emb):
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor(C.VIDEO_EMBEDDING.name, emb.video),
            pb_utils.Tensor(C.AUDIO_EMBEDDING.name, emb.audio),
            pb_utils.Tensor(C.MODALITY_MASK.name, emb.mask),
            pb_utils.Tensor(C.MEDIA_QA.name, emb.media_qa),
        ]
    )


class TritonPythonModel:
    def initialize(self, args):
        config, params = model_parameters(args)
        # Every MediaLimits field can be set as a config parameter of the same name (max_input_bytes = max_bytes).
        self.limits = MediaLimits.from_params(params)
        self.encoders = Encoders(C.PREPROCESS, int(params.get("bls_max_batch", "8") or 8))
        self.metrics = ModelMetrics(C.PREPROCESS)
        self.pool = ThreadPoolExecutor(max(1, int(config.get("max_batch_size", 1) or 1)), "decode")
        # Parameter video_decoder: "pyav" (default), "dali_cpu" (profile cpu_dali) or "dali_gpu" (NVDEC).
        self.backend = video_backend(
            params.get("video_decoder") or "pyav",
            device_id=int(args.get("model_instance_device_id", 0) or 0),
            pipelines=int(params.get("dali_pipelines", "2") or 2),
        )

    def _rows(self, request):
        videos = bytes_rows(request, C.IN_VIDEO.name)
        audios = bytes_rows(request, C.IN_AUDIO.name)
        rows = decode_rows(videos, audios, self.backend, self.limits, cancel_check(request))
        self.metrics.rows_decoded(rows)
        for row in rows:
            self.metrics.observe("decode", row.decode_s)
            self.metrics.observe("qa", row.qa_s)
        return rows

    async def execute(self, requests):
        responses = [None] * len(requests)
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(
            *(loop.run_in_executor(self.pool, self._rows, r) for r in requests), return_exceptions=True
        )
        good = []  # (request index, its rows)
        for i, (request, rows) in enumerate(zip(requests, decoded)):
            if isinstance(rows, BaseException):
                responses[i] = failure_response("preprocess", rows)
            elif request.is_cancelled():
                release_rows(rows)
                responses[i] = error_response(_CANCELLED)
            else:
                good.append((i, rows))
        rows = [row for _, request_rows in good for row in request_rows]
        try:
            emb = await self.encoders.embed_async(rows)
        except Exception as exc:  # every request of the batch gets an answer
            error = as_serving_error("encoder", exc)
            for i, _ in good:
                responses[i] = error_response(error)
            return responses
        finally:
            release_rows(rows)
        start = 0
        for i, request_rows in good:
            responses[i] = _response(emb.rows(start, start + len(request_rows)))
            start += len(request_rows)
        return responses

    def finalize(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
