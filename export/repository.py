"""Write a complete Triton model repository from a loaded model.

Complete, not self-contained: the Python-backend models (preprocess, fusion_head, the cpu
profiles' encoders) import the fusion_emotion package, so the serving environment needs it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fusion_emotion.export.checkpoint import LoadedModel, random_model
from fusion_emotion.export.models import AudioEmbedding
from fusion_emotion.export.onnx_export import DEFAULT_TOLERANCE, OPSET, Check, export_encoder, export_head, require_ok

from fusion_emotion import contract as C

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parents[1] / "model_repository"


@dataclass
class ExportReport:
    output: Path
    checks: list[Check] = field(default_factory=list)
    provenance: str = ""
    trained: bool = False


def _copy_templates(dest: Path) -> None:
    if not (TEMPLATES / C.ENSEMBLE / "config.pbtxt").is_file():
        raise FileNotFoundError(f"model repository templates not found at {TEMPLATES}")
    shutil.copytree(
        TEMPLATES,
        dest,
        ignore=shutil.ignore_patterns("__pycache__", "*.onnx", "*.onnx.data", "*.pt", "*.npz", "*.pyc"),
    )


def _append_parameters(config: Path, params: dict[str, str]) -> None:
    lines = [
        f'parameters {{ key: "{k}" value {{ string_value: "{v.replace(chr(34), chr(39))}" }} }}'
        for k, v in params.items()
    ]
    with config.open("a", encoding="utf-8") as f:
        f.write("\n# written by fusion-emotion export\n" + "\n".join(lines) + "\n")


def write_repository(
    loaded: LoadedModel,
    output: str | Path,
    *,
    torchscript: bool = False,
    opset: int = OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    force: bool = False,
) -> ExportReport:
    """Export every part into ``output``; nothing is left half-written on failure."""
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        is_ours = (output / C.ENSEMBLE / "config.pbtxt").is_file()
        if not (force or is_ours):
            raise FileExistsError(f"{output} exists and is not a fusion-emotion model repository (use --force)")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=output.parent))
    try:
        repo = staging / "repo"
        _copy_templates(repo)
        model = loaded.model
        checks = export_encoder(
            model.video_encoder, C.VIDEO_ENCODER, C.VIDEO_FRAMES, C.VIDEO_ENC_OUT, repo / C.VIDEO_ENCODER / "1",
            opset=opset, tolerance=tolerance, torchscript=torchscript,
        )  # fmt: skip
        checks += export_encoder(
            AudioEmbedding(model.audio_encoder), C.AUDIO_ENCODER, C.AUDIO_WAVEFORM, C.AUDIO_ENC_OUT,
            repo / C.AUDIO_ENCODER / "1", opset=opset, tolerance=tolerance, torchscript=torchscript,
        )  # fmt: skip
        checks.append(
            export_head(
                model.fusion_head,
                float(model.config["temperature"]),
                repo / C.FUSION_HEAD / "1" / C.HEAD_WEIGHTS_FILENAME,
                tolerance,
            )
        )
        require_ok(checks)

        labels = "\n".join(C.LABELS) + "\n"
        qa_labels = "\n".join(C.QA_FLAG_NAMES) + "\n"
        for name in (C.ENSEMBLE, C.FUSION_HEAD, C.TIMELINE_MODEL, C.STREAM_MODEL):
            if not (repo / name).is_dir():
                continue  # the timeline and stream models are optional in a repository
            (repo / name / C.LABELS_FILENAME).write_text(labels)
            (repo / name / C.QA_LABELS_FILENAME).write_text(qa_labels)
        params = {C.PROVENANCE_PARAMETER: loaded.provenance, "trained": "true" if loaded.trained else "false"}
        for name in (C.ENSEMBLE, C.FUSION_HEAD):
            _append_parameters(repo / name / "config.pbtxt", params)

        if output.exists():
            shutil.rmtree(output)
        repo.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("model repository written to %s", output)
    return ExportReport(output, checks, loaded.provenance, loaded.trained)


def export_random(output: str | Path, seed: int = 0) -> ExportReport:
    """A repository with deterministic random-init (UNTRAINED) weights, as ``export --init random --seed``."""
    return write_repository(random_model(seed), output)
