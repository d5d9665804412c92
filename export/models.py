"""PyTorch definitions of the three parts (used only at export time).

State-dict layout of a full model (the checkpoint format):
``video_encoder.*`` — torchvision ``r3d_18`` with ``fc`` replaced by identity,
``audio_encoder.*`` — transformers ``HubertModel`` (hubert-base configuration),
``fusion_head.*`` — ``nn.Sequential`` of Linear/ReLU/Dropout ending in 6 logits.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.video import r3d_18
from transformers import HubertConfig, HubertModel

from fusion_emotion import contract as C

# Preprocessing a checkpoint was trained with; serving is fixed to the contract,
# so a checkpoint must carry exactly these values.
CONTRACT_CONFIG: dict[str, Any] = {
    "num_frames": C.NUM_FRAMES,
    "resize_hw": list(C.RESIZE_HW),
    "crop_hw": list(C.CROP_HW),
    "mean": list(C.KINETICS_MEAN),
    "std": list(C.KINETICS_STD),
    "sample_rate": C.SAMPLE_RATE,
    "audio_window_seconds": C.AUDIO_WINDOW_SECONDS,
    "labels": list(C.LABELS),
}

DEFAULT_CONFIG: dict[str, Any] = {
    "fusion_hidden": [256],
    "dropout": 0.3,
    "temperature": 1.0,
    **CONTRACT_CONFIG,
    "hubert_config": {},  # overrides of transformers.HubertConfig() (= hubert-base)
}


def build_video_encoder() -> nn.Module:
    model = r3d_18(weights=None)  # never downloads: weights come from the checkpoint
    model.fc = nn.Identity()
    return model


def build_audio_encoder(overrides: dict[str, Any] | None = None) -> nn.Module:
    config = HubertConfig(**(overrides or {}))
    return HubertModel(config)


def build_fusion_head(hidden: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = C.VIDEO_EMBED_DIM + C.AUDIO_EMBED_DIM
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, C.NUM_CLASSES))
    return nn.Sequential(*layers)


class FusionEmotionModel(nn.Module):
    """The whole model; the parts are exported separately."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.video_encoder = build_video_encoder()
        self.audio_encoder = build_audio_encoder(config.get("hubert_config"))
        self.fusion_head = build_fusion_head(list(config["fusion_hidden"]), float(config["dropout"]))

    def forward(self, frames: torch.Tensor, waveform: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        v = self.video_encoder(frames) * mask[:, :1]
        a = AudioEmbedding(self.audio_encoder)(waveform) * mask[:, 1:2]
        logits = self.fusion_head(torch.cat([v, a], dim=1))
        return torch.softmax(logits / float(self.config["temperature"]), dim=1)


class AudioEmbedding(nn.Module):
    """HuBERT last hidden state mean-pooled over time: [B, samples] -> [B, 768]."""

    def __init__(self, hubert: nn.Module) -> None:
        super().__init__()
        self.hubert = hubert

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.hubert(waveform).last_hidden_state.mean(dim=1)
