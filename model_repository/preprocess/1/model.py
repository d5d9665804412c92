"""preprocess: container bytes -> encoder inputs -> embeddings.

Decoding is pure (fusion_emotion.core.media); the encoders are called through BLS
with one batch per modality for the whole execute, and only for the rows that
have that modality, so an audio-only request costs no video-encoder work.
"""

import asyncio
import logging

import numpy as np
import triton_python_backend_utils as pb_utils

from fusion_emotion import contract as C
from fusion_emotion.core.features import RequestFeatures, prepare_request
from fusion_emotion.core.media import MediaError, MediaLimits
from fusion_emotion.server.python_model import bytes_rows, ensure_loaded, error_response, model_parameters

log = logging.getLogger(__name__)


class EncoderError(RuntimeError):
    pass


class TritonPythonModel:
    def initialize(self, args):
        _, params = model_parameters(args)
        # Every MediaLimits field can be set as a config parameter of the same name
        # (max_input_bytes = max_bytes); the rest keep MediaLimits' defaults.
        self.limits = MediaLimits.from_params(params)
        self.bls_batch = int(params.get("bls_max_batch", "8") or 8)
        self.loop = asyncio.new_event_loop()
        self.encoders_ready = False

    def _ensure_encoders(self):
        if not self.encoders_ready:
            ensure_loaded((C.VIDEO_ENCODER, C.AUDIO_ENCODER), C.PREPROCESS)
            self.encoders_ready = True

    def _request_features(self, request):
        videos = bytes_rows(request, C.IN_VIDEO.name)
        audios = bytes_rows(request, C.IN_AUDIO.name)
        if videos is None and audios is None:
            raise MediaError("request", "neither 'video' nor 'audio' was sent; at least one is required")
        if videos is not None and audios is not None and len(videos) != len(audios):
            raise MediaError("request", f"'video' has {len(videos)} rows but 'audio' has {len(audios)}")
        n = len(videos if videos is not None else audios)
        return [
            prepare_request(
                videos[i] if videos is not None else None,
                audios[i] if audios is not None else None,
                self.limits,
            )
            for i in range(n)
        ]

    async def _bls(self, model, input_name, batch):
        chunks = [batch[i : i + self.bls_batch] for i in range(0, len(batch), self.bls_batch)]
        requests = [
            pb_utils.InferenceRequest(
                model_name=model,
                requested_output_names=["embedding"],
                inputs=[pb_utils.Tensor(input_name, np.ascontiguousarray(chunk))],
            )
            for chunk in chunks
        ]
        outputs = []
        for response in await asyncio.gather(*(r.async_exec() for r in requests)):
            if response.has_error():
                raise EncoderError(f"{model}: {response.error().message()}")
            outputs.append(pb_utils.get_output_tensor_by_name(response, "embedding").as_numpy())
        return np.concatenate(outputs)

    async def _encode(self, frames, waves):
        jobs = []
        if frames:
            jobs.append(self._bls(C.VIDEO_ENCODER, C.VIDEO_FRAMES.name, np.stack(frames)))
        if waves:
            jobs.append(self._bls(C.AUDIO_ENCODER, C.AUDIO_WAVEFORM.name, np.stack(waves)))
        results = await asyncio.gather(*jobs)
        video = results.pop(0) if frames else None
        audio = results.pop(0) if waves else None
        return video, audio

    def execute(self, requests):
        responses = [None] * len(requests)
        per_request: list[tuple[int, list[RequestFeatures]]] = []
        for i, request in enumerate(requests):
            try:
                per_request.append((i, self._request_features(request)))
            except MediaError as exc:
                responses[i] = error_response(str(exc))
            except Exception as exc:  # never let one request take the batch down
                log.exception("preprocess failed")
                responses[i] = error_response(f"preprocess failed: {type(exc).__name__}", invalid_arg=False)

        rows = [row for _, feats in per_request for row in feats]
        try:
            self._ensure_encoders()
        except Exception as exc:
            log.exception("encoders unavailable")
            for i, _ in per_request:
                responses[i] = error_response(f"encoders unavailable: {exc}", invalid_arg=False)
            return responses
        frames = [r.frames for r in rows if r.frames is not None]
        waves = [r.waveform for r in rows if r.waveform is not None]
        try:
            video_emb, audio_emb = self.loop.run_until_complete(self._encode(frames, waves)) if rows else (None, None)
        except Exception as exc:
            log.exception("encoder call failed")
            for i, _ in per_request:
                responses[i] = error_response(f"encoder failed: {exc}", invalid_arg=False)
            return responses

        vi = ai = 0
        for i, feats in per_request:
            n = len(feats)
            v = np.zeros((n, C.VIDEO_EMBED_DIM), np.float32)
            a = np.zeros((n, C.AUDIO_EMBED_DIM), np.float32)
            mask = np.zeros((n, 2), np.float32)
            qa = np.stack([f.media_qa for f in feats]).astype(np.float32)
            for j, f in enumerate(feats):
                if f.frames is not None:
                    v[j], mask[j, 0] = video_emb[vi], 1.0
                    vi += 1
                if f.waveform is not None:
                    a[j], mask[j, 1] = audio_emb[ai], 1.0
                    ai += 1
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
        self.loop.close()
