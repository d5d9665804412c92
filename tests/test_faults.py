"""Fault injection on real processes: tritonserver SIGKILLed under load, a Python-backend stub
killed mid-request, the container entrypoint losing Triton for good, per-request deadlines.

Every test starts its own tritonserver (never the session one) on free loopback ports
and bounds every wait; nothing here asserts on speed, only on how long an error
answer or a recovery may take before it counts as a hang.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import free_port, http_ready
from test_frontend import assert_result, multipart, run_frontend

from fusion_emotion import contract as C
from fusion_emotion.frontend.settings import Settings
from fusion_emotion.server import procs
from fusion_emotion.server.launcher import die_with_parent

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
SERVE = ROOT / "docker" / "serve"
ERROR_ANSWER_BOUND_S = 5.0  # an error answer slower than this counts as a hang
PING_BOUND_S = 2.0
START_TIMEOUT_S = 240.0


# --------------------------------------------------------------------------- process helpers
def _cmdline(pid: int) -> str:
    return " ".join(procs.cmdline(pid))


def descendants(root: int) -> list[int]:
    """All live descendants of ``root`` (tritonserver runs in its own session, so walk ppids)."""
    return [p.pid for p in procs.descendants(root)]


def tritonserver_pid(root: int) -> int:
    pids = [p.pid for p in procs.descendants(root) if procs.is_tritonserver(p)]
    assert len(pids) == 1, [(p, _cmdline(p)[:120]) for p in descendants(root)]
    return pids[0]


def stub_pids(root: int, model: str) -> list[int]:
    return [pid for pid, name in procs.stubs(root).items() if name == model]


@dataclass
class PrivateTriton:
    """``fusion-emotion triton`` on fixed ports, so it can be restarted where the front end expects it."""

    repository: Path
    log_path: Path
    grpc_port: int
    http_port: int
    metrics_port: int
    proc: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "fusion_emotion.cli", "triton", "--repository", str(self.repository),
            "--profile", "cpu", "--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port),
            "--metrics-port", str(self.metrics_port),
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(os.getpid()),
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not http_ready(f"http://127.0.0.1:{self.http_port}/v2/health/ready"):
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited ({self.proc.returncode}):\n{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(self.log_text()[-3000:])
            time.sleep(0.3)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        leftovers = descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in leftovers:  # only processes this handle started
            if procs.alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def private_triton(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateTriton]:
    """One private server for the module (tests run in file order: the kill test restarts it,
    the stub-crash test, which leaves a dead stub behind, comes last)."""
    log = tmp_path_factory.mktemp("faults") / "triton.log"
    handle = PrivateTriton(demo_repository, log, free_port(), free_port(), free_port())
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()


def _post(base: str, media: dict[str, bytes], timeout: float = 120) -> tuple[int, float, float]:
    """-> (status, start, end) in time.monotonic(); transport errors are status 0."""
    t0 = time.monotonic()
    try:
        resp = httpx.post(
            base + "/invocations",
            **multipart(video_file=("v.mp4", media["mp4"]), audio_file=("a.wav", media["wav"])),
            timeout=timeout,
        )
        status = resp.status_code
        if status == 200:
            assert_result(resp.json())
    except httpx.HTTPError:
        status = 0
    return status, t0, time.monotonic()


# --------------------------------------------------------------------------- tritonserver killed
@pytest.mark.timeout(900)
def test_triton_sigkill_under_load_then_recovery(private_triton: PrivateTriton, media: dict[str, bytes]) -> None:
    settings = Settings(triton_url=private_triton.grpc_url, request_timeout_s=60)
    with run_frontend(settings) as base:
        assert httpx.get(base + "/ping", timeout=5).status_code == 200
        assert _post(base, media)[0] == 200

        stop = threading.Event()
        results: list[tuple[int, float, float]] = []

        def load() -> None:
            while not stop.is_set():
                results.append(_post(base, media))

        workers = [threading.Thread(target=load, daemon=True) for _ in range(6)]
        for w in workers:
            w.start()
        time.sleep(3.0)  # requests in flight, some queued in Triton
        killed_at = time.monotonic()
        os.kill(tritonserver_pid(private_triton.proc.pid), signal.SIGKILL)

        # /ping turns 503 within 2 s
        t0 = time.monotonic()
        ping = httpx.get(base + "/ping", timeout=10)
        assert ping.status_code == 503 and time.monotonic() - t0 < PING_BOUND_S
        time.sleep(2.0)
        stop.set()
        for w in workers:
            w.join(ERROR_ANSWER_BOUND_S + 60)
        # in flight at the kill: answered (200 if it finished before, else 503) within the bound
        in_flight = [r for r in results if r[1] < killed_at < r[2]]
        after = [r for r in results if r[1] >= killed_at]
        assert in_flight and after, results
        for status, _start, end in in_flight:
            assert status in (200, 503), (status, end - killed_at)
            if status == 503:
                assert end - killed_at < ERROR_ANSWER_BOUND_S
        for status, start, end in after:
            assert status == 503 and end - start < ERROR_ANSWER_BOUND_S, (status, end - start)
        # the wrapper (`fusion-emotion triton`) exits with tritonserver and takes the stubs along
        assert private_triton.proc.wait(30) != 0
        assert not descendants(private_triton.proc.pid)

        # Triton back on the same ports: the front end reconnects by itself
        private_triton.start()
        deadline = time.monotonic() + 60
        while httpx.get(base + "/ping", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "front end did not see Triton come back"
            time.sleep(0.5)
        for _ in range(3):
            assert _post(base, media)[0] == 200
    print(f"sigkill: {len(in_flight)} in flight, {len(after)} after; all answered")


# --------------------------------------------------------------------------- deadlines
@pytest.mark.timeout(600)
def test_deadline_enforced_end_to_end(private_triton: PrivateTriton, media: dict[str, bytes]) -> None:
    """A front-end timeout shorter than the work: 504 at about the deadline, Triton unharmed."""
    settings = Settings(triton_url=private_triton.grpc_url, request_timeout_s=0.2)
    with run_frontend(settings) as base:
        status, start, end = _post(base, media)
        assert status == 504 and end - start < 0.2 + ERROR_ANSWER_BOUND_S
    with run_frontend(Settings(triton_url=private_triton.grpc_url, request_timeout_s=120)) as base:
        assert _post(base, media)[0] == 200
        assert httpx.get(base + "/ping", timeout=5).status_code == 200


@pytest.mark.timeout(600)
def test_client_disconnect_cancels_inference(
    private_triton: PrivateTriton, media: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """Clients that give up: the front end cancels their Triton calls and logs it; service unharmed."""
    import logging

    caplog.set_level(logging.INFO, logger="fusion_emotion.frontend")
    with run_frontend(Settings(triton_url=private_triton.grpc_url, request_timeout_s=120)) as base:

        def give_up(_: int) -> str:
            try:
                httpx.post(
                    base + "/invocations",
                    **multipart(video_file=("v.mp4", media["mp4"]), audio_file=("a.wav", media["wav"])),
                    timeout=httpx.Timeout(10, read=0.3),
                )
                return "answered"
            except httpx.ReadTimeout:
                return "gave up"

        with ThreadPoolExecutor(6) as pool:
            outcomes = list(pool.map(give_up, range(6)))
        gave_up = outcomes.count("gave up")
        assert gave_up > 0, outcomes

        def cancelled() -> int:
            return sum("client disconnected; inference cancelled" in r.getMessage() for r in caplog.records)

        deadline = time.monotonic() + 10
        while cancelled() < gave_up:
            assert time.monotonic() < deadline, (cancelled(), outcomes)
            time.sleep(0.1)
        assert _post(base, media)[0] == 200
        assert httpx.get(base + "/ping", timeout=5).status_code == 200
    print(f"disconnect: {gave_up} clients gave up, {cancelled()} inferences cancelled")


# --------------------------------------------------------------------------- a stub crashes
@pytest.mark.timeout(900)
def test_preprocess_stub_crash_affects_only_its_requests_then_recovers(
    private_triton: PrivateTriton, media: dict[str, bytes], reference: Any
) -> None:
    """Kill -9 one preprocess stub (of four) while requests are in flight.

    Triton 2.51's Python backend (the nvidia-pytriton bundle) keeps a dead stub's
    instance and answers every request given to it with INTERNAL "Stub process
    'preprocess_0_N' is not healthy", forever. `fusion-emotion triton` watches the
    stubs and reloads the dead stub's model in place, or restarts tritonserver if
    the reload stalls (docs/reliability.md). So: no hang, no wrong answer, failures
    only from the dead instance before recovery, and the service is whole again by itself.
    """
    import re

    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from fusion_emotion.tensors import build_inputs, parse_result, requested_outputs

    want = reference.predict(media["mp4"], media["wav"])[0]
    stubs = stub_pids(private_triton.proc.pid, C.PREPROCESS)
    assert len(stubs) >= 2, stubs

    def call(_: int) -> str:
        client = grpcclient.InferenceServerClient(private_triton.grpc_url)
        try:
            result = client.infer(
                C.ENSEMBLE,
                build_inputs(media["mp4"], media["wav"], grpcclient),
                outputs=requested_outputs(grpcclient),
                client_timeout=120,
            )
            np.testing.assert_allclose(parse_result(result)[0], want, atol=1e-4)
            return "ok"
        except InferenceServerException as exc:
            return f"{exc.status()}: {exc.message()[:200]}"
        finally:
            client.close()

    victim = stubs[0]
    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(call, i) for i in range(16)]
        time.sleep(1.5)
        os.kill(victim, signal.SIGKILL)
        outcomes = [f.result(timeout=300) for f in futures]
    failed = [o for o in outcomes if o != "ok"]
    print(f"stub kill: {len(outcomes) - len(failed)} ok, {len(failed)} failed in {time.monotonic() - t0:.1f} s")
    instances = set()
    restart_failures = []
    for o in failed:
        m = re.search(r"Stub process '(preprocess_\d+_\d+)' is not healthy", o)
        if m:
            assert o.startswith("StatusCode.INTERNAL"), o
            instances.add(m.group(1))
        else:
            restart_failures.append(o)
    assert len(instances) <= 1, instances  # only the killed instance's requests fail

    deadline = time.monotonic() + 180
    while True:  # the launcher replaces the dead stub (model reload, or a server restart if that stalls)
        now = stub_pids(private_triton.proc.pid, C.PREPROCESS)
        if (
            victim not in now
            and len(now) >= len(stubs)
            and http_ready(f"http://127.0.0.1:{private_triton.http_port}/v2/health/ready")
        ):
            break
        assert time.monotonic() < deadline, private_triton.log_text()[-3000:]
        time.sleep(0.5)
    text = private_triton.log_text()
    assert "died while tritonserver kept running" in text
    if restart_failures:  # other failures only while the fallback restart replaced the server
        assert "restarting tritonserver" in text, restart_failures
        assert all("UNAVAILABLE" in o or "not ready" in o for o in restart_failures), restart_failures
    print("recovered by", "restart" if "restarting tritonserver" in text else "in-place reload")
    assert [call(i) for i in range(8)] == ["ok"] * 8
    assert private_triton.proc.poll() is None  # the launcher itself kept running


# --------------------------------------------------------------------------- container entrypoint
@pytest.mark.timeout(600)
def test_serve_exits_nonzero_when_triton_dies(demo_repository: Path, tmp_path: Path, media: dict[str, bytes]) -> None:
    """docker/serve with the real `fusion-emotion triton` + `fusion-emotion serve`: SIGKILL tritonserver -> exit != 0."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FUSION_EMOTION_MODEL_DIR": str(demo_repository),
        "FUSION_EMOTION_PROFILE": "cpu",
        "FUSION_EMOTION_GRPC_PORT": str(free_port()),
        "FUSION_EMOTION_HTTP_PORT": str(free_port()),
        "FUSION_EMOTION_METRICS_PORT": str(free_port()),
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "FUSION_EMOTION_HOST": "127.0.0.1",
        "FUSION_EMOTION_STARTUP_TIMEOUT": str(START_TIMEOUT_S),
        "FUSION_EMOTION_STOP_TIMEOUT": "10",
    }
    env.pop("FUSION_EMOTION_TRITONSERVER", None)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(SERVE), "serve"], env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    family: list[int] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT_S + 60
        while not http_ready(base + "/ping", timeout=2):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        assert _post(base, media)[0] == 200
        family = descendants(proc.pid)
        os.kill(tritonserver_pid(proc.pid), signal.SIGKILL)
        code = proc.wait(60)
        assert code != 0, log.read_text()[-3000:]
        time.sleep(0.5)
        assert not [p for p in family if procs.alive(p)], [(p, _cmdline(p)[:100]) for p in family if procs.alive(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in family:
            if procs.alive(pid):
                os.kill(pid, signal.SIGKILL)
