"""docker/serve supervision with real child processes standing in for tritonserver and the front end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fusion_emotion import contract as C
from fusion_emotion.deploy import supervisor as sv
from fusion_emotion.server import shm
from fusion_emotion.server.procs import alive, free_port
from fusion_emotion.server.shm import dev_shm_size, plan_shm

ROOT = Path(__file__).resolve().parents[1]
SERVE = ROOT / "docker" / "serve"

# One stand-in for both servers: optional readiness HTTP server, optional exit after
# a delay, SIGTERM handling (exit 0 after a short drain, or ignore it).
STANDIN = r"""
import http.server, os, signal, sys, threading, time
name, pidfile, port, exit_after, on_term = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
open(pidfile, "w").write(str(os.getpid()))
def term(signum, frame):
    if on_term == "ignore":
        print(name, "ignoring SIGTERM", flush=True)
        return
    time.sleep(0.3)  # drain
    open(pidfile + ".term", "w").write("graceful")
    os._exit(0)
signal.signal(signal.SIGTERM, term)
if port:
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/v2/health/ready" else 404)
            self.end_headers()
        def log_message(self, *a):
            pass
    srv = http.server.HTTPServer(("127.0.0.1", port), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
start = time.monotonic()
while True:
    if exit_after >= 0 and time.monotonic() - start > exit_after:
        print(name, "exiting with 3", flush=True)
        sys.exit(3)
    time.sleep(0.05)
"""


def _wait_for(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture()
def standin(tmp_path: Path) -> Path:
    script = tmp_path / "standin.py"
    script.write_text(STANDIN)
    return script


def _serve_env(standin: Path, tmp_path: Path, *, triton_exit: float = -1, frontend_exit: float = -1,
               frontend_term: str = "exit", stop_timeout: float = 20) -> tuple[dict[str, str], Path, Path]:  # fmt: skip
    port = free_port()
    tpid, fpid = tmp_path / "triton.pid", tmp_path / "frontend.pid"
    py = sys.executable
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FUSION_EMOTION_TRITON_CMD": f"{py} {standin} triton {tpid} {port} {triton_exit} exit",
        "FUSION_EMOTION_FRONTEND_CMD": f"{py} {standin} frontend {fpid} 0 {frontend_exit} {frontend_term}",
        "FUSION_EMOTION_READY_URL": f"http://127.0.0.1:{port}/v2/health/ready",
        "FUSION_EMOTION_STARTUP_TIMEOUT": "30",
        "FUSION_EMOTION_STOP_TIMEOUT": str(stop_timeout),
    }
    return env, tpid, fpid


def _start_serve(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(SERVE), "serve"], env=env)


@pytest.mark.timeout(60)
def test_sigterm_stops_both_gracefully(standin: Path, tmp_path: Path) -> None:
    env, tpid, fpid = _serve_env(standin, tmp_path)
    proc = _start_serve(env)
    try:
        _wait_for(tpid)
        _wait_for(fpid)  # front end only starts once the Triton stand-in answers ready
        pids = int(tpid.read_text()), int(fpid.read_text())
        assert all(alive(p) for p in pids)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=25) == 0
        assert time.monotonic() - t0 < 25
    finally:
        proc.kill()
    assert not any(alive(p) for p in pids)
    assert Path(f"{tpid}.term").read_text() == "graceful" and Path(f"{fpid}.term").read_text() == "graceful"


@pytest.mark.timeout(60)
def test_frontend_exit_stops_triton_and_fails(standin: Path, tmp_path: Path) -> None:
    env, tpid, fpid = _serve_env(standin, tmp_path, frontend_exit=1.0)
    proc = _start_serve(env)
    try:
        assert proc.wait(timeout=30) == 3
    finally:
        proc.kill()
    assert not alive(int(tpid.read_text()))
    assert Path(f"{tpid}.term").read_text() == "graceful"


@pytest.mark.timeout(60)
def test_triton_exit_stops_frontend_and_fails(standin: Path, tmp_path: Path) -> None:
    env, tpid, fpid = _serve_env(standin, tmp_path, triton_exit=2.0)
    proc = _start_serve(env)
    try:
        _wait_for(fpid)
        assert proc.wait(timeout=30) != 0
    finally:
        proc.kill()
    assert not alive(int(fpid.read_text()))


@pytest.mark.timeout(60)
def test_triton_dying_before_ready_fails_without_starting_frontend(standin: Path, tmp_path: Path) -> None:
    env, tpid, fpid = _serve_env(standin, tmp_path)
    env["FUSION_EMOTION_READY_URL"] = f"http://127.0.0.1:{free_port()}/v2/health/ready"  # never ready
    env["FUSION_EMOTION_TRITON_CMD"] = f"{sys.executable} {standin} triton {tpid} 0 0.5 exit"
    proc = _start_serve(env)
    try:
        assert proc.wait(timeout=30) == 3
    finally:
        proc.kill()
    assert not fpid.exists()


@pytest.mark.timeout(60)
def test_stuck_child_is_killed_within_the_budget(standin: Path, tmp_path: Path) -> None:
    env, tpid, fpid = _serve_env(standin, tmp_path, frontend_term="ignore", stop_timeout=3)
    proc = _start_serve(env)
    try:
        _wait_for(fpid)
        pids = int(tpid.read_text()), int(fpid.read_text())
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert time.monotonic() - t0 < 3 + 6  # stop budget + SIGKILL wait slack
    finally:
        proc.kill()
    assert not any(alive(p) for p in pids)


def test_startup_timeout_fails(standin: Path, tmp_path: Path) -> None:
    env, tpid, fpid = _serve_env(standin, tmp_path)
    config = sv.config_from_env(
        {
            **env,
            "FUSION_EMOTION_READY_URL": f"http://127.0.0.1:{free_port()}/",
            "FUSION_EMOTION_STARTUP_TIMEOUT": "1",
            "FUSION_EMOTION_STOP_TIMEOUT": "5",
        }
    )
    assert sv.Supervisor(config, reap_orphans=False).run() == 1
    assert not fpid.exists()
    assert not alive(int(tpid.read_text()))


def test_commands_from_environment() -> None:
    base = {"FUSION_EMOTION_MODEL_DIR": "/models", "FUSION_EMOTION_GRPC_PORT": "9001"}
    cli = sv.triton_command(base)
    assert cli[1:4] == ["-m", "fusion_emotion.cli", "triton"]
    assert cli[cli.index("--repository") + 1] == "/models" and cli[cli.index("--profile") + 1] == "gpu"
    assert cli[cli.index("--grpc-port") + 1] == "9001"

    assert cli[cli.index("--shm-default-bytes") + 1] == "1048576"
    assert cli[cli.index("--shm-growth-bytes") + 1] == "1048576"
    sized = sv.triton_command(
        {**base, "SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE": "33554432", "FUSION_EMOTION_PROFILE": "cpu"}
    )
    assert sized[sized.index("--shm-default-bytes") + 1] == "33554432"
    assert sized[sized.index("--profile") + 1] == "cpu"

    front = sv.frontend_command({**base, "SAGEMAKER_BIND_TO_PORT": "9090"})
    assert front[front.index("--port") + 1] == "9090"
    assert front[front.index("--triton-url") + 1] == "127.0.0.1:9001"
    assert "--max-s3-object-bytes" not in front  # no repository at /models: nothing to size from
    assert sv.frontend_command({"FUSION_EMOTION_FRONTEND_CMD": "a 'b c'"}) == ["a", "b c"]
    with pytest.raises(ValueError, match="FUSION_EMOTION_GRPC_PORT"):
        sv.triton_command({"FUSION_EMOTION_GRPC_PORT": "x"})


def test_serve_rejects_unknown_arguments() -> None:
    assert sv.main(["serve", "--bogus"]) == 2


def test_s3_limit_follows_dev_shm(demo_repository: Path) -> None:
    """In the container the front end refuses S3 objects the Python backend's shm regions cannot carry."""
    env = {"FUSION_EMOTION_MODEL_DIR": str(demo_repository), "FUSION_EMOTION_PROFILE": "cpu"}
    front = sv.frontend_command(env)
    limit = int(front[front.index("--max-s3-object-bytes") + 1])
    plan = plan_shm(demo_repository, "cpu", dev_shm_size())
    assert limit == max(plan.input_limit_bytes, 1) and 0 < limit <= C.MAX_INPUT_BYTES
    assert "--max-s3-object-bytes" not in sv.frontend_command({**env, "FUSION_EMOTION_MAX_S3_OBJECT_BYTES": "5"})


def test_body_limit_capped_by_a_small_dev_shm(demo_repository: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An async-sized body limit on a 64 MiB /dev/shm is cut to what one decoder's region carries (413 there)."""
    monkeypatch.setattr(shm, "dev_shm_size", lambda *a, **k: shm.SHM_DEFAULT_DEV_SHM_BYTES)
    env = {"FUSION_EMOTION_MODEL_DIR": str(demo_repository), "FUSION_EMOTION_PROFILE": "cpu"}
    plan = plan_shm(demo_repository, "cpu", shm.SHM_DEFAULT_DEV_SHM_BYTES)
    assert 0 < plan.input_limit_bytes < C.MAX_INPUT_BYTES
    front = sv.frontend_command({**env, "FUSION_EMOTION_MAX_BODY_BYTES": str(201 * 2**20)})
    assert int(front[front.index("--max-body-bytes") + 1]) == plan.input_limit_bytes
    assert int(front[front.index("--max-s3-object-bytes") + 1]) == plan.input_limit_bytes
    # the real-time 6 MiB limit fits: left alone
    assert "--max-body-bytes" not in sv.frontend_command(env)
