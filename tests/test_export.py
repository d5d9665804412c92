"""Checkpoint format, refusal of mismatched checkpoints, export validation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fusion_emotion.export.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_hubert_pretrained,
    random_model,
    save_checkpoint,
)
from fusion_emotion.export.onnx_export import ExportValidationError, export_head, require_ok

from fusion_emotion import contract as C
from fusion_emotion.core.fusion import FusionHead


@pytest.fixture(scope="module")
def model_a():
    return random_model(0)


def test_random_init_is_deterministic_and_marked_untrained(model_a):
    again = random_model(0)
    other = random_model(1)
    sd_a, sd_b, sd_c = model_a.model.state_dict(), again.model.state_dict(), other.model.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert not torch.equal(sd_a["fusion_head.0.weight"], sd_c["fusion_head.0.weight"])
    assert not model_a.trained and "UNTRAINED" in model_a.provenance


def test_state_dict_prefixes(model_a):
    prefixes = {k.split(".", 1)[0] for k in model_a.model.state_dict()}
    assert prefixes == {"video_encoder", "audio_encoder", "fusion_head"}
    hubert = model_a.model.audio_encoder.config
    assert (hubert.hidden_size, hubert.num_hidden_layers) == (768, 12)


def test_checkpoint_roundtrip(model_a, tmp_path):
    save_checkpoint(model_a.model, tmp_path / "ckpt.pt")
    loaded = load_checkpoint(tmp_path / "ckpt.pt")
    assert loaded.trained and "ckpt.pt" in loaded.provenance
    sd_a, sd_b = model_a.model.state_dict(), loaded.model.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_mismatched_checkpoint_names_keys(model_a, tmp_path):
    state = dict(model_a.model.state_dict())
    del state["fusion_head.0.weight"]
    state["fusion_head.extra.weight"] = torch.zeros(1)
    torch.save(
        {"format": "fusion-emotion/v1", "state_dict": state, "config": model_a.model.config}, tmp_path / "bad.pt"
    )
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "bad.pt")
    assert "missing keys (1): fusion_head.0.weight" in str(err.value)
    assert "unexpected keys (1): fusion_head.extra.weight" in str(err.value)


def test_checkpoint_with_other_head_size_is_refused_by_shape(model_a, tmp_path):
    config = dict(model_a.model.config, fusion_hidden=[128])
    torch.save(
        {"format": "fusion-emotion/v1", "state_dict": model_a.model.state_dict(), "config": config}, tmp_path / "c.pt"
    )
    with pytest.raises(CheckpointError, match="fusion_head.0.weight"):
        load_checkpoint(tmp_path / "c.pt")


def test_checkpoint_with_other_preprocessing_is_refused(model_a, tmp_path):
    config = dict(model_a.model.config, num_frames=8)
    torch.save(
        {"format": "fusion-emotion/v1", "state_dict": model_a.model.state_dict(), "config": config}, tmp_path / "p.pt"
    )
    with pytest.raises(CheckpointError, match="num_frames"):
        load_checkpoint(tmp_path / "p.pt")


def test_hubert_pretrained_from_local_directory(model_a, tmp_path):
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(5)
    small = HubertModel(HubertConfig(num_hidden_layers=1))
    small.save_pretrained(tmp_path / "hubert")
    loaded = random_model(0)
    load_hubert_pretrained(loaded, tmp_path / "hubert")
    got = loaded.model.audio_encoder.state_dict()
    want = small.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(CheckpointError, match="config.json"):
        load_hubert_pretrained(loaded, tmp_path)


def test_head_export_matches_torch_and_validation_fails_loudly(model_a, tmp_path):
    check = export_head(model_a.model.fusion_head, 2.0, tmp_path / "h.npz")
    assert check.ok and check.max_abs_diff < 1e-5
    assert FusionHead.load(tmp_path / "h.npz").temperature == pytest.approx(2.0)
    strict = export_head(model_a.model.fusion_head, 2.0, tmp_path / "h2.npz", tolerance=0.0)
    strict.max_abs_diff = max(strict.max_abs_diff, 1e-3)  # a real 1e-3 drift must be reported as such
    with pytest.raises(ExportValidationError, match=r"fusion_head\.probabilities: max \|diff\| 0\.001"):
        require_ok([check, strict])


def test_exported_repository_runs_like_pytorch(demo_repository: Path, model_a):
    """The exported ONNX + numpy head reproduce the PyTorch model end to end."""
    from fusion_emotion.core.pipeline import ReferencePipeline

    rng = np.random.default_rng(3)
    frames = rng.standard_normal((2, *C.VIDEO_FRAMES.dims), dtype=np.float32)
    wave = (0.1 * rng.standard_normal((2, C.AUDIO_SAMPLES))).astype(np.float32)
    mask = np.ones((2, 2), np.float32)
    with torch.no_grad():
        want = model_a.model(torch.from_numpy(frames), torch.from_numpy(wave), torch.from_numpy(mask)).numpy()
    pipe = ReferencePipeline(demo_repository)
    got = pipe.head.probabilities(pipe.video_encoder(frames), pipe.audio_encoder(wave), mask)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_export_cli_refuses_bad_checkpoint(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    proc = subprocess.run(
        [sys.executable, "-m", "fusion_emotion.cli", "export", "--checkpoint", str(tmp_path / "missing.pt"), "--output", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "checkpoint not found" in proc.stderr


def test_serving_never_imports_torch(tmp_path):
    """Serving code paths import with torch made unimportable."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'torchvision', 'transformers'}:\n"
        "            raise ImportError('serving must not import ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import fusion_emotion.core.video, fusion_emotion.core.rows, fusion_emotion.core.timeline, fusion_emotion.core.stream\n"
        "import fusion_emotion.core.dali_video, fusion_emotion.core.fusion, fusion_emotion.core.qa\n"
        "import fusion_emotion.core.pipeline, fusion_emotion.server.launcher, fusion_emotion.core.result, fusion_emotion.cli\n"
        "import fusion_emotion.client.triton, fusion_emotion.frontend.app\n"
        "from fusion_emotion.cli import build_parser; build_parser()\n"
        "assert not any(m.split('.')[0] in {'torch', 'torchvision', 'transformers'} for m in sys.modules)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.dumps(proc.stdout.strip()) == '"ok"'
