"""One request's media -> everything the encoders and the fusion head need.

Shared by the Triton ``preprocess`` model and the in-process reference
pipeline, so both compute the same numbers from the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion_emotion.core import qa
from fusion_emotion.core.media import (
    DEFAULT_LIMITS,
    MediaError,
    MediaLimits,
    decode_audio,
    decode_video,
    frames_for_model,
    waveform_for_model,
)


@dataclass
class RequestFeatures:
    frames: np.ndarray | None  # float32 [3, 16, 112, 112], None = no video
    waveform: np.ndarray | None  # float32 [AUDIO_SAMPLES], None = no audio
    media_qa: np.ndarray  # float32 [4] in contract.MEDIA_QA_NAMES order, NaN = absent


def prepare_request(video: bytes | None, audio: bytes | None, limits: MediaLimits = DEFAULT_LIMITS) -> RequestFeatures:
    """Decode one request. A WAV, when sent, is the audio; otherwise the video's own track is used."""
    if video is None and audio is None:
        raise MediaError("request", "neither 'video' nor 'audio' was sent; at least one is required")
    raw_frames = native = None
    rate: int | None = None
    if audio is not None:
        dec = decode_audio(audio, limits=limits)
        native, rate = dec.samples, dec.sample_rate
    if video is not None:
        vid = decode_video(video, want_audio=audio is None, limits=limits)
        raw_frames = vid.frames
        if audio is None and vid.audio is not None:
            native, rate = vid.audio, vid.sample_rate
    return RequestFeatures(
        frames=frames_for_model(raw_frames) if raw_frames is not None else None,
        waveform=waveform_for_model(native, rate) if native is not None and rate else None,
        media_qa=qa.media_qa(raw_frames, native, rate),
    )
