"""SageMaker's stock Triton image, reproduced: `package --target sagemaker-triton` served unchanged.

The tarball is unpacked into a fresh folder and the bundled tritonserver runs
with the flags of the image's `serve` script (triton-inference-server/server
r24.10 `docker/sagemaker/serve`), the Python 3.10 stub (the 24.10 image's
Python), and an environment in which the project's venv is invisible: system
PATH, no PYTHONPATH/VIRTUAL_ENV, an interpreter without numpy or this package.
Everything the models import must come from the tarball's packed environment.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from fusion_emotion.client import sagemaker_triton as st
from helpers import free_port

from fusion_emotion import contract as C
from fusion_emotion.deploy import config as dc
from fusion_emotion.deploy import execution_env as E

STUB_PYTHON = "3.10"  # the 24.10 image (Triton 2.51, the bundled server's release)
STOCK_IMAGE_URI = "763104351884.dkr.ecr.us-east-1.amazonaws.com/sagemaker-tritonserver:24.10-py3"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def stock_serve_command(tritonserver: str, env: dict[str, str], repository: str = "/opt/ml/model/") -> list[str]:
    """The tritonserver command line the stock image's `serve` script (r24.10) builds from ``env``.

    Single-model mode, the variables it reads in the order it appends them; the
    model repository is a parameter here (the image hard-codes /opt/ml/model/).
    """
    args = [f"--model-repository={repository}"]
    args.append(f"--model-namespacing={env.get('SAGEMAKER_TRITON_DISABLE_MODEL_NAMESPACING', 'true')}")
    if env.get("SAGEMAKER_BIND_TO_PORT"):
        args.append(f"--sagemaker-port={env['SAGEMAKER_BIND_TO_PORT']}")
    args.append(f"--allow-grpc={env.get('SAGEMAKER_TRITON_ALLOW_GRPC', 'false')}")
    args.append(f"--allow-metrics={env.get('SAGEMAKER_TRITON_ALLOW_METRICS', 'false')}")
    args.append(f"--log-verbose={env.get('SAGEMAKER_TRITON_LOG_VERBOSE', 'true')}")
    shm_default = env.get("SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE", "16777216")
    shm_growth = env.get("SAGEMAKER_TRITON_SHM_GROWTH_BYTE_SIZE", "1048576")
    args += [
        f"--backend-config=python,shm-default-byte-size={shm_default}",
        f"--backend-config=python,shm-growth-byte-size={shm_growth}",
    ]
    args += env.get("SAGEMAKER_TRITON_ADDITIONAL_ARGS", "").split()
    name = env["SAGEMAKER_TRITON_DEFAULT_MODEL_NAME"]
    if not (Path(repository) / name).is_dir():
        raise FileNotFoundError(f"Directory with provided SAGEMAKER_TRITON_DEFAULT_MODEL_NAME {name} does not exist")
    args.append(f"--load-model={name}")
    return [tritonserver, "--allow-sagemaker=true", "--allow-http=false", "--model-control-mode=explicit", *args]


def test_stock_serve_command_matches_the_script() -> None:
    env = {"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": "fusion_emotion", "SAGEMAKER_BIND_TO_PORT": "8080"}
    with pytest.raises(FileNotFoundError, match="SAGEMAKER_TRITON_DEFAULT_MODEL_NAME fusion_emotion"):
        stock_serve_command("tritonserver", env, "/nonexistent/")
    repo = str(Path(__file__).resolve().parents[1] / "model_repository")
    assert stock_serve_command("tritonserver", env, repo) == [
        "tritonserver", "--allow-sagemaker=true", "--allow-http=false", "--model-control-mode=explicit",
        f"--model-repository={repo}", "--model-namespacing=true", "--sagemaker-port=8080",
        "--allow-grpc=false", "--allow-metrics=false", "--log-verbose=true",
        "--backend-config=python,shm-default-byte-size=16777216",
        "--backend-config=python,shm-growth-byte-size=1048576",
        "--load-model=fusion_emotion",
    ]  # fmt: skip


def _stub_interpreter() -> E.Interpreter:
    """The Python 3.10 the stub embeds, which also packs the environment (as in the 24.10 image)."""
    interp = E.probe(os.environ.get("FUSION_EMOTION_PY310") or E.find_interpreter(STUB_PYTHON))
    E.check_interpreter(interp, STUB_PYTHON)
    return interp


def _libpython_dir(interp: E.Interpreter) -> str:
    code = "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"
    libdir = subprocess.run([interp.path, "-I", "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert list(Path(libdir).glob(f"libpython{STUB_PYTHON}.so*")), f"{interp.path} has no shared libpython"
    return libdir


@pytest.fixture(scope="session")
def stock_tarball(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, E.Interpreter, dict]:
    """`fusion-emotion package --target sagemaker-triton --profile cpu`, packed once per session."""
    from fusion_emotion.cli import main

    interp = _stub_interpreter()
    out = tmp_path_factory.mktemp("stock") / "model.tar.gz"
    cache = tmp_path_factory.mktemp("env-cache")
    old = os.environ.get("FUSION_EMOTION_CACHE")
    os.environ["FUSION_EMOTION_CACHE"] = str(cache)  # a fresh pack per session, never a stale one
    try:
        start = time.monotonic()
        code = main(
            [
                "package", "--repository", str(demo_repository), "--output", str(out),
                "--target", "sagemaker-triton", "--profile", "cpu", "--image", "24.10",
                "--python", interp.path, "--image-python-dir", str(Path(interp.path).parent),
            ]
        )  # fmt: skip
        seconds = time.monotonic() - start
    finally:
        if old is None:
            os.environ.pop("FUSION_EMOTION_CACHE", None)
        else:
            os.environ["FUSION_EMOTION_CACHE"] = old
    assert code == 0
    env_tar = next((cache / "envs").glob("env-py3.10-*.tar.gz"))
    stats = {"seconds": seconds, "tarball_mb": out.stat().st_size / 1e6, "env_mb": env_tar.stat().st_size / 1e6}
    print(f"\npackage --target sagemaker-triton: {stats}")
    return out, interp, stats


@pytest.mark.integration
def test_tarball_layout(stock_tarball: tuple[Path, E.Interpreter, dict]) -> None:
    tarball, _, _ = stock_tarball
    with tarfile.open(tarball) as tar:
        members = {m.name: m for m in tar.getmembers()}
        configs = {n: tar.extractfile(m).read().decode() for n, m in members.items() if n.endswith("config.pbtxt")}
        env_member = members["preprocess/env.tar.gz"]
        env_bytes = tar.extractfile(members[env_member.linkname] if env_member.islnk() else env_member).read()
    assert not any("/configs/" in n for n in members)  # the image cannot pick a config by name
    stored = [n for n, m in members.items() if n.endswith("/env.tar.gz") and m.isfile()]
    assert len(stored) == 1  # the environment is stored once, the other models hard-link it
    for model in (C.PREPROCESS, C.FUSION_HEAD, C.VIDEO_ENCODER, C.AUDIO_ENCODER):
        text = configs[f"{model}/config.pbtxt"]
        assert 'backend: "python"' in text  # the cpu profile's config, not the gpu default
        assert 'key: "EXECUTION_ENV_PATH"' in text and "$$TRITON_MODEL_DIRECTORY/env.tar.gz" in text
    assert "EXECUTION_ENV_PATH" not in configs[f"{C.ENSEMBLE}/config.pbtxt"]
    with tarfile.open(fileobj=io.BytesIO(env_bytes)) as env:
        names = set(env.getnames())
        manifest = json.loads(env.extractfile(E.MANIFEST).read())
        python_link = env.getmember(f"bin/python{STUB_PYTHON}")
    assert {"bin/activate", "bin/python3", "pyvenv.cfg"} <= names
    assert python_link.issym()
    assert manifest["python"] == STUB_PYTHON and manifest["lock"] == "models-py310.lock"
    packages = {k.lower().replace("_", "-") for k in manifest["packages"]}
    assert {"numpy", "scipy", "av", "onnxruntime", "opencv-python-headless"} <= packages
    # only what the models need: no front end, client, server or training stack
    assert not packages & {"fastapi", "uvicorn", "tritonclient", "boto3", "torch", "matplotlib", "nvidia-pytriton"}
    assert any(n.endswith("site-packages/fusion_emotion/core/video.py") for n in names)
    assert not any("/fusion_emotion/frontend/" in n or "/fusion_emotion/ops/" in n for n in names)


@pytest.fixture(scope="module")
def stock_server(stock_tarball: tuple[Path, E.Interpreter, dict], tmp_path_factory: pytest.TempPathFactory):
    """tritonserver started as the stock image's `serve` starts it, on the unpacked tarball."""
    from fusion_emotion.server.launcher import Bundle

    tarball, interp, _ = stock_tarball
    root = tmp_path_factory.mktemp("opt-ml")
    model_dir = root / "model"
    start = time.monotonic()
    with tarfile.open(tarball) as tar:
        tar.extractall(model_dir, filter="data")
    unpack_s = time.monotonic() - start
    bundle = Bundle.locate(STUB_PYTHON)
    port = free_port()
    # what `deploy` gives a model on the stock image (its CreateModel environment), then this host's needs
    deployed = dc.container_environment(
        dc.DeployConfig("s3://b/m.tar.gz", STOCK_IMAGE_URI, "arn:aws:iam::123456789012:role/r", "ep", profile="cpu")
    )
    env = {
        "HOME": str(root),
        "PATH": SYSTEM_PATH,
        # the image has libpython3.10 in the system library path; here it is the interpreter's LIBDIR
        "LD_LIBRARY_PATH": f"{bundle.libs}:{_libpython_dir(interp)}",
        **deployed,
        "SAGEMAKER_BIND_TO_PORT": str(port),
        # the image finds its backends in /opt/tritonserver/backends; the bundled binary needs them named,
        # and a private shm prefix keeps this server apart from others on a shared machine
        "SAGEMAKER_TRITON_ADDITIONAL_ARGS": f"{deployed['SAGEMAKER_TRITON_ADDITIONAL_ARGS']} "
        f"--backend-directory={bundle.backend_dir()} "
        f"--backend-config=python,shm-region-prefix-name=stock{uuid.uuid4().hex[:8]}_",
    }
    # the project's venv must be invisible: from the server's folder, with its environment, neither the
    # stub's interpreter nor PATH's python3 can import this package or numpy (the source tree is not the cwd)
    for python in (interp.path, "python3"):
        for module in ("fusion_emotion", "numpy"):
            probe = subprocess.run([python, "-c", f"import {module}"], env=env, cwd=root, capture_output=True)
            assert probe.returncode != 0, f"{python} imports {module} by itself: the test would not prove the env"
    cmd = stock_serve_command(str(bundle.binary), env, str(model_dir) + "/")
    log_path = root / "tritonserver.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    try:
        while True:
            assert proc.poll() is None, log_path.read_text(errors="replace")[-4000:]
            try:
                if httpx.get(base + "/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-4000:]
            time.sleep(0.5)
        print(f"\nunpacked in {unpack_s:.1f} s; /ping 200 after {time.monotonic() - start:.0f} s")
        yield base, log_path, log_path.read_text(errors="replace")  # the log as it was when /ping said ready
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(180)  # python_backend deletes its extracted environments on the way out
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _assert_close(got: dict, want: tuple[np.ndarray, np.ndarray]) -> None:
    probs = np.array([got[label] for label in C.LABELS], dtype=np.float64)
    qa = np.array([np.nan if got["qa_flags"][n] is None else got["qa_flags"][n] for n in C.QA_FLAG_NAMES])
    np.testing.assert_allclose(probs, want[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(qa, want[1], atol=1e-4, rtol=0)  # NaN (not available) on the same flags
    assert got["dominant_emotion"] == C.LABELS[int(np.argmax(want[0]))]


@pytest.mark.integration
@pytest.mark.parametrize("form", ["binary+json", "json"])
def test_stock_image_answers_like_the_reference(stock_server, reference, media: dict[str, bytes], form: str) -> None:
    base, log_path, _ = stock_server
    for video, audio in ((media["mp4"], media["wav"]), (media["mp4"], None), (None, media["wav"])):
        got = st.invoke_url(base, video, audio, timeout=600, form=form, binary_outputs=form == "binary+json")
        _assert_close(got, reference.predict(video, audio))
    log_text = log_path.read_text(errors="replace")
    # the models ran from the packed environment (the fixture checked that nothing else on this host can
    # import numpy or this package; deploy's environment keeps the stock script's verbose log off, so
    # python_backend's own "Extracting Python execution env" line is not printed): our modules' INFO lines,
    # routed into Triton's log, come from the packed copy
    assert "fusion_emotion.core.onnx_runtime: loaded model.onnx with OpenVINO CPU" in log_text
    # and the BLS-called encoders were loaded by the server at start, not by preprocess inside a request
    assert "not loaded by the server" not in log_text


@pytest.mark.integration
def test_stock_image_loads_every_model_before_it_answers_ping(stock_server) -> None:
    """Under the stock `serve` (explicit model control) with deploy's environment, the encoders load at
    start: a GPU instance would otherwise pay CUDA start-up, warm-up or a TensorRT build in the first request."""
    _, log_path, at_ping = stock_server
    for model in (C.PREPROCESS, C.VIDEO_ENCODER, C.AUDIO_ENCODER, C.FUSION_HEAD, C.ENSEMBLE):
        # namespaced, as the stock script serves: '<repository>::<model>'
        assert re.search(rf"successfully loaded '[^']*::{model}'", at_ping), model
    deployed = dc.container_environment(
        dc.DeployConfig("s3://b/m.tar.gz", STOCK_IMAGE_URI, "arn:aws:iam::123456789012:role/r", "ep", profile="cpu")
    )
    cmd = stock_serve_command(
        "tritonserver", {**deployed, "SAGEMAKER_BIND_TO_PORT": "8080"}, str(log_path.parent / "model") + "/"
    )
    assert "--log-verbose=false" in cmd  # the script's default is verbose
    assert cmd[-3:] == [
        f"--load-model={C.VIDEO_ENCODER}",
        f"--load-model={C.AUDIO_ENCODER}",
        f"--load-model={C.ENSEMBLE}",
    ]
    # our own image is left as it was: its supervisor loads every model itself
    ours = dc.container_environment(
        dc.DeployConfig("s3://b/m.tar.gz", "123.dkr.ecr/fusion-emotion:v1", "arn:aws:iam::123456789012:role/r", "ep")
    )
    assert not {"SAGEMAKER_TRITON_ADDITIONAL_ARGS", "SAGEMAKER_TRITON_LOG_VERBOSE"} & set(ours)


@pytest.mark.integration
def test_stock_image_bad_input_is_a_400(stock_server, media: dict[str, bytes]) -> None:
    base, _, _ = stock_server
    with pytest.raises(st.SageMakerTritonError) as info:
        st.invoke_url(base, media["garbage"], None, timeout=600)
    assert info.value.status == 400 and "video" in info.value.message
    assert httpx.get(base + "/ping", timeout=5).status_code == 200
