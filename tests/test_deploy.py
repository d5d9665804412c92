"""Packaging (both SageMaker targets), argument validation, and deploy/undeploy against a real local AWS API (moto server)."""

from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from fusion_emotion import contract as C
from fusion_emotion.contract import ENSEMBLE, MODEL_NAMES
from fusion_emotion.deploy import execution_env as E
from fusion_emotion.deploy import sagemaker as sm
from fusion_emotion.deploy.package import PackageError, build_model_tarball, build_stock_triton_tarball
from fusion_emotion.s3uri import S3Uri

TEMPLATES = Path(__file__).resolve().parents[1] / "model_repository"

ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/fusion-emotion:test"
BUCKET = "fusion-models"


# --- packaging --------------------------------------------------------------------

CPU_PYTHON = 'backend: "python"\n'
ONNX_GPU = 'backend: "onnxruntime"\n'


@pytest.fixture()
def repository(tmp_path: Path) -> Path:
    """A complete (servable) repository layout with placeholder weights: what export writes."""
    repo = tmp_path / "model_repository"
    for name in MODEL_NAMES:
        (repo / name / "1").mkdir(parents=True)
    for name in (C.PREPROCESS, C.FUSION_HEAD):
        (repo / name / "config.pbtxt").write_text(f'name: "{name}"\n{CPU_PYTHON}')
        (repo / name / "1" / "model.py").write_text("# model\n")
    for name in (C.VIDEO_ENCODER, C.AUDIO_ENCODER):
        (repo / name / "configs").mkdir()
        (repo / name / "config.pbtxt").write_text(f'name: "{name}"\n{ONNX_GPU}')
        (repo / name / "configs" / "cpu.pbtxt").write_text(f'name: "{name}"\n# cpu\n{CPU_PYTHON}')
        (repo / name / "1" / "model.py").write_text("# adapter\n")
        (repo / name / "1" / "model.onnx").write_bytes(b"onnx-" + name.encode())
    labelled = 'output [ { name: "probabilities" label_filename: "labels.txt" } ]\n'
    (repo / ENSEMBLE / "config.pbtxt").write_text(f'name: "{ENSEMBLE}"\nplatform: "ensemble"\n{labelled}')
    (repo / C.FUSION_HEAD / "config.pbtxt").write_text(f'name: "fusion_head"\n{CPU_PYTHON}{labelled}')
    for name in (ENSEMBLE, C.FUSION_HEAD):
        (repo / name / "labels.txt").write_text("\n".join(C.LABELS) + "\n")
    (repo / C.FUSION_HEAD / "1" / "fusion_head.npz").write_bytes(b"npz")
    (repo / "preprocess" / "1" / "__pycache__").mkdir()
    (repo / "preprocess" / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\0junk")
    (repo / "preprocess" / "1" / "stale.pyc").write_bytes(b"\0junk")
    return repo


def test_package_layout_and_round_trip(repository: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "model.tar.gz"
    names = build_model_tarball(repository, out)
    assert out.is_file()
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert names == sorted(names)
    top = {n.split("/", 1)[0] for n in names}
    assert top == set(MODEL_NAMES)  # model folders at the top level, no leading directory
    assert "config.pbtxt" not in names
    assert f"{ENSEMBLE}/config.pbtxt" in names and "video_encoder/configs/cpu.pbtxt" in names

    with tarfile.open(out, "r:gz") as tar:
        for member in tar.getmembers():
            assert member.uid == 0 and member.gid == 0 and member.uname == "" and member.gname == ""
            assert member.mtime == 315532800
            assert not member.name.startswith(("/", "./"))
        dest = tmp_path / "extracted"
        tar.extractall(dest, filter="data")
    for path in repository.rglob("*"):
        rel = path.relative_to(repository)
        if "__pycache__" in rel.parts or path.suffix == ".pyc":
            assert not (dest / rel).exists()
        elif path.is_file():
            assert (dest / rel).read_bytes() == path.read_bytes()


def test_package_is_deterministic(repository: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    build_model_tarball(repository, a)
    for path in repository.rglob("*"):  # different mtimes must not change the bytes
        path.touch()
    build_model_tarball(repository, b)
    assert a.read_bytes() == b.read_bytes()


def test_package_output_inside_repository_is_not_packed(repository: Path) -> None:
    out = repository / "model.tar.gz"
    build_model_tarball(repository, out)
    first = out.read_bytes()
    names = build_model_tarball(repository, out)
    assert "model.tar.gz" not in names
    assert out.read_bytes() == first


def test_package_refuses_non_repository(tmp_path: Path, repository: Path) -> None:
    with pytest.raises(PackageError, match="fusion_emotion/config.pbtxt is missing"):
        build_model_tarball(repository / "preprocess" / "1", tmp_path / "x.tar.gz")
    with pytest.raises(PackageError, match="config.pbtxt at its root"):
        build_model_tarball(repository / ENSEMBLE, tmp_path / "x.tar.gz")
    with pytest.raises(PackageError, match="not a directory"):
        build_model_tarball(tmp_path / "missing", tmp_path / "x.tar.gz")


def test_package_refuses_the_templates_naming_what_is_missing(tmp_path: Path) -> None:
    """model_repository/ is configs and adapters only: packaging it would ship a tarball that cannot load."""
    out = tmp_path / "model.tar.gz"
    with pytest.raises(PackageError) as info:
        build_model_tarball(TEMPLATES, out)
    message = str(info.value)
    for missing in (
        "video_encoder/1/model.onnx",
        "audio_encoder/1/model.onnx",
        "fusion_head/1/fusion_head.npz",
        "fusion_emotion/labels.txt",
        "fusion_emotion/qa_flags.txt",
    ):
        assert missing in message
    assert "fusion-emotion export" in message
    assert not out.exists() and not list(tmp_path.iterdir())


def test_package_checks_the_chosen_profile(repository: Path, tmp_path: Path) -> None:
    """cpu_int8 reads model_int8.onnx (onnx_filename): packaging for it needs that graph."""
    for name in (C.VIDEO_ENCODER, C.AUDIO_ENCODER):
        cfg = repository / name / "configs" / "cpu_int8.pbtxt"
        cfg.write_text(
            f'name: "{name}"\n{CPU_PYTHON}parameters {{ key: "onnx_filename" value: {{ string_value: "model_int8.onnx" }} }}\n'
        )
    build_model_tarball(repository, tmp_path / "gpu.tar.gz", profile="gpu")
    with pytest.raises(PackageError, match="video_encoder/1/model_int8.onnx, audio_encoder/1/model_int8.onnx"):
        build_model_tarball(repository, tmp_path / "int8.tar.gz", profile="cpu_int8")
    (repository / C.FUSION_HEAD / "labels.txt").unlink()
    with pytest.raises(PackageError, match="missing: fusion_head/labels.txt"):
        build_model_tarball(repository, tmp_path / "gpu.tar.gz", profile="gpu")


def test_triton_refuses_the_templates(caplog: pytest.LogCaptureFixture) -> None:
    from fusion_emotion.cli import main

    assert main(["triton", "--repository", str(TEMPLATES), "--profile", "cpu"]) == 2
    err = caplog.text
    assert "cannot be served, missing: video_encoder/1/model.onnx" in err and "fusion-emotion export" in err


def test_package_refuses_a_symlink_leaving_the_repository(repository: Path, tmp_path: Path) -> None:
    secret = tmp_path / "credentials"
    secret.write_text("aws_secret_access_key = do-not-ship")
    (repository / "preprocess" / "1" / "notes.txt").symlink_to(secret)
    out = tmp_path / "out" / "model.tar.gz"
    with pytest.raises(PackageError, match=r"preprocess/1/notes.txt: symlink to .*credentials leaves"):
        build_model_tarball(repository, out)
    assert not out.exists() and not out.with_name("model.tar.gz.partial").exists()
    # a folder link out of the repository too
    (repository / "preprocess" / "1" / "notes.txt").unlink()
    (repository / "fusion_head" / "extra").symlink_to(tmp_path)
    with pytest.raises(PackageError, match="fusion_head/extra: symlink to .* leaves"):
        build_model_tarball(repository, out)


def test_package_refuses_link_loops_and_special_files(repository: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.tar.gz"
    loop = repository / "preprocess" / "1" / "loop"
    loop.symlink_to(repository / "preprocess")  # a parent of itself: endless recursion if followed
    with pytest.raises(PackageError, match="preprocess/1/loop: symlink loop"):
        build_model_tarball(repository, out)
    loop.unlink()
    a, b = repository / "preprocess" / "a", repository / "preprocess" / "b"
    a.symlink_to(b)
    b.symlink_to(a)
    with pytest.raises(PackageError, match="preprocess/a: broken or looping symlink"):
        build_model_tarball(repository, out)
    a.unlink()
    b.unlink()
    os.mkfifo(repository / "preprocess" / "pipe")  # reading it would block forever
    with pytest.raises(PackageError, match="preprocess/pipe: not a regular file"):
        build_model_tarball(repository, out)
    assert not list(tmp_path.glob("model.tar.gz*"))  # no tarball, no .partial left behind


def test_package_follows_links_inside_and_stores_hard_links_once(repository: Path, tmp_path: Path) -> None:
    """Links within the repository are archived as contents; the same file under two names is stored once."""
    onnx = repository / C.VIDEO_ENCODER / "1" / "model.onnx"
    (repository / C.VIDEO_ENCODER / "1" / "model_int8.onnx").hardlink_to(onnx)
    (repository / C.AUDIO_ENCODER / "1" / "copy.onnx").symlink_to(onnx)
    out = tmp_path / "model.tar.gz"
    build_model_tarball(repository, out)
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["audio_encoder/1/copy.onnx"].isfile()  # first of the three names holds the bytes
        assert members["video_encoder/1/model.onnx"].islnk()
        assert members["video_encoder/1/model.onnx"].linkname == "audio_encoder/1/copy.onnx"
        dest = tmp_path / "x"
        tar.extractall(dest, filter="data")
    assert (dest / "video_encoder/1/model_int8.onnx").read_bytes() == onnx.read_bytes()
    assert not (dest / "audio_encoder/1/copy.onnx").is_symlink()


def test_package_cli(repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fusion_emotion.cli import main

    out = tmp_path / "model.tar.gz"
    assert main(["package", "--repository", str(repository), "--output", str(out)]) == 0
    assert "fusion_emotion" in capsys.readouterr().out
    assert main(["package", "--repository", str(tmp_path), "--output", str(out)]) == 2
    assert "not a fusion-emotion Triton model repository" in capsys.readouterr().err


def test_stock_triton_tarball_layout(repository: Path, tmp_path: Path) -> None:
    """sagemaker-triton: the profile's configs as config.pbtxt, configs/ gone, one env for every Python model."""
    env = tmp_path / "env.tar.gz"
    env.write_bytes(b"packed-environment")
    out = tmp_path / "stock.tar.gz"
    names = build_stock_triton_tarball(repository, out, profile="cpu", env_tarball=env)
    assert not any("/configs" in n for n in names)
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar.getmembers()}
        video = tar.extractfile("video_encoder/config.pbtxt").read().decode()
        ensemble = tar.extractfile("fusion_emotion/config.pbtxt").read().decode()
        dest = tmp_path / "x"
        tar.extractall(dest, filter="data")
    assert "# cpu" in video and 'backend: "python"' in video  # the cpu profile, not the gpu default
    assert 'string_value: "$$TRITON_MODEL_DIRECTORY/env.tar.gz"' in video
    assert "EXECUTION_ENV_PATH" not in ensemble
    envs = sorted(n for n in members if n.endswith("/env.tar.gz"))
    assert envs == [f"{m}/env.tar.gz" for m in sorted((C.AUDIO_ENCODER, C.FUSION_HEAD, C.PREPROCESS, C.VIDEO_ENCODER))]
    assert [members[n].isfile() for n in envs].count(True) == 1  # stored once, hard-linked
    assert all((dest / n).read_bytes() == b"packed-environment" for n in envs)
    # gpu profile: the encoders stay on the onnxruntime backend and need no environment
    out_gpu = tmp_path / "stock-gpu.tar.gz"
    names = build_stock_triton_tarball(repository, out_gpu, profile="gpu", env_tarball=env)
    assert "video_encoder/env.tar.gz" not in names and "preprocess/env.tar.gz" in names
    # a config that manages its own environment is refused rather than silently overridden
    cfg = repository / C.PREPROCESS / "config.pbtxt"
    cfg.write_text(cfg.read_text() + 'parameters { key: "EXECUTION_ENV_PATH" value: { string_value: "/x" } }\n')
    with pytest.raises(PackageError, match="preprocess: the config already sets EXECUTION_ENV_PATH"):
        build_stock_triton_tarball(repository, out, profile="cpu", env_tarball=env)


def test_execution_env_python_of_images() -> None:
    assert E.image_python("24.10") == "3.10"
    assert E.image_python("24.05-py3") == "3.10"
    assert E.image_python("763104351884.dkr.ecr.us-west-2.amazonaws.com/sagemaker-tritonserver:25.04-py3") == "3.12"
    assert E.image_python("24.12") == "3.12"
    with pytest.raises(E.EnvError, match="not known here"):
        E.image_python("23.12")
    with pytest.raises(E.EnvError, match="cannot read a Triton release"):
        E.image_python("latest")


def test_execution_env_refuses_a_python_mismatch(repository: Path, tmp_path: Path, capsys) -> None:
    """Packing with this interpreter (3.11) for the 24.10 image (3.10) is refused before any work."""
    from fusion_emotion.cli import main

    here = E.probe(sys.executable)
    with pytest.raises(
        E.EnvError, match=rf"Python {here.version}, but the image's Python-backend stub runs Python 3.10"
    ):
        E.check_interpreter(here, "3.10")
    E.check_interpreter(here, here.minor)
    args = ["package", "--repository", str(repository), "--output", str(tmp_path / "m.tar.gz")]
    args += ["--target", "sagemaker-triton", "--profile", "cpu", "--image", "24.10", "--python", sys.executable]
    assert main(args) == 2
    assert "stub runs Python 3.10" in capsys.readouterr().err
    assert not list(tmp_path.glob("m.tar.gz*"))


# --- argument validation ---------------------------------------------------------


def _config(tmp_path: Path, **overrides: object) -> sm.DeployConfig:
    tarball = tmp_path / "model.tar.gz"
    tarball.write_bytes(b"x")
    values: dict[str, object] = {
        "model_data": str(tarball),
        "s3_prefix": f"s3://{BUCKET}/deploys",
        "image_uri": IMAGE,
        "role_arn": ROLE,
        "endpoint_name": "fusion-test",
    }
    values.update(overrides)
    return sm.DeployConfig(**values)  # type: ignore[arg-type]


def test_parse_s3_uri() -> None:
    assert sm.s3_argument("s3://bucket/a/b/") == S3Uri("bucket", "a/b")
    assert str(sm.s3_argument("s3://bucket").join("ep", "model.tar.gz")) == "s3://bucket/ep/model.tar.gz"
    for bad in ("bucket/key", "https://bucket/key", "s3://", "s3://B_ad/key", ""):
        with pytest.raises(sm.ArgumentError, match="s3://bucket/prefix"):
            sm.s3_argument(bad)


def test_parse_autoscaling() -> None:
    assert sm.parse_autoscaling("1:4:100") == sm.Autoscaling(1, 4, 100.0)
    assert sm.parse_autoscaling("0:2:5", allow_zero_min=True) == sm.Autoscaling(0, 2, 5.0)
    with pytest.raises(sm.ArgumentError, match="only async"):
        sm.parse_autoscaling("0:2:5")
    for bad, msg in (
        ("1:4", "MIN:MAX:TARGET"),
        ("a:4:1", "integer"),
        ("3:2:10", "MAX must be >= MIN"),
        ("1:2:0", "TARGET must be > 0"),
        ("1:2:-3", "TARGET must be > 0"),
    ):
        with pytest.raises(sm.ArgumentError, match=msg):
            sm.parse_autoscaling(bad)


def test_validate_config(tmp_path: Path) -> None:
    sm.validate_config(_config(tmp_path))
    sm.validate_config(_config(tmp_path, model_data="s3://b-1/x/model.tar.gz", s3_prefix=None))
    cases = [
        ({"role_arn": "SageMakerRole"}, "--role-arn"),
        ({"role_arn": "arn:aws:iam::12345:role/x"}, "--role-arn"),
        ({"endpoint_name": "bad_name"}, "--endpoint-name"),
        ({"endpoint_name": "-x"}, "--endpoint-name"),
        ({"instance_type": "g4dn.xlarge"}, "--instance-type"),
        ({"instance_count": 0}, "--instance-count"),
        ({"profile": "tpu"}, "--profile"),
        ({"instance_type": "ml.m5.xlarge", "profile": "gpu"}, r"--profile gpu needs an NVIDIA GPU.*use --profile cpu"),
        ({"instance_type": "ml.c5.2xlarge", "profile": "gpu_fp16"}, "ml.c5.2xlarge has none"),
        ({"instance_type": "ml.inf2.xlarge", "profile": "gpu"}, "needs an NVIDIA GPU"),
        ({"async_output": "s3://b-1/out", "async_invocation_timeout_s": 3601}, "--async-invocation-timeout"),
        ({"model_data": str(tmp_path / "missing.tar.gz")}, "neither an s3:// URI"),
        ({"s3_prefix": None}, "--s3-prefix is required"),
        ({"s3_prefix": "bucket/prefix"}, "--s3-prefix"),
        ({"async_output": "/tmp/out"}, "--async-output"),
        ({"autoscaling": sm.Autoscaling(0, 2, 5)}, "needs an async endpoint"),
        ({"autoscaling": sm.Autoscaling(1, 2, 5), "wait": False}, "drop --no-wait"),
    ]
    for overrides, msg in cases:
        with pytest.raises(sm.ArgumentError, match=msg):
            sm.validate_config(_config(tmp_path, **overrides))


def test_deploy_cli_rejects_bad_arguments_before_aws(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fusion_emotion.cli import main

    tarball = tmp_path / "model.tar.gz"
    tarball.write_bytes(b"x")
    base = ["deploy", "--model-data", str(tarball), "--image-uri", IMAGE, "--endpoint-name", "ep", "--s3-any-bucket"]
    assert main([*base, "--s3-prefix", "s3://b-1/p", "--role-arn", "nope"]) == 2
    assert "--role-arn" in capsys.readouterr().err
    # The bucket allow-list is an explicit choice: neither flag (or both) is refused before any AWS call.
    no_choice = [b for b in base if b != "--s3-any-bucket"]
    assert main([*no_choice, "--s3-prefix", "s3://b-1/p", "--role-arn", ROLE]) == 2
    assert "--s3-allow-bucket" in capsys.readouterr().err
    assert main([*base, "--s3-allow-bucket", "b-1", "--s3-prefix", "s3://b-1/p", "--role-arn", ROLE]) == 2
    assert "not both" in capsys.readouterr().err
    assert main([*no_choice, "--s3-allow-bucket", "Bad_Bucket", "--s3-prefix", "s3://b-1/p", "--role-arn", ROLE]) == 2
    assert "--s3-allow-bucket" in capsys.readouterr().err
    assert main([*base, "--s3-prefix", "s3://b-1/p", "--role-arn", ROLE, "--autoscaling", "1-4-100"]) == 2
    assert "MIN:MAX:TARGET" in capsys.readouterr().err


def test_resource_names_fit_sagemaker_limits() -> None:
    model, config = sm.resource_names("e" * 63, now=0.25)
    assert len(model) <= 63 and model.endswith("-19700101-000000250") and model == config
    assert sm.resource_names("ep", now=1.0) != sm.resource_names("ep", now=1.001)  # two deploys in one second


def test_instance_types_and_profiles() -> None:
    for gpu in ("ml.g4dn.xlarge", "ml.g5.2xlarge", "ml.g6.xlarge", "ml.g6e.xlarge", "ml.p3.2xlarge", "ml.p4d.24xlarge"):
        assert sm.instance_has_gpu(gpu), gpu
    for cpu in ("ml.m5.xlarge", "ml.c5.2xlarge", "ml.c7i.large", "ml.r5.large", "ml.t2.medium", "ml.inf2.xlarge",
                "ml.trn1.2xlarge", "ml.g4ad.xlarge"):  # fmt: skip
        assert not sm.instance_has_gpu(cpu), cpu
    assert [p for p in ("cpu", "cpu_int8", "cpu_dali", "gpu", "gpu_fp16") if sm.profile_needs_gpu(p)] == [
        "gpu",
        "gpu_fp16",
    ]
    # No --profile: the one that matches the instance.
    assert sm.effective_profile(sm.DeployConfig("s3://b/m", IMAGE, ROLE, "ep", instance_type="ml.m5.xlarge")) == "cpu"
    assert sm.effective_profile(sm.DeployConfig("s3://b/m", IMAGE, ROLE, "ep", instance_type="ml.g5.xlarge")) == "gpu"


def test_async_endpoints_get_async_sized_frontend_limits(tmp_path: Path) -> None:
    from fusion_emotion.frontend.settings import SAGEMAKER_MAX_PAYLOAD_BYTES, Settings

    realtime = sm.container_environment(_config(tmp_path))
    assert sm.ENV_MAX_BODY_BYTES not in realtime and sm.ENV_REQUEST_TIMEOUT_S not in realtime
    env = sm.container_environment(_config(tmp_path, async_output="s3://b-1/out", async_invocation_timeout_s=1800))
    settings = Settings.from_env(env)  # what the front end in the container will run with
    assert settings.max_body_bytes == sm.ASYNC_MAX_BODY_BYTES > 2 * C.MAX_INPUT_BYTES > SAGEMAKER_MAX_PAYLOAD_BYTES
    assert settings.request_timeout_s == 1795
    # --env wins over the computed values
    env = sm.container_environment(
        _config(tmp_path, async_output="s3://b-1/out", environment={sm.ENV_MAX_BODY_BYTES: "1000"})
    )
    assert env[sm.ENV_MAX_BODY_BYTES] == "1000" and env[sm.ENV_REQUEST_TIMEOUT_S] == "895"


def test_deploy_cli_refuses_a_gpu_profile_on_a_cpu_instance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fusion_emotion.cli import main

    tarball = tmp_path / "model.tar.gz"
    tarball.write_bytes(b"x")
    argv = ["deploy", "--model-data", str(tarball), "--s3-prefix", "s3://b-1/p", "--image-uri", IMAGE, "--s3-any-bucket",
            "--role-arn", ROLE, "--endpoint-name", "ep", "--instance-type", "ml.m5.xlarge", "--profile", "gpu"]  # fmt: skip
    assert main(argv) == 2
    assert "use --profile cpu" in capsys.readouterr().err


# --- against a local AWS API (moto server) ------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint() -> str:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    """A boto3 Session that talks to moto via the standard AWS_ENDPOINT_URL variable."""
    import boto3

    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    session = boto3.session.Session()
    s3 = session.client("s3")
    if BUCKET not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket=BUCKET)
    return session


def _models_named(sagemaker: Any, part: str) -> list[str]:
    """Model names containing ``part``: moto ignores ListModels' NameContains and other tests share its server."""
    return [m["ModelName"] for m in sagemaker.list_models()["Models"] if part in m["ModelName"]]


def _configs_named(sagemaker: Any, part: str) -> list[str]:
    """Endpoint config names containing ``part`` (filtered here for the same reason)."""
    configs = sagemaker.list_endpoint_configs()["EndpointConfigs"]
    return [c["EndpointConfigName"] for c in configs if part in c["EndpointConfigName"]]


def _describe_scaling(session, endpoint: str) -> tuple[list[dict], list[dict]]:
    aas = session.client("application-autoscaling")
    rid = sm.scaling_resource_id(endpoint)
    targets = aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])["ScalableTargets"]
    policies = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"]
    return targets, [p for p in policies if p["ResourceId"] == rid]


def test_deploy_realtime_with_autoscaling_and_undeploy(aws, repository: Path, tmp_path: Path, capsys) -> None:
    from fusion_emotion.cli import main

    tarball = tmp_path / "model.tar.gz"
    build_model_tarball(repository, tarball)
    endpoint = "fusion-rt"
    argv = [
        "deploy", "--model-data", str(tarball), "--s3-prefix", f"s3://{BUCKET}/deploys",
        "--s3-allow-bucket", BUCKET, "--s3-allow-bucket", "media-2",
        "--image-uri", IMAGE, "--role-arn", ROLE, "--endpoint-name", endpoint,
        "--instance-type", "ml.g4dn.2xlarge", "--instance-count", "2", "--autoscaling", "1:4:120",
        "--env", "EXTRA=1",
    ]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert "InService" in capsys.readouterr().out

    sagemaker, s3 = aws.client("sagemaker"), aws.client("s3")
    head = s3.head_object(Bucket=BUCKET, Key=f"deploys/{endpoint}/model.tar.gz")
    assert head["ContentLength"] == tarball.stat().st_size

    ep = sagemaker.describe_endpoint(EndpointName=endpoint)
    assert ep["EndpointStatus"] == "InService"
    config = sagemaker.describe_endpoint_config(EndpointConfigName=ep["EndpointConfigName"])
    (variant,) = config["ProductionVariants"]
    assert variant["VariantName"] == "AllTraffic"
    assert variant["InstanceType"] == "ml.g4dn.2xlarge" and variant["InitialInstanceCount"] == 2
    assert not config.get("AsyncInferenceConfig")
    model = sagemaker.describe_model(ModelName=variant["ModelName"])
    container = model["PrimaryContainer"]
    assert container["Image"] == IMAGE
    assert container["ModelDataUrl"] == f"s3://{BUCKET}/deploys/{endpoint}/model.tar.gz"
    assert container["Environment"] == {
        "SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": "fusion_emotion",
        "FUSION_EMOTION_PROFILE": "gpu",
        "FUSION_EMOTION_S3_ALLOWED_BUCKETS": f"{BUCKET},media-2",
        "EXTRA": "1",
    }
    assert model["ExecutionRoleArn"] == ROLE

    targets, policies = _describe_scaling(aws, endpoint)
    (target,) = targets
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 4)
    (policy,) = policies
    assert policy["PolicyType"] == "TargetTrackingScaling"
    tt = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tt["TargetValue"] == 120
    assert tt["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"
    assert tt["ScaleInCooldown"] >= tt["ScaleOutCooldown"] > 0

    assert main(["undeploy", "--endpoint-name", endpoint]) == 0
    out = capsys.readouterr().out
    assert f"deleted endpoint {endpoint}" in out and "deleted model" in out and "deleted scaling policy" in out
    assert _describe_scaling(aws, endpoint) == ([], [])
    assert not [e for e in sagemaker.list_endpoints()["Endpoints"] if e["EndpointName"] == endpoint]
    assert not _configs_named(sagemaker, endpoint)
    assert not _models_named(sagemaker, endpoint)

    # Second run: everything is already gone, still a clean exit.
    assert main(["undeploy", "--endpoint-name", endpoint]) == 0
    assert f"already gone: endpoint {endpoint}" in capsys.readouterr().out


def test_deploy_async_scale_to_zero(aws) -> None:
    endpoint = "fusion-async"
    data = f"s3://{BUCKET}/prebuilt/model.tar.gz"
    aws.client("s3").put_object(Bucket=BUCKET, Key="prebuilt/model.tar.gz", Body=b"tar")
    cfg = sm.DeployConfig(
        model_data=data,
        image_uri=IMAGE,
        role_arn=ROLE,
        endpoint_name=endpoint,
        instance_type="ml.m5.xlarge",
        profile="cpu",
        async_output=f"s3://{BUCKET}/async-out",
        autoscaling=sm.Autoscaling(0, 3, 5),
    )
    result = sm.deploy(cfg, session=aws)
    assert result.status == "InService" and result.model_data_url == data

    sagemaker = aws.client("sagemaker")
    config = sagemaker.describe_endpoint_config(EndpointConfigName=result.endpoint_config_name)
    assert config["AsyncInferenceConfig"] == {
        "OutputConfig": {"S3OutputPath": f"s3://{BUCKET}/async-out"},
        "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 4},
    }
    env = sagemaker.describe_model(ModelName=result.model_name)["PrimaryContainer"]["Environment"]
    assert env["FUSION_EMOTION_PROFILE"] == "cpu"
    assert env["FUSION_EMOTION_MAX_BODY_BYTES"] == str(sm.ASYNC_MAX_BODY_BYTES)
    assert env["FUSION_EMOTION_REQUEST_TIMEOUT_S"] == str(sm.ASYNC_INVOCATION_TIMEOUT_S - sm.ASYNC_DEADLINE_MARGIN_S)

    targets, policies = _describe_scaling(aws, endpoint)
    assert (targets[0]["MinCapacity"], targets[0]["MaxCapacity"]) == (0, 3)
    by_type = {p["PolicyType"]: p for p in policies}
    assert set(by_type) == {"TargetTrackingScaling", "StepScaling"}
    metric = by_type["TargetTrackingScaling"]["TargetTrackingScalingPolicyConfiguration"][
        "CustomizedMetricSpecification"
    ]
    assert metric["MetricName"] == "ApproximateBacklogSizePerInstance"
    assert metric["Namespace"] == "AWS/SageMaker"
    assert metric["Dimensions"] == [{"Name": "EndpointName", "Value": endpoint}]
    step = by_type["StepScaling"]["StepScalingPolicyConfiguration"]
    assert step["StepAdjustments"] == [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}]
    cloudwatch = aws.client("cloudwatch")
    (alarm,) = cloudwatch.describe_alarms(AlarmNames=[sm.backlog_alarm_name(endpoint)])["MetricAlarms"]
    assert alarm["MetricName"] == "HasBacklogWithoutCapacity"
    assert alarm["AlarmActions"] == [by_type["StepScaling"]["PolicyARN"]]

    report = sm.undeploy(endpoint, session=aws)
    assert f"alarm {sm.backlog_alarm_name(endpoint)}" in report.deleted
    assert not cloudwatch.describe_alarms(AlarmNames=[sm.backlog_alarm_name(endpoint)])["MetricAlarms"]
    assert _describe_scaling(aws, endpoint) == ([], [])
    # The model data is the user's: undeploy leaves S3 alone.
    aws.client("s3").head_object(Bucket=BUCKET, Key="prebuilt/model.tar.gz")


def test_undeploy_tolerates_partial_state(aws) -> None:
    """Endpoint config already deleted by hand: endpoint and model lookups degrade gracefully."""
    sagemaker = aws.client("sagemaker")
    endpoint = "fusion-partial"
    cfg = sm.DeployConfig(
        model_data=f"s3://{BUCKET}/prebuilt/model.tar.gz", image_uri=IMAGE, role_arn=ROLE, endpoint_name=endpoint
    )
    result = sm.deploy(cfg, session=aws)
    sagemaker.delete_endpoint_config(EndpointConfigName=result.endpoint_config_name)
    report = sm.undeploy(endpoint, session=aws)
    assert f"endpoint {endpoint}" in report.deleted
    assert f"endpoint config {result.endpoint_config_name}" in report.missing
    sagemaker.delete_model(ModelName=result.model_name)


def test_deploy_wait_failure_reports_reason(aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiter failure surfaces DescribeEndpoint's status and FailureReason."""
    from botocore.exceptions import WaiterError

    class FakeWaiter:
        def wait(self, **kwargs: object) -> None:
            raise WaiterError("EndpointInService", "Waiter encountered a terminal failure state", {})

    sagemaker = aws.client("sagemaker")
    endpoint = "fusion-fail"
    cfg = sm.DeployConfig(
        model_data=f"s3://{BUCKET}/prebuilt/model.tar.gz", image_uri=IMAGE, role_arn=ROLE, endpoint_name=endpoint
    )
    sm.deploy(sm.DeployConfig(**{**cfg.__dict__, "wait": False}), session=aws)
    monkeypatch.setattr(sagemaker, "get_waiter", lambda name: FakeWaiter())
    with pytest.raises(sm.DeployError, match=r"endpoint fusion-fail failed \(status InService\)"):
        sm.wait_in_service(sagemaker, endpoint, 60)
    sm.undeploy(endpoint, session=aws)


def test_deploy_rolls_back_when_the_api_rejects_a_step(aws) -> None:
    """CreateEndpointConfig fails (instance type not in the API enum): the model created before is removed."""
    sagemaker = aws.client("sagemaker")
    cfg = sm.DeployConfig(
        model_data=f"s3://{BUCKET}/prebuilt/model.tar.gz",
        image_uri=IMAGE,
        role_arn=ROLE,
        endpoint_name="fusion-rollback",
        instance_type="ml.notatype.xlarge",
    )
    with pytest.raises(sm.DeployError, match="CreateEndpointConfig failed"):
        sm.deploy(cfg, session=aws)
    assert not _models_named(sagemaker, "fusion-rollback")
    assert not [e for e in sagemaker.list_endpoints()["Endpoints"] if e["EndpointName"] == "fusion-rollback"]


@pytest.fixture()
def sagemaker_semantics(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make moto's SageMaker behave like SageMaker where deploy depends on it.

    moto 5 accepts CreateEndpoint for a name already in use (SageMaker refuses:
    "Cannot create already existing endpoint") and has no UpdateEndpoint at all.
    The server runs in this process, so its response class is patched: CreateEndpoint
    refuses a name in use, UpdateEndpoint switches an existing endpoint to an existing
    config (unknown endpoint or config: ValidationException, as SageMaker answers).
    """
    from moto.core.responses import ActionResult
    from moto.sagemaker.exceptions import ValidationError
    from moto.sagemaker.responses import SageMakerResponse

    original_create = SageMakerResponse.create_endpoint

    def create_endpoint(self):  # type: ignore[no-untyped-def]
        name = self._get_param("EndpointName")
        if name in self.sagemaker_backend.endpoints:
            raise ValidationError(message=f'Cannot create already existing endpoint "{name}".')
        return original_create(self)

    def update_endpoint(self):  # type: ignore[no-untyped-def]
        backend = self.sagemaker_backend
        name = self._get_param("EndpointName")
        backend.describe_endpoint(name)
        config = backend.describe_endpoint_config(self._get_param("EndpointConfigName"))
        endpoint = backend.endpoints[name]
        endpoint.endpoint_config_name = config["EndpointConfigName"]
        endpoint.production_variants = endpoint._process_production_variants(config["ProductionVariants"])
        return ActionResult({"EndpointArn": endpoint.arn})

    monkeypatch.setattr(SageMakerResponse, "create_endpoint", create_endpoint)
    monkeypatch.setattr(SageMakerResponse, "update_endpoint", update_endpoint, raising=False)


def _record_calls(session) -> list[str]:
    """Names of the SageMaker API operations this session's clients call, in order."""
    calls: list[str] = []
    session.events.register("before-call.sagemaker", lambda model, **_: calls.append(model.name))
    return calls


def test_moto_is_patched_to_refuse_a_second_create_endpoint(aws, sagemaker_semantics) -> None:
    """The guard the update test relies on: CreateEndpoint on a live name fails, as on SageMaker."""
    from botocore.exceptions import ClientError

    cfg = sm.DeployConfig(
        model_data=f"s3://{BUCKET}/prebuilt/model.tar.gz", image_uri=IMAGE, role_arn=ROLE, endpoint_name="fusion-dup"
    )
    result = sm.deploy(cfg, session=aws)
    sagemaker = aws.client("sagemaker")
    with pytest.raises(ClientError, match="Cannot create already existing endpoint"):
        sagemaker.create_endpoint(EndpointName="fusion-dup", EndpointConfigName=result.endpoint_config_name)
    sm.undeploy("fusion-dup", session=aws)


def test_deploy_to_an_existing_endpoint_updates_it(aws, sagemaker_semantics) -> None:
    """Second deploy: UpdateEndpoint (never CreateEndpoint), autoscaling re-applied, old config and model retired."""
    endpoint = "fusion-update"
    data = f"s3://{BUCKET}/prebuilt/model.tar.gz"
    aws.client("s3").put_object(Bucket=BUCKET, Key="prebuilt/model.tar.gz", Body=b"tar")
    calls = _record_calls(aws)
    first = sm.deploy(
        sm.DeployConfig(
            data, IMAGE, ROLE, endpoint, instance_type="ml.g4dn.xlarge", autoscaling=sm.Autoscaling(1, 2, 100)
        ),
        session=aws,
    )
    assert not first.updated and "CreateEndpoint" in calls and "UpdateEndpoint" not in calls
    calls.clear()

    second = sm.deploy(
        sm.DeployConfig(
            data, IMAGE, ROLE, endpoint, instance_type="ml.g4dn.2xlarge", autoscaling=sm.Autoscaling(1, 3, 50)
        ),
        session=aws,
    )
    assert second.updated and second.status == "InService"
    assert "UpdateEndpoint" in calls and "CreateEndpoint" not in calls, calls
    sagemaker = aws.client("sagemaker")
    ep = sagemaker.describe_endpoint(EndpointName=endpoint)
    assert ep["EndpointConfigName"] == second.endpoint_config_name != first.endpoint_config_name
    (variant,) = sagemaker.describe_endpoint_config(EndpointConfigName=ep["EndpointConfigName"])["ProductionVariants"]
    assert variant["InstanceType"] == "ml.g4dn.2xlarge" and variant["ModelName"] == second.model_name
    # The previous deployment's pieces are gone; only the live ones remain.
    assert sorted(second.retired) == sorted(
        [f"endpoint config {first.endpoint_config_name}", f"model {first.model_name}"]
    )
    assert _configs_named(sagemaker, endpoint) == [second.endpoint_config_name]
    assert _models_named(sagemaker, endpoint) == [second.model_name]
    targets, policies = _describe_scaling(aws, endpoint)
    assert (targets[0]["MinCapacity"], targets[0]["MaxCapacity"]) == (1, 3)
    assert [p["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] for p in policies] == [50]

    report = sm.undeploy(endpoint, session=aws)
    assert f"model {second.model_name}" in report.deleted
    assert not _models_named(sagemaker, endpoint)


def test_gpu_fp16_endpoint_gets_time_to_build_engines() -> None:
    fp16 = sm.DeployConfig("s3://b/m", IMAGE, ROLE, "ep", instance_type="ml.g4dn.xlarge", profile="gpu_fp16")
    (variant,) = sm.endpoint_config_request(fp16, "model", "config")["ProductionVariants"]
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == sm.TRT_STARTUP_TIMEOUT_S
    assert 60 <= sm.TRT_STARTUP_TIMEOUT_S <= 3600  # SageMaker's allowed range
    gpu = sm.DeployConfig("s3://b/m", IMAGE, ROLE, "ep", instance_type="ml.g4dn.xlarge")
    (variant,) = sm.endpoint_config_request(gpu, "model", "config")["ProductionVariants"]
    assert "ContainerStartupHealthCheckTimeoutInSeconds" not in variant
