"""Deterministic synthetic media for tests, demos and the tools that need a clip (bench, soak, quantize).

Everything is built from a bundled photo (scikit-image's astronaut, a real face), real synthetic speech
(espeak-ng) and seeded noise, so the same call always gives the same media and the quality flags can be
checked against known ground truth: ``audio`` (speech, tones, WAV flavours), ``frames`` (faces, scenes),
``containers`` (MP4, FLV, AVI, MKV, WebM), and ``hostile`` (crafted inputs the decoder must refuse).
The generators are re-exported here: ``from fusion_emotion import testmedia; testmedia.mp4(...)``.
"""

from fusion_emotion.testmedia.audio import (
    CREMA_AUDIO_RATE,
    DEFAULT_TEXT,
    RAVDESS_AUDIO_RATE,
    SampleFormat,
    header_only_wav,
    silence,
    speech,
    tone,
    wav,
)
from fusion_emotion.testmedia.containers import (
    avi,
    flv,
    mkv,
    mp4,
    remux,
    webm,
)
from fusion_emotion.testmedia.frames import (
    QA_MAX_HEIGHT,
    FrameKind,
    SceneKind,
    blur,
    face_image,
    face_scene,
    qa_frames,
    video_frames,
)

__all__ = [
    "CREMA_AUDIO_RATE",
    "DEFAULT_TEXT",
    "FrameKind",
    "QA_MAX_HEIGHT",
    "RAVDESS_AUDIO_RATE",
    "SampleFormat",
    "SceneKind",
    "avi",
    "blur",
    "face_image",
    "face_scene",
    "flv",
    "header_only_wav",
    "mkv",
    "mp4",
    "qa_frames",
    "remux",
    "silence",
    "speech",
    "tone",
    "video_frames",
    "wav",
    "webm",
]
