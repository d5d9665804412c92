"""The previous design (eager PyTorch, full decode per request), kept only to be measured against.

``fusion-emotion bench --baseline`` runs it beside the service (it needs the export extra: torch); torch is imported
here and nowhere else in the serving path.
"""

from __future__ import annotations

import io
from typing import Any

import av
import numpy as np
import torch

from fusion_emotion import contract as C
from fusion_emotion.core.audio import audio_frame_to_float, decode_audio
from fusion_emotion.core.model_inputs import crop_box, waveform_for_model
from fusion_emotion.export.checkpoint import load_checkpoint, random_model
from fusion_emotion.export.models import AudioEmbedding
from fusion_emotion.ops.targets import Target


def uniform_indices(total: int, num: int = C.NUM_FRAMES) -> np.ndarray:
    """The old design's frame pick: ``num`` frames spread uniformly over ``total`` decoded ones (repeats when
    total < num), by index rather than by time."""
    if total <= 0:
        raise ValueError("no frames to sample from")
    return np.minimum(((np.arange(num) + 0.5) * total / num).astype(np.int64), total - 1)


class BaselineTarget(Target):
    """The previous design, kept only to be measured against.

    Per request: PyAV decodes every frame at full resolution to RGB, then torch
    resizes/crops/normalises the sampled frames and eager PyTorch R3D-18 and
    HuBERT (same random-init weights as the export, or a checkpoint) run under
    ``torch.no_grad``. Requests run on their own threads with no batching.
    """

    def __init__(self, video: bytes | None, audio: bytes | None, seed: int = 0, checkpoint: str | None = None) -> None:
        loaded = load_checkpoint(checkpoint) if checkpoint else random_model(seed)
        self.model = loaded.model.eval()
        self.audio_model = AudioEmbedding(self.model.audio_encoder).eval()
        self.name = "baseline (eager PyTorch, full decode)"
        self.video, self.audio = video, audio
        self.mean = torch.tensor(C.KINETICS_MEAN).view(3, 1, 1, 1)
        self.std = torch.tensor(C.KINETICS_STD).view(3, 1, 1, 1)

    @staticmethod
    def decode_all(data: bytes, want_audio: bool) -> tuple[list[np.ndarray], np.ndarray | None, int | None]:
        """Every video frame as a full-resolution RGB array, and the whole audio track."""

        frames: list[np.ndarray] = []
        chunks: list[np.ndarray] = []
        rate = None
        with av.open(io.BytesIO(data)) as container:
            streams = [container.streams.video[0]]
            if want_audio and container.streams.audio:
                streams.append(container.streams.audio[0])
            for packet in container.demux(*streams):
                for frame in packet.decode():
                    if packet.stream.type == "video":
                        frames.append(frame.to_ndarray(format="rgb24"))
                    else:
                        chunks.append(audio_frame_to_float(frame))
                        rate = frame.sample_rate
        audio = np.concatenate(chunks, axis=1) if chunks else None
        return frames, audio, rate

    def preprocess_video(self, frames: list[np.ndarray]) -> Any:

        idx = uniform_indices(len(frames), C.NUM_FRAMES)
        clip = torch.from_numpy(np.stack([frames[i] for i in idx])).permute(0, 3, 1, 2).float() / 255.0
        clip = torch.nn.functional.interpolate(
            clip, size=C.RESIZE_HW, mode="bilinear", align_corners=False, antialias=True
        )
        top, left = crop_box()
        clip = clip[:, :, top : top + C.CROP_HW[0], left : left + C.CROP_HW[1]].permute(1, 0, 2, 3)
        return ((clip - self.mean) / self.std).unsqueeze(0).contiguous()

    def predict(self, video: bytes | None, audio: bytes | None) -> np.ndarray:

        v = torch.zeros(1, C.VIDEO_EMBED_DIM)
        a = torch.zeros(1, C.AUDIO_EMBED_DIM)
        native = rate = None
        if audio is not None:
            dec = decode_audio(audio)
            native, rate = dec.samples, dec.sample_rate
        with torch.no_grad():
            if video is not None:
                frames, track, track_rate = self.decode_all(video, want_audio=audio is None)
                if native is None and track is not None:
                    native, rate = track, track_rate
                v = self.model.video_encoder(self.preprocess_video(frames))
                del frames
            if native is not None and rate:
                wave = torch.from_numpy(waveform_for_model(native, rate)).unsqueeze(0)
                a = self.audio_model(wave)
            logits = self.model.fusion_head(torch.cat([v, a], dim=1))
            probs = torch.softmax(logits / float(self.model.config["temperature"]), dim=1)
        return probs[0].numpy()

    def send(self) -> None:
        self.predict(self.video, self.audio)
