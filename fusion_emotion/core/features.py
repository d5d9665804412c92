"""One request's media -> everything the encoders and the fusion head need, and the head's scoring.

Shared by the Triton ``preprocess`` and timeline models and the in-process reference pipeline, so they all
compute the same numbers from the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.core import qa
from fusion_emotion.core.fusion import FusionHead, score
from fusion_emotion.core.media import (
    DEFAULT_LIMITS,
    Cancel,
    MediaError,
    MediaLimits,
    decode_audio,
    decode_video,
    frames_for_model,
    waveform_for_model,
)
from fusion_emotion.errors import ErrorKind


@dataclass
class RequestFeatures:
    frames: np.ndarray | None  # float32 [3, 16, 112, 112], None = no video
    waveform: np.ndarray | None  # float32 [AUDIO_SAMPLES], None = no audio
    media_qa: np.ndarray  # float32 [4] in contract.MEDIA_QA_NAMES order, NaN = absent


def clip_features(
    raw_frames: np.ndarray | None,
    qa_frames: np.ndarray | None,
    native: np.ndarray | None,
    rate: int | None,
    input_name: str = "video",
) -> RequestFeatures:
    """Decoded media (uint8 frames at 128x171, the face detector's frames, native audio) -> model inputs + QA.

    Every model input is checked finite here, whatever produced it, so NaN never reaches an encoder.
    """
    frames = frames_for_model(raw_frames) if raw_frames is not None else None
    waveform = waveform_for_model(native, rate) if native is not None and rate else None
    if frames is not None and not np.isfinite(frames).all():
        raise MediaError(input_name, "decoded frames are not finite")
    if waveform is not None and not np.isfinite(waveform).all():
        raise MediaError("audio", "decoded audio is not finite")
    return RequestFeatures(frames, waveform, qa.media_qa(raw_frames, native, rate, qa_frames=qa_frames))


def prepare_request(
    video: bytes | None, audio: bytes | None, limits: MediaLimits = DEFAULT_LIMITS, cancel: Cancel | None = None
) -> RequestFeatures:
    """Decode one request. A WAV, when sent, is the audio; otherwise the video's own track is used."""
    if video is None and audio is None:
        raise MediaError(
            "request", "neither 'video' nor 'audio' was sent; at least one is required", kind=ErrorKind.BAD_REQUEST
        )
    raw_frames = qa_frames = native = None
    rate: int | None = None
    if audio is not None:
        dec = decode_audio(audio, limits=limits, cancel=cancel)
        native, rate = dec.samples, dec.sample_rate
    if video is not None:
        vid = decode_video(video, want_audio=audio is None, limits=limits, cancel=cancel)
        raw_frames, qa_frames = vid.frames, vid.qa_frames
        if audio is None and vid.audio is not None:
            native, rate = vid.audio, vid.sample_rate
    return clip_features(raw_frames, qa_frames, native, rate)


def score_features(
    head: FusionHead, feats: RequestFeatures, video_embedding: np.ndarray | None, audio_embedding: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """One request's embeddings (None = modality absent) -> (probabilities [6], qa_flags [6]), as fusion_head does."""
    v = np.zeros((1, C.VIDEO_EMBED_DIM), np.float32)
    a = np.zeros((1, C.AUDIO_EMBED_DIM), np.float32)
    mask = np.zeros((1, 2), np.float32)
    if video_embedding is not None:
        v, mask[0, 0] = np.asarray(video_embedding, np.float32).reshape(1, -1), 1.0
    if audio_embedding is not None:
        a, mask[0, 1] = np.asarray(audio_embedding, np.float32).reshape(1, -1), 1.0
    probs, flags = score(head, v, a, mask, feats.media_qa[None].astype(np.float32))
    return probs[0], flags[0]
