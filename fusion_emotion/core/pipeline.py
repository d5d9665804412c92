"""The reference pipeline: the same rows, encoders and head as the Triton models, in-process.

``fusion-emotion predict --local DIR`` runs it on an exported repository; the tests compare Triton's
answers with it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.core.embed import embed, score_embeddings
from fusion_emotion.core.fusion import FusionHead
from fusion_emotion.core.onnx_runtime import DEFAULT_RUNTIME, Encoder
from fusion_emotion.core.probe import DEFAULT_LIMITS, MediaLimits
from fusion_emotion.core.rows import Row, decode_row, video_backend

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
        self.backend = video_backend(video_decoder, pipelines=1)

    def row(self, video: bytes | None, audio: bytes | None) -> Row:
        """One request's row (release it once encoded)."""
        return decode_row(video, audio, self.backend, self.limits)

    def score_rows(self, rows: list[Row]) -> tuple[np.ndarray, np.ndarray]:
        """-> (probabilities [N, 6], qa_flags [N, 6])."""
        host = [Row(r.host_frames(), r.waveform, r.media_qa, r.decoder) for r in rows]  # the reference runs on CPU
        return score_embeddings(self.head, embed(host, self.video_encoder, self.audio_encoder))

    def predict(self, video: bytes | None, audio: bytes | None) -> tuple[np.ndarray, np.ndarray]:
        """-> (probabilities [6], qa_flags [6])."""
        row = self.row(video, audio)
        try:
            probs, flags = self.score_rows([row])
        finally:
            row.release()
        return probs[0], flags[0]
