"""What a servable model repository holds, per profile (shared by ``triton`` and ``package``).

``model_repository/`` in the source tree is only the templates: configs and
``model.py`` adapters, no weights and no label files. ``fusion-emotion export``
adds the ONNX graphs, the fusion head and the label files. Serving or packaging
the templates would start a server that cannot load, so both commands check the
repository first and name every file that is missing.
"""

from __future__ import annotations

import re
from pathlib import Path

from fusion_emotion import contract as C

# Every profile except the default one picks <model>/configs/<profile>.pbtxt where it
# exists (Triton's --model-config-name) and config.pbtxt otherwise.
DEFAULT_PROFILE = "gpu"

_BACKEND = re.compile(r'^\s*backend\s*:\s*"([^"]+)"', re.M)
_LABEL_FILE = re.compile(r'label_filename\s*:\s*"([^"]+)"')
_DEFAULT_MODEL_FILE = re.compile(r'^\s*default_model_filename\s*:\s*"([^"]+)"', re.M)
_PARAMETER = re.compile(r'key\s*:\s*"(?P<key>[^"]+)"\s*value\s*:?\s*\{\s*string_value\s*:\s*"(?P<value>[^"]*)"\s*\}')


class IncompleteRepositoryError(FileNotFoundError):
    """The directory is not a servable fusion-emotion repository; ``missing`` lists what it lacks."""

    def __init__(self, repository: Path, missing: list[str]) -> None:
        self.repository = repository
        self.missing = missing
        if not missing:
            super().__init__(f"{repository}: not a directory")
            return
        hint = (
            " (model_repository/ holds only the templates: build a servable repository with "
            "`fusion-emotion export --init random --seed 0 --output build/repo` or `--checkpoint`)"
        )
        super().__init__(f"{repository} cannot be served, missing: {', '.join(missing)}{hint}")


def config_path(model_dir: Path, profile: str) -> Path:
    """The config Triton loads for this profile (the image's plain config.pbtxt for ``gpu``)."""
    if profile != DEFAULT_PROFILE:
        candidate = model_dir / "configs" / f"{profile}.pbtxt"
        if candidate.is_file():
            return candidate
    return model_dir / "config.pbtxt"


def backend(config_text: str) -> str | None:
    """``backend:`` of a config (None for an ensemble, which has a ``platform``)."""
    match = _BACKEND.search(config_text)
    return match.group(1) if match else None


def parameters(config_text: str) -> dict[str, str]:
    """The string ``parameters`` of a config, last one wins (as in Triton's text-proto parsing)."""
    return {m.group("key"): m.group("value") for m in _PARAMETER.finditer(config_text)}


def model_dirs(repository: Path) -> list[str]:
    """The product's models present in ``repository`` (the timeline model is optional)."""
    names = list(C.MODEL_NAMES)
    if (repository / C.TIMELINE_MODEL).is_dir():
        names.append(C.TIMELINE_MODEL)
    return names


def missing_files(repository: Path, profile: str) -> list[str]:
    """Files the profile needs that ``repository`` lacks, relative to it, in model order."""
    missing: list[str] = []
    for model in model_dirs(repository):
        cfg = config_path(repository / model, profile)
        if not cfg.is_file():
            missing.append(f"{model}/config.pbtxt")
            continue
        text = cfg.read_text(encoding="utf-8")
        kind = backend(text)
        needed = [f"{model}/{name}" for name in _LABEL_FILE.findall(text)]
        if kind == "python":
            needed.append(f"{model}/1/model.py")
        if model in (C.VIDEO_ENCODER, C.AUDIO_ENCODER):
            default = _DEFAULT_MODEL_FILE.search(text)
            graph = parameters(text).get("onnx_filename") or (default.group(1) if default else C.ONNX_FILENAME)
            needed.append(f"{model}/1/{graph}")
        if model == C.FUSION_HEAD:
            needed.append(f"{model}/1/{C.HEAD_WEIGHTS_FILENAME}")
        missing += [rel for rel in dict.fromkeys(needed) if not (repository / rel).is_file()]
    return missing


def check_servable(repository: Path, profile: str) -> None:
    """Raise IncompleteRepositoryError naming every missing file."""
    if not repository.is_dir():
        raise IncompleteRepositoryError(repository, [])
    missing = missing_files(repository, profile)
    if missing:
        raise IncompleteRepositoryError(repository, missing)


# TensorRT execution-accelerator parameters Triton's onnxruntime backend accepts (r24.10, src/onnxruntime.cc,
# ModelState::LoadModel): any other key fails the model load with "unknown parameter".
TRT_ACCELERATOR_KEYS = frozenset(
    {
        "precision_mode",
        "max_workspace_size_bytes",
        "trt_max_partition_iterations",
        "trt_min_subgraph_size",
        "int8_calibration_table_name",
        "int8_use_native_calibration_table",
        "trt_dla_enable",
        "trt_dla_core",
        "trt_engine_cache_enable",
        "trt_engine_cache_path",
        "trt_engine_cache_prefix",
        "trt_dump_subgraphs",
        "trt_force_sequential_engine_build",
        "trt_context_memory_sharing_enable",
        "trt_layer_norm_fp32_fallback",
        "trt_timing_cache_enable",
        "trt_timing_cache_path",
        "trt_force_timing_cache",
        "trt_detailed_build_log",
        "trt_build_heuristics_enable",
        "trt_sparsity_enable",
        "trt_builder_optimization_level",
        "trt_auxiliary_streams",
        "trt_tactic_sources",
        "trt_extra_plugin_lib_paths",
        "trt_profile_min_shapes",
        "trt_profile_max_shapes",
        "trt_profile_opt_shapes",
        "trt_cuda_graph_enable",
        "trt_dump_ep_context_model",
        "trt_ep_context_file_path",
        "trt_ep_context_embed_mode",
    }
)
TRT_PRECISION_MODES = ("FP32", "FP16", "INT8")


def trt_profile_shapes(value: str) -> dict[str, tuple[int, ...]]:
    """Parse an onnxruntime TensorRT profile string (``"frames:1x3x16x112x112,other:..."``) into shapes.

    The format is onnxruntime's (``trt_profile_min_shapes`` etc.): comma-separated ``name:d0xd1x...``,
    batch axis included. Raises ValueError on anything else, so a typo fails a test rather than a GPU load.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, dims = item.rpartition(":")
        if not sep or not name or not dims:
            raise ValueError(f"bad TensorRT profile entry {item!r} (want name:d0xd1x...)")
        try:
            shape = tuple(int(d) for d in dims.split("x"))
        except ValueError:
            raise ValueError(f"bad TensorRT profile dims in {item!r}") from None
        if name in shapes or any(d < 1 for d in shape):
            raise ValueError(f"bad TensorRT profile entry {item!r}")
        shapes[name] = shape
    return shapes
