"""The reference pipeline: the same preprocessing, encoders and head, in-process.

``fusion-emotion predict --local DIR`` runs it on an exported repository; the
tests compare Triton's answers with it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.core.features import RequestFeatures, prepare_request, score_features
from fusion_emotion.core.fusion import FusionHead
from fusion_emotion.core.media import DEFAULT_LIMITS, MediaLimits
from fusion_emotion.core.onnx_runtime import DEFAULT_RUNTIME, Encoder

log = logging.getLogger(__name__)


class ReferencePipeline:
    def __init__(
        self,
        repository: str | Path,
        intra_op_threads: int = 0,
        limits: MediaLimits = DEFAULT_LIMITS,
        video_decoder: str = "pyav",
        runtime: str = DEFAULT_RUNTIME,
    ) -> None:
        """``video_decoder``: "pyav" or "dali_cpu" (the cpu_dali profile's decoder, for same-decoder checks);
        ``runtime``: the encoders' runtime, as the cpu profile's configs name it (parameter ``runtime``)."""
        repo = Path(repository)
        self.video_encoder = Encoder(repo / C.VIDEO_ENCODER / "1" / C.ONNX_FILENAME, intra_op_threads, runtime)
        self.audio_encoder = Encoder(repo / C.AUDIO_ENCODER / "1" / C.ONNX_FILENAME, intra_op_threads, runtime)
        self.head = FusionHead.load(repo / C.FUSION_HEAD / "1" / C.HEAD_WEIGHTS_FILENAME)
        self.limits = limits
        if video_decoder not in ("pyav", "dali_cpu"):
            raise ValueError(f"video_decoder must be pyav or dali_cpu, not {video_decoder!r}")
        self.dali = None
        if video_decoder == "dali_cpu":
            from fusion_emotion.core.dali_video import DaliPool

            self.dali = DaliPool("cpu", 1)

    def features(self, video: bytes | None, audio: bytes | None) -> RequestFeatures:
        if self.dali is None:
            return prepare_request(video, audio, self.limits)
        from fusion_emotion.core.dali_video import prepare_request_dali

        got = prepare_request_dali(video, audio, self.dali, self.limits)
        if got.lease is not None:
            try:
                got.features.frames = got.lease.host_clip()[0]
            finally:
                got.lease.release()
        return got.features

    def run_features(self, feats: RequestFeatures) -> tuple[np.ndarray, np.ndarray]:
        """-> (probabilities [6], qa_flags [6])."""
        v = self.video_encoder(feats.frames[None]) if feats.frames is not None else None
        a = self.audio_encoder(feats.waveform[None]) if feats.waveform is not None else None
        return score_features(self.head, feats, v, a)

    def predict(self, video: bytes | None, audio: bytes | None) -> tuple[np.ndarray, np.ndarray]:
        return self.run_features(self.features(video, audio))
