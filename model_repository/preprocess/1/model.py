"""preprocess: container bytes -> encoder inputs -> embeddings (encoders called through BLS).

A thin adapter: decoding, features and QA live in fusion_emotion.core (shared with the in-process
reference), every encoder call goes through fusion_emotion.server.bls. The requests of a batch are decoded
concurrently in threads (PyAV and numpy release the GIL), then each modality's rows reach its encoder
together; a modality no request sent costs no encoder work. One response per request, always: a request
that fails gets its own error and the rest of the batch goes on.
"""

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from fusion_emotion import contract as C
from fusion_emotion.core.dali_video import DaliFeatures, prepare_request_dali
from fusion_emotion.core.features import prepare_request
from fusion_emotion.core.media import MediaError, MediaLimits
from fusion_emotion.errors import ErrorKind, ServingError
from fusion_emotion.server.bls import BlsEncoder, Callees
from fusion_emotion.server.python_model import (
    as_serving_error,
    bytes_rows,
    cancel_check,
    error_response,
    failure_response,
    model_parameters,
)

log = logging.getLogger(__name__)


def _release(rows) -> None:
    """Hand DALI's pipelines back once the encoder has consumed their outputs (or will never)."""
    for row in rows:
        if row.lease is not None:
            row.lease.release()


def _cancelled() -> ServingError:
    return ServingError(ErrorKind.CANCELLED, "request", "request cancelled")


# Parameter video_decoder: "pyav" (default), "dali_cpu" (profile cpu_dali) or "dali_gpu" (NVDEC).
_DALI_DEVICES = {"dali_cpu": "cpu", "dali_gpu": "gpu"}


class TritonPythonModel:
    def initialize(self, args):
        config, params = model_parameters(args)
        # Every MediaLimits field can be set as a config parameter of the same name
        # (max_input_bytes = max_bytes); the rest keep MediaLimits' defaults.
        self.limits = MediaLimits.from_params(params)
        bls_batch = int(params.get("bls_max_batch", "8") or 8)
        self.video = BlsEncoder(C.VIDEO_ENCODER, C.VIDEO_FRAMES.name, C.VIDEO_ENC_OUT.name, bls_batch)
        self.audio = BlsEncoder(C.AUDIO_ENCODER, C.AUDIO_WAVEFORM.name, C.AUDIO_ENC_OUT.name, bls_batch)
        self.pool = ThreadPoolExecutor(max(1, int(config.get("max_batch_size", 1) or 1)), "decode")
        self.callees = Callees((C.VIDEO_ENCODER, C.AUDIO_ENCODER), C.PREPROCESS)
        decoder = params.get("video_decoder", "pyav") or "pyav"
        if decoder != "pyav" and decoder not in _DALI_DEVICES:
            raise ValueError(f"video_decoder must be pyav, dali_cpu or dali_gpu, not {decoder!r}")
        self.dali = None
        if decoder in _DALI_DEVICES:
            from fusion_emotion.core.dali_video import DaliPool

            device_id = int(args.get("model_instance_device_id", 0) or 0)
            pipelines = int(params.get("dali_pipelines", "2") or 2)
            self.dali = DaliPool(_DALI_DEVICES[decoder], pipelines, device_id=device_id)

    def _row(self, video, audio, cancel) -> DaliFeatures:
        if self.dali is not None:
            return prepare_request_dali(video, audio, self.dali, self.limits, cancel=cancel)
        return DaliFeatures(prepare_request(video, audio, self.limits, cancel=cancel), None, "pyav")

    def _features(self, request) -> list[DaliFeatures]:
        videos = bytes_rows(request, C.IN_VIDEO.name)
        audios = bytes_rows(request, C.IN_AUDIO.name)
        if videos is None and audios is None:
            raise MediaError(
                "request", "neither 'video' nor 'audio' was sent; at least one is required", kind=ErrorKind.BAD_REQUEST
            )
        if videos is not None and audios is not None and len(videos) != len(audios):
            raise MediaError(
                "request", f"'video' has {len(videos)} rows but 'audio' has {len(audios)}", kind=ErrorKind.BAD_REQUEST
            )
        cancel = cancel_check(request)
        n = len(videos if videos is not None else audios)
        rows: list[DaliFeatures] = []
        try:
            for i in range(n):
                video = videos[i] if videos is not None else None
                rows.append(self._row(video, audios[i] if audios is not None else None, cancel))
        except BaseException:
            _release(rows)
            raise
        return rows

    async def execute(self, requests):
        responses = [None] * len(requests)
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(
            *(loop.run_in_executor(self.pool, self._features, r) for r in requests), return_exceptions=True
        )
        per_request: list[tuple[int, list[DaliFeatures]]] = []
        for i, (request, result) in enumerate(zip(requests, decoded)):
            if isinstance(result, BaseException):
                responses[i] = failure_response("preprocess", result)
            elif request.is_cancelled():
                _release(result)
                responses[i] = error_response(_cancelled())
            else:
                per_request.append((i, result))
        rows = [row for _, feats in per_request for row in feats]
        # Host frames go to the encoder stacked; DALI's frames one request each, by DLPack (no host copy).
        host = [r for r in rows if r.features.frames is not None]
        device = [r for r in rows if r.lease is not None]
        waves = [r for r in rows if r.features.waveform is not None]
        try:
            self.callees.ensure()
            jobs = []
            if host:
                jobs.append(self.video.encode_async(np.stack([r.features.frames for r in host])))
            jobs += [self.video.encode_tensor_async(r.lease.clip) for r in device]
            if waves:
                jobs.append(self.audio.encode_async(np.stack([r.features.waveform for r in waves])))
            results = list(await asyncio.gather(*jobs))
        except Exception as exc:  # every request of the batch gets an answer
            error = as_serving_error("encoder", exc)
            for i, _ in per_request:
                responses[i] = error_response(error)
            return responses
        finally:
            _release(rows)
        video_emb: dict[int, np.ndarray] = {}
        if host:
            video_emb.update(zip(map(id, host), results.pop(0)))
        for r in device:
            video_emb[id(r)] = results.pop(0)[0]
        audio_emb = dict(zip(map(id, waves), results.pop(0))) if waves else {}

        for i, feats in per_request:
            n = len(feats)
            v = np.zeros((n, C.VIDEO_EMBED_DIM), np.float32)
            a = np.zeros((n, C.AUDIO_EMBED_DIM), np.float32)
            mask = np.zeros((n, 2), np.float32)
            qa = np.stack([f.features.media_qa for f in feats]).astype(np.float32)
            for j, f in enumerate(feats):
                if id(f) in video_emb:
                    v[j], mask[j, 0] = video_emb[id(f)], 1.0
                if id(f) in audio_emb:
                    a[j], mask[j, 1] = audio_emb[id(f)], 1.0
            responses[i] = pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(C.VIDEO_EMBEDDING.name, v),
                    pb_utils.Tensor(C.AUDIO_EMBEDDING.name, a),
                    pb_utils.Tensor(C.MODALITY_MASK.name, mask),
                    pb_utils.Tensor(C.MEDIA_QA.name, qa),
                ]
            )
        return responses

    def finalize(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
