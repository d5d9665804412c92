"""The single source of truth for the serving contract.

Tensor names, dtypes, shapes, labels and preprocessing constants live here and
nowhere else: export, the model repository tests, the reference pipeline, the
Triton adapters and the clients all import them.
"""

from __future__ import annotations

from dataclasses import dataclass

LABELS: tuple[str, ...] = ("angry", "disgust", "fearful", "happy", "neutral", "sad")
NUM_CLASSES = len(LABELS)

# --- Video (torchvision R3D_18 eval transform) ---------------------------------
NUM_FRAMES = 16
RESIZE_HW = (128, 171)
CROP_HW = (112, 112)
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
VIDEO_EMBED_DIM = 512

# --- Audio (HuBERT-base) --------------------------------------------------------
SAMPLE_RATE = 16_000
# HuBERT-base takes no attention mask, so every request is brought to one fixed
# analysis window: longer audio keeps its centred 4 s, shorter audio is padded
# with trailing zeros. 4 s covers a whole RAVDESS / CREMA-D utterance.
AUDIO_WINDOW_SECONDS = 4.0
AUDIO_SAMPLES = int(SAMPLE_RATE * AUDIO_WINDOW_SECONDS)
AUDIO_EMBED_DIM = 768

# --- Triton model names -----------------------------------------------------------
ENSEMBLE = "fusion_emotion"
PREPROCESS = "preprocess"
VIDEO_ENCODER = "video_encoder"
AUDIO_ENCODER = "audio_encoder"
FUSION_HEAD = "fusion_head"
MODEL_NAMES = (PREPROCESS, VIDEO_ENCODER, AUDIO_ENCODER, FUSION_HEAD, ENSEMBLE)
PROFILES = ("cpu", "gpu", "gpu_fp16", "cpu_int8", "cpu_dali", "gpu_dali")
# Emotion timelines (docs/timeline_evaluate.md): a separate model, so the
# ensemble's contract above is untouched. Optional in a repository.
TIMELINE_MODEL = "fusion_emotion_timeline"
# Real-time streams (README "Streaming"): a decoupled, sequence-batched model. Optional in a repository.
STREAM_MODEL = "fusion_emotion_stream"


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: Triton dtype string, numpy dtype name and dims without batch."""

    name: str
    triton_dtype: str  # as in config.pbtxt, e.g. "TYPE_FP32"
    dims: tuple[int, ...]
    optional: bool = False

    @property
    def numpy_dtype(self) -> str:
        return _DTYPE_NAMES[self.triton_dtype][0]

    @property
    def wire_dtype(self) -> str:
        """Datatype name on the KServe v2 wire (tritonclient)."""
        return _DTYPE_NAMES[self.triton_dtype][1]


# config.pbtxt dtype -> (numpy dtype name, KServe v2 wire datatype): one row per dtype the contract uses.
_DTYPE_NAMES = {
    "TYPE_FP32": ("float32", "FP32"),
    "TYPE_STRING": ("object", "BYTES"),
    "TYPE_BOOL": ("bool", "BOOL"),
    "TYPE_INT32": ("int32", "INT32"),
    "TYPE_UINT8": ("uint8", "UINT8"),
}


# Ensemble I/O: what users send and receive.
IN_VIDEO = TensorSpec("video", "TYPE_STRING", (1,), optional=True)
IN_AUDIO = TensorSpec("audio", "TYPE_STRING", (1,), optional=True)
OUT_PROBABILITIES = TensorSpec("probabilities", "TYPE_FP32", (NUM_CLASSES,))

# preprocess -> fusion_head (the encoders are called by preprocess through BLS,
# so a missing modality costs no encoder work).
VIDEO_EMBEDDING = TensorSpec("video_embedding", "TYPE_FP32", (VIDEO_EMBED_DIM,))
AUDIO_EMBEDDING = TensorSpec("audio_embedding", "TYPE_FP32", (AUDIO_EMBED_DIM,))
MODALITY_MASK = TensorSpec("modality_mask", "TYPE_FP32", (2,))  # [has_video, has_audio]

# Quality flags. NaN on the wire means "not computed / modality absent"; clients
# turn it into JSON null. Orders below are also written as label files.
MEDIA_QA_NAMES: tuple[str, ...] = (
    "audio_clipping_ratio",
    "audio_silence_ratio",
    "video_face_detection_confidence",
    "video_blur_level",
)
QA_FLAG_NAMES: tuple[str, ...] = MEDIA_QA_NAMES + ("modality_consistency_score", "overall_confidence")
MEDIA_QA = TensorSpec("media_qa", "TYPE_FP32", (len(MEDIA_QA_NAMES),))
OUT_QA_FLAGS = TensorSpec("qa_flags", "TYPE_FP32", (len(QA_FLAG_NAMES),))

# Encoders (ONNX graph names == Triton tensor names).
VIDEO_FRAMES = TensorSpec("frames", "TYPE_FP32", (3, NUM_FRAMES, *CROP_HW))
VIDEO_ENC_OUT = TensorSpec("embedding", "TYPE_FP32", (VIDEO_EMBED_DIM,))
AUDIO_WAVEFORM = TensorSpec("waveform", "TYPE_FP32", (AUDIO_SAMPLES,))
AUDIO_ENC_OUT = TensorSpec("embedding", "TYPE_FP32", (AUDIO_EMBED_DIM,))

# Timeline model I/O: window length / hop in seconds (optional; defaults 4 / 4, i.e. the audio
# window back to back: core/timeline.py DEFAULT_WINDOW_S / DEFAULT_HOP_S);
# one row per window: start, end (seconds from the media start), six probabilities.
IN_WINDOW_S = TensorSpec("window_s", "TYPE_FP32", (1,), optional=True)
IN_HOP_S = TensorSpec("hop_s", "TYPE_FP32", (1,), optional=True)
OUT_SEGMENTS = TensorSpec("segments", "TYPE_FP32", (-1, 2 + NUM_CLASSES))
# Recorded calls (docs/calls.md): `channel` analyses one channel of the audio track as mono (absent: the
# channels averaged, as before); `vad` scores only windows holding speech, the others come back with NaN
# probabilities and cost no encoder call. Both optional, so a request without them is answered as before.
IN_CHANNEL = TensorSpec("channel", "TYPE_INT32", (1,), optional=True)
IN_VAD = TensorSpec("vad", "TYPE_BOOL", (1,), optional=True)

# --- Call options (timelines and batch; one definition for every route and client) -------------------
SPEAKERS_CHANNELS = "channels"
"""``speakers=channels``: each audio channel is one speaker, analysed as mono on its own."""
SPEAKERS_MIXED = "mixed"
"""The default: the channels averaged into one signal (today's behaviour)."""
SPEAKER_MODES = (SPEAKERS_MIXED, SPEAKERS_CHANNELS)
MAX_SPEAKER_CHANNELS = 8
"""Channels one request may split into speakers: each is a full timeline of the audio encoder."""


def default_speaker_names(count: int = 2) -> tuple[str, ...]:
    """``channel_0``, ``channel_1``, ...: a speaker's name when the client gives none."""
    return tuple(f"channel_{i}" for i in range(count))


# Stream model I/O (one request = one chunk of a sequence; START/END/READY/CORRID are sequence-batcher
# controls). Audio: float32 samples, interleaved when channels > 1, full scale 1.0. Frames: JPEG bytes or
# raw RGB, with their stream times in seconds (t = 0 at the first audio sample). The stream's settings are
# read from its START request. `abort` ends a stream without a last update.
IN_AUDIO_CHUNK = TensorSpec("audio_chunk", "TYPE_FP32", (-1,), optional=True)
IN_FRAMES_JPEG = TensorSpec("frames_jpeg", "TYPE_STRING", (-1,), optional=True)
IN_FRAMES_RGB = TensorSpec("frames_rgb", "TYPE_UINT8", (-1, -1, -1, 3), optional=True)
IN_FRAME_TIMES = TensorSpec("frame_times", "TYPE_FP32", (-1,), optional=True)
IN_SAMPLE_RATE = TensorSpec("sample_rate", "TYPE_INT32", (1,), optional=True)
IN_CHANNELS = TensorSpec("channels", "TYPE_INT32", (1,), optional=True)
IN_ABORT = TensorSpec("abort", "TYPE_BOOL", (1,), optional=True)
# One response per update: [t_start, t_end] in stream seconds, the six probabilities, the QA flags, and
# `final` (true on the stream's last response, sent after END; it carries no update when the stream ended
# on a hop boundary).
OUT_T_WINDOW = TensorSpec("t_window", "TYPE_FP32", (2,))
OUT_FINAL = TensorSpec("final", "TYPE_BOOL", (1,))

# Model I/O per Triton model, in config order: (inputs, outputs).
MODEL_IO: dict[str, tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]] = {
    ENSEMBLE: ((IN_VIDEO, IN_AUDIO), (OUT_PROBABILITIES, OUT_QA_FLAGS)),
    PREPROCESS: ((IN_VIDEO, IN_AUDIO), (VIDEO_EMBEDDING, AUDIO_EMBEDDING, MODALITY_MASK, MEDIA_QA)),
    VIDEO_ENCODER: ((VIDEO_FRAMES,), (VIDEO_ENC_OUT,)),
    AUDIO_ENCODER: ((AUDIO_WAVEFORM,), (AUDIO_ENC_OUT,)),
    FUSION_HEAD: ((VIDEO_EMBEDDING, AUDIO_EMBEDDING, MODALITY_MASK, MEDIA_QA), (OUT_PROBABILITIES, OUT_QA_FLAGS)),
    TIMELINE_MODEL: (
        (IN_VIDEO, IN_AUDIO, IN_WINDOW_S, IN_HOP_S, IN_CHANNEL, IN_VAD),
        (OUT_SEGMENTS, OUT_PROBABILITIES, OUT_QA_FLAGS),
    ),
    STREAM_MODEL: (
        (
            IN_AUDIO_CHUNK,
            IN_FRAMES_JPEG,
            IN_FRAMES_RGB,
            IN_FRAME_TIMES,
            IN_SAMPLE_RATE,
            IN_CHANNELS,
            IN_HOP_S,
            IN_WINDOW_S,
            IN_ABORT,
        ),
        (OUT_T_WINDOW, OUT_PROBABILITIES, OUT_QA_FLAGS, OUT_FINAL),
    ),
}

