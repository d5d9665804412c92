"""Every config.pbtxt against Triton's model-config proto, the contract and the exported ONNX graphs."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from fusion_emotion import contract as C
from fusion_emotion.repository import TRT_ACCELERATOR_KEYS, TRT_PRECISION_MODES, trt_profile_shapes

TEMPLATES = Path(__file__).resolve().parents[1] / "model_repository"
CONFIG_FILES = sorted(TEMPLATES.glob("*/config.pbtxt")) + sorted(TEMPLATES.glob("*/configs/*.pbtxt"))
ONNX_DTYPE = {onnx.TensorProto.FLOAT: "TYPE_FP32"}


def parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def dtype_name(value: int) -> str:
    return mc.DataType.Name(value)


def test_all_configs_found():
    names = {p.parent.name if p.name == "config.pbtxt" else p.parent.parent.name for p in CONFIG_FILES}
    assert set(C.MODEL_NAMES) <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(TEMPLATES)))
def test_config_parses_and_matches_contract(path: Path):
    cfg = parse(path)
    model = path.parent.name if path.name == "config.pbtxt" else path.parent.parent.name
    assert cfg.name == model
    assert cfg.max_batch_size > 0
    if model not in C.MODEL_IO:
        return  # models added by other features are checked by their own tests
    inputs, outputs = C.MODEL_IO[model]
    assert [(i.name, dtype_name(i.data_type), tuple(i.dims), i.optional) for i in cfg.input] == [
        (s.name, s.triton_dtype, s.dims, s.optional) for s in inputs
    ]
    assert [(o.name, dtype_name(o.data_type), tuple(o.dims)) for o in cfg.output] == [
        (s.name, s.triton_dtype, s.dims) for s in outputs
    ]


def test_profiles():
    for encoder in (C.VIDEO_ENCODER, C.AUDIO_ENCODER):
        gpu = parse(TEMPLATES / encoder / "config.pbtxt")
        assert gpu.backend == "onnxruntime"
        assert [g.kind for g in gpu.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
        assert gpu.dynamic_batching.max_queue_delay_microseconds > 0
        fp16 = parse(TEMPLATES / encoder / "configs" / "gpu_fp16.pbtxt")
        accel = fp16.optimization.execution_accelerators.gpu_execution_accelerator[0]
        assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP16"
        cpu = parse(TEMPLATES / encoder / "configs" / "cpu.pbtxt")
        assert cpu.backend == "python"
        assert [g.kind for g in cpu.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
        assert (TEMPLATES / encoder / "1" / "model.py").is_file()
        assert cpu.max_batch_size <= gpu.max_batch_size
    for python_model in (C.PREPROCESS, C.FUSION_HEAD):
        cfg = parse(TEMPLATES / python_model / "config.pbtxt")
        assert cfg.backend == "python"
        assert (TEMPLATES / python_model / "1" / "model.py").is_file()
    assert parse(TEMPLATES / C.PREPROCESS / "config.pbtxt").instance_group[0].count >= 2


def test_ensemble_wiring_is_consistent():
    ens = parse(TEMPLATES / C.ENSEMBLE / "config.pbtxt")
    assert ens.platform == "ensemble"
    available = {i.name for i in ens.input}
    for step in ens.ensemble_scheduling.step:
        model = parse(TEMPLATES / step.model_name / "config.pbtxt")
        model_inputs = {i.name: i for i in model.input}
        model_outputs = {o.name: o for o in model.output}
        assert set(step.input_map) <= set(model_inputs), step.model_name
        # every required input of the step is fed
        required = {n for n, i in model_inputs.items() if not i.optional}
        assert required <= set(step.input_map), step.model_name
        for key, tensor in step.input_map.items():
            assert tensor in available, f"{step.model_name}.{key} <- {tensor} is produced by no earlier step"
        assert set(step.output_map) <= set(model_outputs), step.model_name
        available |= set(step.output_map.values())
        assert ens.max_batch_size <= model.max_batch_size
    assert {o.name for o in ens.output} <= available
    labels = {o.name: o.label_filename for o in ens.output}
    assert labels == {C.OUT_PROBABILITIES.name: C.LABELS_FILENAME, C.OUT_QA_FLAGS.name: C.QA_LABELS_FILENAME}


@pytest.mark.parametrize("encoder", [C.VIDEO_ENCODER, C.AUDIO_ENCODER])
def test_onnx_graph_matches_configs(encoder: str, demo_repository: Path):
    model = onnx.load(str(demo_repository / encoder / "1" / C.ONNX_FILENAME), load_external_data=False)
    graph_inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    for path in [
        demo_repository / encoder / "config.pbtxt",
        *sorted((demo_repository / encoder / "configs").glob("*.pbtxt")),
    ]:
        cfg = parse(path)
        for cfg_tensors, graph_tensors in ((cfg.input, graph_inputs), (cfg.output, model.graph.output)):
            assert [t.name for t in cfg_tensors] == [g.name for g in graph_tensors], path
            for t, g in zip(cfg_tensors, graph_tensors):
                shape = g.type.tensor_type.shape.dim
                assert shape[0].dim_param, f"{g.name}: batch axis must be dynamic"
                assert tuple(d.dim_value for d in shape[1:]) == tuple(t.dims), path
                assert ONNX_DTYPE[g.type.tensor_type.elem_type] == dtype_name(t.data_type)
        graph_dims = {g.name: tuple(d.dim_value for d in g.type.tensor_type.shape.dim[1:]) for g in graph_inputs}
        for w in cfg.model_warmup:  # warmup tensors are fed to the graph as they are
            assert {k: tuple(v.dims) for k, v in w.inputs.items()} == graph_dims, path
        for accel in cfg.optimization.execution_accelerators.gpu_execution_accelerator:
            for key in ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"):
                shapes = trt_profile_shapes(accel.parameters[key])
                assert {n: s[1:] for n, s in shapes.items()} == graph_dims, (path, key)


def test_exported_labels_and_metadata(demo_repository: Path):
    for model in (C.ENSEMBLE, C.FUSION_HEAD):
        assert (demo_repository / model / C.LABELS_FILENAME).read_text().split() == list(C.LABELS)
        assert (demo_repository / model / C.QA_LABELS_FILENAME).read_text().split() == list(C.QA_FLAG_NAMES)
        cfg = parse(demo_repository / model / "config.pbtxt")
        assert "UNTRAINED" in cfg.parameters[C.PROVENANCE_PARAMETER].string_value
    assert (demo_repository / C.FUSION_HEAD / "1" / C.HEAD_WEIGHTS_FILENAME).is_file()


GPU_CONFIGS = [
    (encoder, TEMPLATES / encoder / name)
    for encoder in (C.VIDEO_ENCODER, C.AUDIO_ENCODER)
    for name in ("config.pbtxt", "configs/gpu_fp16.pbtxt")
]


def _warmup_ok(cfg: mc.ModelConfig) -> None:
    """Warmup covers batch 1, every preferred batch and the max, with the config's own input shapes."""
    sizes = {w.batch_size for w in cfg.model_warmup}
    assert {1, cfg.max_batch_size, *cfg.dynamic_batching.preferred_batch_size} <= sizes
    assert all(1 <= b <= cfg.max_batch_size for b in sizes)
    inputs = {i.name: i for i in cfg.input}
    for w in cfg.model_warmup:
        assert w.count >= 1 and w.name
        assert set(w.inputs) == set(inputs), w.name
        for name, data in w.inputs.items():
            assert tuple(data.dims) == tuple(inputs[name].dims), w.name
            assert data.data_type == inputs[name].data_type, w.name
            assert data.WhichOneof("input_data_type") in ("zero_data", "random_data"), w.name


