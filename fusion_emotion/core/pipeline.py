"""The reference pipeline: the same preprocessing, encoders and head, in-process.

``fusion-emotion predict --local DIR`` runs it on an exported repository; the
tests compare Triton's answers with it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.core.features import RequestFeatures, prepare_request
from fusion_emotion.core.fusion import FusionHead, score
from fusion_emotion.core.media import DEFAULT_LIMITS, MediaLimits
from fusion_emotion.core.onnx_runtime import Encoder

log = logging.getLogger(__name__)


class ReferencePipeline:
    def __init__(self, repository: str | Path, intra_op_threads: int = 0, limits: MediaLimits = DEFAULT_LIMITS) -> None:
        repo = Path(repository)
        self.video_encoder = Encoder(repo / C.VIDEO_ENCODER / "1" / C.ONNX_FILENAME, intra_op_threads)
        self.audio_encoder = Encoder(repo / C.AUDIO_ENCODER / "1" / C.ONNX_FILENAME, intra_op_threads)
        self.head = FusionHead.load(repo / C.FUSION_HEAD / "1" / C.HEAD_WEIGHTS_FILENAME)
        self.limits = limits

    def features(self, video: bytes | None, audio: bytes | None) -> RequestFeatures:
        return prepare_request(video, audio, self.limits)

    def run_features(self, feats: RequestFeatures) -> tuple[np.ndarray, np.ndarray]:
        """-> (probabilities [6], qa_flags [6])."""
        v = np.zeros((1, C.VIDEO_EMBED_DIM), np.float32)
        a = np.zeros((1, C.AUDIO_EMBED_DIM), np.float32)
        mask = np.zeros((1, 2), np.float32)
        if feats.frames is not None:
            v, mask[0, 0] = self.video_encoder(feats.frames[None]), 1.0
        if feats.waveform is not None:
            a, mask[0, 1] = self.audio_encoder(feats.waveform[None]), 1.0
        probs, flags = score(self.head, v, a, mask, feats.media_qa[None].astype(np.float32))
        return probs[0], flags[0]

    def predict(self, video: bytes | None, audio: bytes | None) -> tuple[np.ndarray, np.ndarray]:
        return self.run_features(self.features(video, audio))