# CloudWatch namespace of the front end's Embedded Metric Format records (frontend/emf.py, deploy/cloudwatch.py).
EMF_NAMESPACE = "FusionEmotion"

LABELS_FILENAME = "labels.txt"
QA_LABELS_FILENAME = "qa_flags.txt"
ONNX_FILENAME = "model.onnx"
TORCHSCRIPT_FILENAME = "model.pt"
HEAD_WEIGHTS_FILENAME = "fusion_head.npz"
PROVENANCE_PARAMETER = "weights_provenance"
RESPONSE_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
"""Response header the front end sets (SageMaker relays it as invoke_endpoint's ``CustomAttributes``)."""
UNTRAINED_ATTRIBUTE = "weights=untrained"
"""Its value when the served repository's weights are random-init demo weights (provenance UNTRAINED...)."""

# Hard limits applied before heavy work (bytes of one encoded input).
MAX_INPUT_BYTES = 100 * 1024 * 1024

# --- Raw request bodies (front end /invocations, batch) -----------------------------
# SageMaker Batch Transform, async endpoints and `invoke-endpoint --body fileb://clip.mp4`
# post one file's bytes with its media type. Video types go to the `video` input,
# audio types to `audio`; application/octet-stream is sniffed (`sniff_input`).
# Matroska/WebM are accepted here; whether they decode is the decoder's business.
VIDEO_MEDIA_TYPES: dict[str, str] = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".flv": "video/x-flv",
    ".avi": "video/x-msvideo",
    ".mkv": "video/x-matroska",
    ".webm": "video/webm",
}
AUDIO_MEDIA_TYPES: dict[str, str] = {".wav": "audio/wav", ".wave": "audio/wav"}
MEDIA_EXTENSIONS = frozenset(VIDEO_MEDIA_TYPES) | frozenset(AUDIO_MEDIA_TYPES)
RAW_VIDEO_TYPES = frozenset(VIDEO_MEDIA_TYPES.values())
RAW_AUDIO_TYPES = frozenset({"audio/wav", "audio/x-wav", "audio/wave"})
RAW_SNIFF_TYPE = "application/octet-stream"


def sniff_input(data: bytes) -> str:
    """``"audio"`` for RIFF/RF64 WAVE bytes, else ``"video"`` (the decoder then names what it found)."""
    return IN_AUDIO.name if data[:4] in (b"RIFF", b"RF64") and data[8:12] == b"WAVE" else IN_VIDEO.name


def raw_input(content_type: str, data: bytes) -> str:
    """The input a raw media body feeds: named by its content type, else sniffed from its bytes."""
    if content_type in RAW_VIDEO_TYPES:
        return IN_VIDEO.name
    if content_type in RAW_AUDIO_TYPES:
        return IN_AUDIO.name
    return sniff_input(data)


def media_type_for(name: str) -> str | None:
    """The media type a file or S3 key is sent with, from its extension (None: not a media file)."""
    base = name.rsplit("/", 1)[-1]
    dot = base.rfind(".")
    ext = base[dot:].lower() if dot > 0 else ""
    return VIDEO_MEDIA_TYPES.get(ext) or AUDIO_MEDIA_TYPES.get(ext)