@pytest.mark.parametrize("encoder,path", GPU_CONFIGS, ids=lambda v: str(v).rsplit("model_repository/", 1)[-1])
def test_gpu_configs_warm_up_every_batch_the_batcher_forms(encoder: str, path: Path):
    cfg = parse(path)
    assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert all(1 <= b <= cfg.max_batch_size for b in cfg.dynamic_batching.preferred_batch_size)
    _warmup_ok(cfg)


@pytest.mark.parametrize("encoder", [C.VIDEO_ENCODER, C.AUDIO_ENCODER])
def test_cpu_dali_encoders_are_the_cpu_profiles(encoder: str):
    """cpu_dali changes only preprocess's decoder; its encoder configs must not drift from cpu's."""
    configs = TEMPLATES / encoder / "configs"
    assert parse(configs / "cpu_dali.pbtxt") == parse(configs / "cpu.pbtxt")


@pytest.mark.parametrize("encoder", [C.VIDEO_ENCODER, C.AUDIO_ENCODER])
def test_gpu_fp16_tensorrt_profiles_cover_batch_1_to_max(encoder: str):
    cfg = parse(TEMPLATES / encoder / "configs" / "gpu_fp16.pbtxt")
    (accel,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    params = dict(accel.parameters)
    assert accel.name == "tensorrt"
    assert set(params) <= TRT_ACCELERATOR_KEYS, set(params) - TRT_ACCELERATOR_KEYS
    assert params["precision_mode"] == "FP16" and params["precision_mode"] in TRT_PRECISION_MODES
    dims = {i.name: tuple(i.dims) for i in cfg.input}
    lo, opt, hi = (
        trt_profile_shapes(params[f"trt_profile_{k}_shapes"]) for k in ("min", "opt", "max")
    )  # fmt: skip
    for shapes in (lo, opt, hi):
        assert {n: s[1:] for n, s in shapes.items()} == dims  # every input, the contract's shape
    for name in dims:
        assert lo[name][0] == 1 and hi[name][0] == cfg.max_batch_size
        assert 1 <= opt[name][0] <= cfg.max_batch_size
    # the contract fixes the audio window, so one profile covers every length a request can produce
    assert dims == {s.name: s.dims for s in C.MODEL_IO[encoder][0]}
    # engines are cached; onnxruntime creates only the last path component, so it sits right under /tmp
    assert params["trt_engine_cache_enable"] == "1"
    cache = Path(params["trt_engine_cache_path"])
    assert cache.is_absolute() and cache.parent == Path("/tmp") and encoder in cache.name
    if params.get("trt_timing_cache_enable") == "1":
        assert Path(params["trt_timing_cache_path"]).parent == Path("/tmp")
    # (HuBERT's layer norms stay FP32 without a key: test_fp16_layer_norms_compute_in_fp32)
    assert "trt_layer_norm_fp32_fallback" not in params


def test_trt_profile_shapes_parser():
    assert trt_profile_shapes("frames:1x3x16x112x112") == {"frames": (1, 3, 16, 112, 112)}
    assert trt_profile_shapes("a:1x2,b:3x4") == {"a": (1, 2), "b": (3, 4)}
    for bad in ("frames", "frames:1x", ":1x2", "a:0x2", "a:1x2,a:1x2", "a:1*2"):
        with pytest.raises(ValueError):
            trt_profile_shapes(bad)


@pytest.mark.parametrize(
    "profile,decoder,encoder_kind",
    [
        ("cpu", None, mc.ModelInstanceGroup.KIND_CPU),
        ("cpu_dali", "dali_cpu", mc.ModelInstanceGroup.KIND_CPU),
        ("gpu", None, mc.ModelInstanceGroup.KIND_GPU),
        ("gpu_dali", "dali_gpu", mc.ModelInstanceGroup.KIND_GPU),
    ],
)
def test_dali_profiles_resolve(profile: str, decoder: str | None, encoder_kind: int):
    """What Triton loads under --model-config-name=<profile>: the decoder preprocess uses, the encoders' device."""
    from fusion_emotion.repository import config_path
    from fusion_emotion.server.launcher import PROFILE_CONFIG_NAME

    assert profile in C.PROFILES and profile in PROFILE_CONFIG_NAME
    pre = parse(config_path(TEMPLATES / C.PREPROCESS, profile))
    got = pre.parameters["video_decoder"].string_value if "video_decoder" in pre.parameters else None
    assert got == decoder
    assert [g.kind for g in pre.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]  # decode threads live here
    for encoder in (C.VIDEO_ENCODER, C.AUDIO_ENCODER):
        assert [g.kind for g in parse(config_path(TEMPLATES / encoder, profile)).instance_group] == [encoder_kind]


# the DALI profiles change only the decoder: (model, profile) -> the profile they are otherwise equal to
DALI_BASES = [
    (C.PREPROCESS, "cpu_dali", "cpu"),
    (C.PREPROCESS, "gpu_dali", "gpu"),
    (C.TIMELINE_MODEL, "cpu_dali", "cpu"),
    (C.TIMELINE_MODEL, "gpu_dali", "gpu"),
]


@pytest.mark.parametrize(("model", "profile", "base"), DALI_BASES, ids=[f"{m}-{p}" for m, p, _ in DALI_BASES])
def test_dali_profiles_differ_from_their_base_only_in_the_decoder(model: str, profile: str, base: str):
    """A DALI profile's config is its base profile's plus the decoder parameters (a hand-kept copy must not
    drift: the preprocess DALI configs had lost the bounded queue the others carry)."""
    from fusion_emotion.repository import config_path

    dali = parse(config_path(TEMPLATES / model, profile))
    assert config_path(TEMPLATES / model, profile).parent.name == "configs"
    assert dali.parameters.pop("video_decoder").string_value == f"dali_{profile.split('_')[0]}"
    dali.parameters.pop("dali_pipelines", None)
    assert dali == parse(config_path(TEMPLATES / model, base))


@pytest.mark.parametrize("encoder", [C.VIDEO_ENCODER, C.AUDIO_ENCODER])
@pytest.mark.parametrize("profile", ["gpu", "gpu_fp16"])
def test_gpu_encoders_choose_cudnn_algorithms_by_heuristic(encoder: str, profile: str):
    """onnxruntime_backend r24.10 defaults cudnn_conv_algo_search to EXHAUSTIVE (0): a search on the first
    request of every batch size the dynamic batcher forms. HEURISTIC (1) is set; 0-2 are its valid values."""
    from fusion_emotion.repository import config_path

    cfg = parse(config_path(TEMPLATES / encoder, profile))
    assert cfg.backend == "onnxruntime"
    assert cfg.parameters["cudnn_conv_algo_search"].string_value == "1"


def test_fp16_layer_norms_compute_in_fp32(demo_repository: Path):
    """TensorRT's ONNX parser builds a LayerNormalization node as a normalization layer computed in the node's
    stash_type (onnx-tensorrt, LayerNormalization importer: setComputePrecision(stash_type), default FLOAT),
    so gpu_fp16 keeps HuBERT's layer norms in FP32 by itself. trt_layer_norm_fp32_fallback would do nothing
    (it marks only Pow + ReduceMean decompositions, of which the graph has none) and is not set."""
    graph = onnx.load(demo_repository / C.AUDIO_ENCODER / "1" / C.ONNX_FILENAME, load_external_data=False).graph
    norms = [n for n in graph.node if n.op_type == "LayerNormalization"]
    assert len(norms) == 26 and not any(n.op_type == "Pow" for n in graph.node)
    for node in norms:
        stash = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}.get("stash_type", 1)
        assert stash == onnx.TensorProto.FLOAT, node.name
    for encoder in (C.VIDEO_ENCODER, C.AUDIO_ENCODER):
        accel = parse(TEMPLATES / encoder / "configs" / "gpu_fp16.pbtxt").optimization.execution_accelerators
        assert "trt_layer_norm_fp32_fallback" not in accel.gpu_execution_accelerator[0].parameters
