"""The fusion head in numpy: serving needs no torch.

The head is an MLP over ``concat(video_embedding, audio_embedding)``; a missing
modality contributes a zero embedding (the convention the head is trained
with, via modality dropout). Weights come from ``fusion_head.npz`` written by
export: ``w0, b0, w1, b1, ...`` (PyTorch ``Linear`` layout: [out, in]) and
``temperature``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.core import qa


@dataclass
class FusionHead:
    weights: list[np.ndarray]
    biases: list[np.ndarray]
    temperature: float = 1.0

    @classmethod
    def load(cls, path: str | Path) -> FusionHead:
        with np.load(path) as z:
            n = sum(1 for k in z.files if k.startswith("w"))
            weights = [z[f"w{i}"].astype(np.float32) for i in range(n)]
            biases = [z[f"b{i}"].astype(np.float32) for i in range(n)]
            temperature = float(z["temperature"]) if "temperature" in z.files else 1.0
        head = cls(weights, biases, temperature)
        head.validate()
        return head

    def save(self, path: str | Path) -> None:
        arrays = {f"w{i}": w for i, w in enumerate(self.weights)}
        arrays.update({f"b{i}": b for i, b in enumerate(self.biases)})
        np.savez(path, temperature=np.float32(self.temperature), **arrays)

    def validate(self) -> None:
        expected_in = C.VIDEO_EMBED_DIM + C.AUDIO_EMBED_DIM
        if not self.weights:
            raise ValueError("fusion head has no layers")
        if self.weights[0].shape[1] != expected_in:
            raise ValueError(f"fusion head input is {self.weights[0].shape[1]}, expected {expected_in}")
        if self.weights[-1].shape[0] != C.NUM_CLASSES:
            raise ValueError(f"fusion head output is {self.weights[-1].shape[0]}, expected {C.NUM_CLASSES}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def logits(self, video_emb: np.ndarray, audio_emb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """[B,512], [B,768], [B,2] (has_video, has_audio) -> logits [B,6]."""
        x = np.concatenate([video_emb * mask[:, :1], audio_emb * mask[:, 1:2]], axis=1, dtype=np.float32)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = x @ w.T + b
            if i < len(self.weights) - 1:
                np.maximum(x, 0.0, out=x)
        return x

    def probabilities(self, video_emb: np.ndarray, audio_emb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return softmax(self.logits(video_emb, audio_emb, mask) / self.temperature)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def score(
    head: FusionHead, video_emb: np.ndarray, audio_emb: np.ndarray, mask: np.ndarray, media_qa: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fused probabilities [B,6] and the QA flags [B,6] (contract.QA_FLAG_NAMES order, NaN = absent).

    ``modality_consistency_score`` compares the head's answers with each modality
    alone (the other zeroed, as for a missing modality); it exists only when both
    modalities are present.
    """
    probs = head.probabilities(video_emb, audio_emb, mask)
    n = probs.shape[0]
    flags = np.full((n, len(C.QA_FLAG_NAMES)), np.nan, dtype=np.float32)
    flags[:, : len(C.MEDIA_QA_NAMES)] = media_qa
    both = (mask[:, 0] > 0) & (mask[:, 1] > 0)
    if both.any():
        only_video = np.tile(np.array([[1.0, 0.0]], np.float32), (int(both.sum()), 1))
        p_video = head.probabilities(video_emb[both], audio_emb[both], only_video)
        p_audio = head.probabilities(video_emb[both], audio_emb[both], only_video[:, ::-1].copy())
        flags[both, len(C.MEDIA_QA_NAMES)] = [qa.consistency(pv, pa) for pv, pa in zip(p_video, p_audio)]
    consistency_col = len(C.MEDIA_QA_NAMES)
    for i in range(n):
        flags[i, consistency_col + 1] = qa.overall_confidence(
            probs[i], flags[i, :consistency_col], flags[i, consistency_col]
        )
    return probs, flags
