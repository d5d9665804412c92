"""Rows -> encoder calls -> embeddings and the modality mask -> the fusion head's answers.

One batch of rows (the requests of a Triton batch, a chunk of timeline windows, the due updates of many live
streams) becomes at most one call per modality for the rows whose frames are on the host, plus one call per
device clip (a DALI output, handed on by DLPack); a modality no row has costs no call. :class:`EncoderCalls`
lists those calls and puts the answers back in row order, for sync callers (:func:`embed`) and async ones
(the ``preprocess`` model's BLS) alike. :func:`embeddings` is the one place the zero embeddings and the mask
of absent modalities are built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.core.fusion import FusionHead, score
from fusion_emotion.core.rows import Row

Encode = Callable[[Any], np.ndarray]
"""An encoder as a callable: a batch (numpy, or a DLPack tensor) -> float32 [N, dim]."""


@dataclass
class Embeddings:
    """What the fusion head takes for N rows (an absent modality: zero embedding, mask 0)."""

    video: np.ndarray  # float32 [N, 512]
    audio: np.ndarray  # float32 [N, 768]
    mask: np.ndarray  # float32 [N, 2]: has_video, has_audio
    media_qa: np.ndarray  # float32 [N, 4]

    def __len__(self) -> int:
        return self.video.shape[0]

    def rows(self, start: int, stop: int) -> Embeddings:
        return Embeddings(
            self.video[start:stop], self.audio[start:stop], self.mask[start:stop], self.media_qa[start:stop]
        )


def embeddings(
    n: int,
    video: tuple[Sequence[int], np.ndarray] | None = None,
    audio: tuple[Sequence[int], np.ndarray] | None = None,
    media_qa: np.ndarray | None = None,
) -> Embeddings:
    """N rows' embeddings from the rows that have each modality: ``(row indices, [k, dim] embeddings)``.

    ``media_qa`` defaults to NaN (not computed, as for timeline windows).
    """
    out = Embeddings(
        np.zeros((n, C.VIDEO_EMBED_DIM), np.float32),
        np.zeros((n, C.AUDIO_EMBED_DIM), np.float32),
        np.zeros((n, 2), np.float32),
        np.full((n, len(C.MEDIA_QA_NAMES)), np.nan, np.float32) if media_qa is None else media_qa.astype(np.float32),
    )
    for col, (target, given) in enumerate(((out.video, video), (out.audio, audio))):
        if given is not None and len(given[0]):
            index = np.asarray(given[0], dtype=np.int64)
            target[index] = np.asarray(given[1], np.float32).reshape(len(index), -1)
            out.mask[index, col] = 1.0
    return out


class EncoderCalls:
    """The encoder inputs of a batch of rows, and how their answers map back to the rows.

    ``video_inputs``: the host rows' frames stacked (first, when any), then each device clip on its own;
    ``audio_input``: every waveform stacked, or None.
    """

    def __init__(self, rows: Sequence[Row]) -> None:
        self.n = len(rows)
        host = [i for i, r in enumerate(rows) if r.frames is not None and r.frames_on_host]
        device = [i for i, r in enumerate(rows) if r.frames is not None and not r.frames_on_host]
        waves = [i for i, r in enumerate(rows) if r.waveform is not None]
        self._video_rows: list[list[int]] = ([host] if host else []) + [[i] for i in device]
        self.video_inputs: list[Any] = ([np.stack([rows[i].frames for i in host])] if host else []) + [
            rows[i].frames for i in device
        ]
        self._audio_rows = waves
        self.audio_input = np.stack([rows[i].waveform for i in waves]) if waves else None
        self.media_qa = (
            np.stack([r.media_qa for r in rows]).astype(np.float32)
            if rows
            else np.zeros((0, len(C.MEDIA_QA_NAMES)), np.float32)
        )

    def assemble(self, video_outputs: Sequence[np.ndarray], audio_output: np.ndarray | None) -> Embeddings:
        """The embeddings, given one output per ``video_inputs`` entry and the ``audio_input``'s output."""
        if len(video_outputs) != len(self._video_rows):
            raise ValueError(f"{len(video_outputs)} video outputs for {len(self._video_rows)} calls")
        video = None
        if self._video_rows:
            index = [i for rows in self._video_rows for i in rows]
            video = (index, np.concatenate([np.asarray(o, np.float32) for o in video_outputs]))
        audio = (self._audio_rows, audio_output) if self._audio_rows and audio_output is not None else None
        return embeddings(self.n, video, audio, self.media_qa)


def embed(rows: Sequence[Row], encode_video: Encode, encode_audio: Encode) -> Embeddings:
    """Encode a batch of rows (blocking encoder calls)."""
    calls = EncoderCalls(rows)
    video = [encode_video(x) for x in calls.video_inputs]
    audio = encode_audio(calls.audio_input) if calls.audio_input is not None else None
    return calls.assemble(video, audio)


def score_embeddings(head: FusionHead, emb: Embeddings) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, 6], qa_flags [N, 6]), exactly as the ``fusion_head`` model computes them."""
    return score(head, emb.video, emb.audio, emb.mask, emb.media_qa)


def probabilities(head: FusionHead, emb: Embeddings) -> np.ndarray:
    """The fused probabilities alone [N, 6] (timeline windows carry no per-window QA flags)."""
    if not len(emb):
        return np.zeros((0, C.NUM_CLASSES), np.float32)
    return head.probabilities(emb.video, emb.audio, emb.mask)
