"""Load and save the documented checkpoint format.

A checkpoint is one ``.pt`` file holding a dict::

    {
      "format": "fusion-emotion/v1",
      "state_dict": {"video_encoder.…": tensor, "audio_encoder.…": tensor, "fusion_head.…": tensor},
      "config": {"fusion_hidden": [256], "dropout": 0.3, "temperature": 1.0, …preprocessing…},
    }

The preprocessing entries of ``config`` must equal the serving contract (the
serving pipeline is fixed); a checkpoint trained otherwise is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fusion_emotion.export.models import CONTRACT_CONFIG, DEFAULT_CONFIG, FusionEmotionModel
from transformers import HubertModel

from fusion_emotion import contract as C

log = logging.getLogger(__name__)

FORMAT = "fusion-emotion/v1"


class CheckpointError(ValueError):
    """The checkpoint does not fit this model; the message says exactly how."""


@dataclass
class LoadedModel:
    model: FusionEmotionModel
    provenance: str
    trained: bool


def _merged_config(config: dict[str, Any] | None) -> dict[str, Any]:
    merged = dict(DEFAULT_CONFIG)
    merged.update(config or {})
    for key, expected in CONTRACT_CONFIG.items():
        got = merged[key]
        got = list(got) if isinstance(got, (list, tuple)) else got
        if isinstance(expected, list) and all(isinstance(e, float) for e in expected):
            same = len(got) == len(expected) and all(abs(float(g) - e) < 1e-6 for g, e in zip(got, expected))
        else:
            same = got == expected
        if not same:
            raise CheckpointError(f"checkpoint config {key}={got!r} differs from the serving contract ({expected!r})")
    if float(merged["temperature"]) <= 0:
        raise CheckpointError(f"checkpoint config temperature must be > 0, got {merged['temperature']}")
    return merged


def random_model(seed: int, config: dict[str, Any] | None = None) -> LoadedModel:
    """Deterministic random-init weights: demo and tests only, untrained."""
    torch.manual_seed(seed)
    model = FusionEmotionModel(_merged_config(config)).eval()
    return LoadedModel(model, f"UNTRAINED: random init (seed={seed}); demo only, predictions are meaningless", False)


def load_checkpoint(path: str | Path) -> LoadedModel:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint (no 'state_dict' key)")
    if blob.get("format", FORMAT) != FORMAT:
        raise CheckpointError(f"{path} has format {blob.get('format')!r}, expected {FORMAT!r}")
    model = FusionEmotionModel(_merged_config(blob.get("config"))).eval()
    state = blob["state_dict"]
    expected = set(model.state_dict())
    got = set(state)
    missing = sorted(expected - got)
    unexpected = sorted(got - expected)
    if missing or unexpected:
        raise CheckpointError(
            "checkpoint does not match the model: "
            f"missing keys ({len(missing)}): {_preview(missing)}; unexpected keys ({len(unexpected)}): {_preview(unexpected)}"
        )
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in model.state_dict().items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if mismatched:
        raise CheckpointError(f"checkpoint shapes do not match the model: {_preview(mismatched)}")
    model.load_state_dict(state, strict=True)
    return LoadedModel(model, f"checkpoint {path.name}", True)


def load_hubert_pretrained(loaded: LoadedModel, directory: str | Path) -> None:
    """Replace the audio encoder with a local Hugging Face HuBERT directory (no hub access)."""

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory} is not a Hugging Face model directory (no config.json)")
    hubert = HubertModel.from_pretrained(str(directory), local_files_only=True)
    if hubert.config.hidden_size != C.AUDIO_EMBED_DIM:
        raise CheckpointError(
            f"{directory}: hidden_size {hubert.config.hidden_size} != {C.AUDIO_EMBED_DIM} (hubert-base)"
        )
    loaded.model.audio_encoder = hubert.eval()
    loaded.provenance += f"; audio encoder from {directory.name}"


def save_checkpoint(model: FusionEmotionModel, path: str | Path) -> None:
    """Write ``model`` in the documented format (used by training code and tests)."""
    torch.save({"format": FORMAT, "state_dict": model.state_dict(), "config": model.config}, path)


def _preview(keys: list[str], n: int = 8) -> str:
    if not keys:
        return "none"
    more = f", … (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
