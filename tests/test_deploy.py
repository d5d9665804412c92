"""Packaging (both SageMaker targets) and argument validation; deploy/undeploy against moto: test_deploy_sagemaker.py."""

from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path

import pytest

from fusion_emotion import contract as C
from fusion_emotion.contract import ENSEMBLE, MODEL_NAMES
from fusion_emotion.deploy import config as dc
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


@pytest.mark.parametrize("profile", ["cpu_dali", "gpu_dali"])
def test_stock_image_refuses_the_dali_profiles_naming_what_works(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture, profile: str
) -> None:
    """The stock image's packed environment holds no DALI: its tarball for a DALI profile could not load.
    Refused before any packing, naming the profile and the target that work."""
    from fusion_emotion.cli import main

    out = tmp_path / "m.tar.gz"
    args = ["package", "--repository", str(repository), "--output", str(out), "--target", "sagemaker-triton"]
    assert main([*args, "--profile", profile, "--image", "24.10", "--python", sys.executable]) == 2
    err = capsys.readouterr().err
    assert f"--profile {profile} cannot run on SageMaker's stock Triton image" in err and "no DALI" in err
    assert f"--profile {profile.replace('_dali', '')} for --target sagemaker-triton" in err
    assert "--target sagemaker (this project's image, which has DALI)" in err
    assert not list(tmp_path.glob("m.tar.gz*"))
    with pytest.raises(PackageError, match="no DALI"):
        build_stock_triton_tarball(repository, out, profile=profile, env_tarball=tmp_path / "env.tar.gz")
    assert main(["package", "--repository", str(repository), "--output", str(out), "--profile", profile]) == 0


# --- argument validation ---------------------------------------------------------


def _config(tmp_path: Path, **overrides: object) -> dc.DeployConfig:
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
    return dc.DeployConfig(**values)  # type: ignore[arg-type]


def test_parse_s3_uri() -> None:
    assert dc.s3_argument("s3://bucket/a/b/") == S3Uri("bucket", "a/b")
    assert str(dc.s3_argument("s3://bucket").join("ep", "model.tar.gz")) == "s3://bucket/ep/model.tar.gz"
    for bad in ("bucket/key", "https://bucket/key", "s3://", "s3://B_ad/key", ""):
        with pytest.raises(dc.ArgumentError, match="s3://bucket/prefix"):
            dc.s3_argument(bad)


def test_parse_autoscaling() -> None:
    assert dc.parse_autoscaling("1:4:100") == dc.Autoscaling(1, 4, 100.0)
    assert dc.parse_autoscaling("0:2:5", allow_zero_min=True) == dc.Autoscaling(0, 2, 5.0)
    with pytest.raises(dc.ArgumentError, match="only async"):
        dc.parse_autoscaling("0:2:5")
    for bad, msg in (
        ("1:4", "MIN:MAX:TARGET"),
        ("a:4:1", "integer"),
        ("3:2:10", "MAX must be >= MIN"),
        ("1:2:0", "TARGET must be > 0"),
        ("1:2:-3", "TARGET must be > 0"),
    ):
        with pytest.raises(dc.ArgumentError, match=msg):
            dc.parse_autoscaling(bad)


def test_validate_config(tmp_path: Path) -> None:
    dc.validate_config(_config(tmp_path))
    dc.validate_config(_config(tmp_path, model_data="s3://b-1/x/model.tar.gz", s3_prefix=None))
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
        ({"autoscaling": dc.Autoscaling(0, 2, 5)}, "needs an async endpoint"),
        ({"autoscaling": dc.Autoscaling(1, 2, 5), "wait": False}, "drop --no-wait"),
    ]
    for overrides, msg in cases:
        with pytest.raises(dc.ArgumentError, match=msg):
            dc.validate_config(_config(tmp_path, **overrides))


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
        assert dc.instance_has_gpu(gpu), gpu
    for cpu in ("ml.m5.xlarge", "ml.c5.2xlarge", "ml.c7i.large", "ml.r5.large", "ml.t2.medium", "ml.inf2.xlarge",
                "ml.trn1.2xlarge", "ml.g4ad.xlarge"):  # fmt: skip
        assert not dc.instance_has_gpu(cpu), cpu
    assert [p for p in ("cpu", "cpu_int8", "cpu_dali", "gpu", "gpu_fp16") if dc.profile_needs_gpu(p)] == [
        "gpu",
        "gpu_fp16",
    ]
    # No --profile: the one that matches the instance.
    assert dc.effective_profile(dc.DeployConfig("s3://b/m", IMAGE, ROLE, "ep", instance_type="ml.m5.xlarge")) == "cpu"
    assert dc.effective_profile(dc.DeployConfig("s3://b/m", IMAGE, ROLE, "ep", instance_type="ml.g5.xlarge")) == "gpu"


def test_async_endpoints_get_async_sized_frontend_limits(tmp_path: Path) -> None:
    from fusion_emotion.frontend.settings import SAGEMAKER_MAX_PAYLOAD_BYTES, Settings

    realtime = dc.container_environment(_config(tmp_path))
    assert dc.ENV_MAX_BODY_BYTES not in realtime and dc.ENV_REQUEST_TIMEOUT_S not in realtime
    env = dc.container_environment(_config(tmp_path, async_output="s3://b-1/out", async_invocation_timeout_s=1800))
    settings = Settings.from_env(env)  # what the front end in the container will run with
    assert settings.max_body_bytes == dc.ASYNC_MAX_BODY_BYTES > 2 * C.MAX_INPUT_BYTES > SAGEMAKER_MAX_PAYLOAD_BYTES
    assert settings.request_timeout_s == 1795
    # --env wins over the computed values
    env = dc.container_environment(
        _config(tmp_path, async_output="s3://b-1/out", environment={dc.ENV_MAX_BODY_BYTES: "1000"})
    )
    assert env[dc.ENV_MAX_BODY_BYTES] == "1000" and env[dc.ENV_REQUEST_TIMEOUT_S] == "895"


def test_deploy_cli_refuses_a_gpu_profile_on_a_cpu_instance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fusion_emotion.cli import main

    tarball = tmp_path / "model.tar.gz"
    tarball.write_bytes(b"x")
    argv = ["deploy", "--model-data", str(tarball), "--s3-prefix", "s3://b-1/p", "--image-uri", IMAGE, "--s3-any-bucket",
            "--role-arn", ROLE, "--endpoint-name", "ep", "--instance-type", "ml.m5.xlarge", "--profile", "gpu"]  # fmt: skip
    assert main(argv) == 2
    assert "use --profile cpu" in capsys.readouterr().err
