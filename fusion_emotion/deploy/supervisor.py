"""Container entrypoint logic: run tritonserver and the HTTP front end as one unit.

SageMaker runs ``docker run IMAGE serve`` and only talks to port 8080, so the
container must (1) start Triton on localhost, (2) wait until it is ready, (3)
start the front end, and (4) die as a whole when either half dies, so SageMaker
replaces the instance instead of serving 5xx forever. SIGTERM (endpoint update
or delete) stops the front end first, then Triton, within ``stop_timeout``.

Everything is configured by environment variables so the same code runs in the
image, locally and in tests (which swap the commands for stand-in scripts):

=================================  ==============================================
FUSION_EMOTION_MODEL_DIR           model repository (default /opt/ml/model)
FUSION_EMOTION_PROFILE             gpu (default), gpu_fp16, gpu_dali, cpu, cpu_dali or cpu_int8
FUSION_EMOTION_TRITONSERVER        tritonserver binary run by ``fusion-emotion triton``; unset: the bundled one
FUSION_EMOTION_GRPC_PORT           8001
FUSION_EMOTION_HTTP_PORT           8000 (also used for the readiness probe)
FUSION_EMOTION_METRICS_PORT        8002
SAGEMAKER_BIND_TO_PORT             front-end port (default 8080)
SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE / SAGEMAKER_TRITON_SHM_GROWTH_BYTE_SIZE
                                   Python-backend shm regions (1 MiB / 1 MiB: contract.py,
                                   checked against /dev/shm by ``fusion-emotion triton``)
FUSION_EMOTION_MAX_S3_OBJECT_BYTES unset: the largest input one decoder's shm region can
                                   carry in this /dev/shm (at most 100 MiB)
FUSION_EMOTION_TRITON_CMD          full Triton command (shlex), overrides the above
FUSION_EMOTION_FRONTEND_CMD        full front-end command (shlex)
FUSION_EMOTION_FRONTEND_TRITON_URL HOST:PORT given to ``serve --triton-url`` (gRPC)
FUSION_EMOTION_READY_URL           readiness URL (default Triton /v2/health/ready)
FUSION_EMOTION_STARTUP_TIMEOUT     seconds to wait for Triton ready (default: the profile's startup budget,
                                   deploy/config.py: 1800 for gpu_fp16, else 900; deploy sets it)
FUSION_EMOTION_STOP_TIMEOUT        seconds for a graceful stop (default 20)
=================================  ==============================================
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from fusion_emotion import contract as C
from fusion_emotion.deploy.config import ENV_PROFILE, ENV_STARTUP_TIMEOUT_S, STARTUP_BUDGET_S, startup_budget_s
from fusion_emotion.frontend.settings import SAGEMAKER_MAX_PAYLOAD_BYTES
from fusion_emotion.server import shm

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = "/opt/ml/model"
DEFAULT_FRONTEND_PORT = 8080
DEFAULT_GRPC_PORT = 8001
DEFAULT_HTTP_PORT = 8000
DEFAULT_METRICS_PORT = 8002
# Each Python-backend model instance fallocates a region of shm-default-byte-size that only grows:
# small regions, sized in contract.py (docs/reliability.md "Shared memory").
DEFAULT_SHM_BYTES = shm.SHM_REGION_BYTES
DEFAULT_SHM_GROWTH_BYTES = shm.SHM_GROWTH_BYTES
# SageMaker (and docker stop) send SIGKILL 30 s after SIGTERM; stay well inside.
DEFAULT_STOP_TIMEOUT_S = 20.0
POLL_INTERVAL_S = 0.2


@dataclass
class ChildSpec:
    """One supervised process."""

    name: str
    argv: list[str]
    env: dict[str, str] | None = None


@dataclass
class ServeConfig:
    triton: ChildSpec
    frontend: ChildSpec
    ready_url: str
    startup_timeout_s: float = float(STARTUP_BUDGET_S)
    stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S
    extra: dict[str, str] = field(default_factory=dict)


_N = TypeVar("_N", int, float)


def _number_env(env: Mapping[str, str], name: str, default: _N, parse: Callable[[str], _N] = int) -> _N:
    """``env[name]`` read with ``parse`` (int, or float for timeouts); ``default`` when unset or blank."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return parse(raw)
    except ValueError:
        what = "an integer" if parse is int else "a number"
        raise ValueError(f"{name} must be {what}, got {raw!r}") from None


def triton_command(env: Mapping[str, str]) -> list[str]:
    """The Triton command: ``fusion-emotion triton`` with the container's settings."""
    if env.get("FUSION_EMOTION_TRITON_CMD"):
        return shlex.split(env["FUSION_EMOTION_TRITON_CMD"])
    model_dir = env.get("FUSION_EMOTION_MODEL_DIR") or DEFAULT_MODEL_DIR
    profile = _profile(env)
    grpc = _number_env(env, "FUSION_EMOTION_GRPC_PORT", DEFAULT_GRPC_PORT)
    http = _number_env(env, "FUSION_EMOTION_HTTP_PORT", DEFAULT_HTTP_PORT)
    metrics = _number_env(env, "FUSION_EMOTION_METRICS_PORT", DEFAULT_METRICS_PORT)
    shm = _number_env(env, "SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE", DEFAULT_SHM_BYTES)
    growth = _number_env(env, "SAGEMAKER_TRITON_SHM_GROWTH_BYTE_SIZE", DEFAULT_SHM_GROWTH_BYTES)
    # Always through `fusion-emotion triton`: it runs $FUSION_EMOTION_TRITONSERVER when set
    # (the image's binary) or the bundled one, on 127.0.0.1, and restarts tritonserver
    # when a Python-backend stub dies (Triton 2.51 would keep failing that instance).
    return [
        sys.executable, "-m", "fusion_emotion.cli", "triton",
        "--repository", model_dir, "--profile", profile,
        "--grpc-port", str(grpc), "--http-port", str(http), "--metrics-port", str(metrics),
        "--shm-default-bytes", str(shm), "--shm-growth-bytes", str(growth),
    ]  # fmt: skip


def frontend_command(env: Mapping[str, str]) -> list[str]:
    if env.get("FUSION_EMOTION_FRONTEND_CMD"):
        return shlex.split(env["FUSION_EMOTION_FRONTEND_CMD"])
    port = _number_env(env, "SAGEMAKER_BIND_TO_PORT", DEFAULT_FRONTEND_PORT)
    grpc = _number_env(env, "FUSION_EMOTION_GRPC_PORT", DEFAULT_GRPC_PORT)
    triton_url = env.get("FUSION_EMOTION_FRONTEND_TRITON_URL") or f"127.0.0.1:{grpc}"
    cmd = [sys.executable, "-m", "fusion_emotion.cli", "serve", "--triton-url", triton_url, "--port", str(port)]
    limit = shm_s3_limit(env)
    if not env.get("FUSION_EMOTION_MAX_S3_OBJECT_BYTES", "").strip() and limit is not None:
        cmd += ["--max-s3-object-bytes", str(limit)]
    # A body's inputs sit in one decoder's shm region too: an async-sized body limit (201 MiB) on a small
    # /dev/shm would reach Triton and fail there (503); the front end refuses it first with a 413 naming the limit.
    body = _number_env(env, "FUSION_EMOTION_MAX_BODY_BYTES", SAGEMAKER_MAX_PAYLOAD_BYTES)
    if limit is not None and limit < C.MAX_INPUT_BYTES and body > limit:
        log.warning(
            "request bodies limited to %.1f MiB (asked %.1f MiB): that is what this /dev/shm carries per decoder; "
            "give the container more shared memory (docs/reliability.md, 'Shared memory')",
            limit / 2**20,
            body / 2**20,
        )
        cmd += ["--max-body-bytes", str(limit)]
    return cmd


def shm_s3_limit(env: Mapping[str, str], dev_shm: str = "/dev/shm") -> int | None:
    """The S3 object limit this container's /dev/shm carries per decoder (None: not known here).

    Triton and the front end share the container's /dev/shm; an object over this limit would fail in the
    Python backend, so the front end refuses it first with a 413 naming the limit.
    """
    model_dir = Path(env.get("FUSION_EMOTION_MODEL_DIR") or DEFAULT_MODEL_DIR)
    profile = _profile(env)
    region = _number_env(env, "SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE", DEFAULT_SHM_BYTES)
    try:
        plan = shm.plan_shm(model_dir, profile, shm.dev_shm_size(Path(dev_shm)), region)
    except OSError:
        return None
    if plan.decoders == 0:
        return None
    return max(plan.input_limit_bytes, 1)


def _profile(env: Mapping[str, str]) -> str:
    return env.get(ENV_PROFILE) or "gpu"


def config_from_env(env: Mapping[str, str] | None = None) -> ServeConfig:
    """Build the whole serving configuration from environment variables."""
    env = dict(os.environ if env is None else env)
    http = _number_env(env, "FUSION_EMOTION_HTTP_PORT", DEFAULT_HTTP_PORT)
    return ServeConfig(
        triton=ChildSpec("tritonserver", triton_command(env)),
        frontend=ChildSpec("frontend", frontend_command(env)),
        ready_url=env.get("FUSION_EMOTION_READY_URL") or f"http://127.0.0.1:{http}/v2/health/ready",
        startup_timeout_s=_number_env(env, ENV_STARTUP_TIMEOUT_S, float(startup_budget_s(_profile(env))), float),
        stop_timeout_s=_number_env(env, "FUSION_EMOTION_STOP_TIMEOUT", DEFAULT_STOP_TIMEOUT_S, float),
    )


def http_ready(url: str, timeout: float = 2.0) -> bool:
    """True when ``url`` answers 200 (Triton's /v2/health/ready)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - localhost probe
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class _Child:
    """A Popen plus an exit status that survives PID-1 orphan reaping."""

    def __init__(self, spec: ChildSpec, reaped: dict[int, int]) -> None:
        self.spec = spec
        self._reaped = reaped
        env = {**os.environ, **spec.env} if spec.env else None
        log.info("starting %s: %s", spec.name, shlex.join(spec.argv))
        # Own session: a SIGKILL fallback can take the whole tree (tritonserver's stubs included).
        self.popen = subprocess.Popen(spec.argv, env=env, start_new_session=True)  # noqa: S603

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        if self.pid in self._reaped:
            self.popen.returncode = self._reaped[self.pid]
            return self.popen.returncode
        return self.popen.poll()

    def signal(self, sig: int, group: bool = False) -> None:
        if self.poll() is not None and not group:
            return
        try:
            if group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _status_to_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


class Supervisor:
    """Start Triton, wait for it, start the front end, then watch both."""

    def __init__(self, config: ServeConfig, reap_orphans: bool | None = None) -> None:
        self.config = config
        self.reap_orphans = os.getpid() == 1 if reap_orphans is None else reap_orphans
        self._stop = threading.Event()
        self._reaped: dict[int, int] = {}
        self.children: list[_Child] = []
        self.stop_reason: str | None = None

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the supervisor to stop both children (also what the signal handlers call)."""
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: self.request_stop(signal.Signals(signum).name))

    def _reap(self) -> None:
        """As PID 1, collect orphaned grandchildren too (no tini in the image), keeping our children's status."""
        if not self.reap_orphans:
            return
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if any(c.pid == pid for c in self.children):
                self._reaped[pid] = _status_to_code(status)

    def _exited(self) -> _Child | None:
        self._reap()
        for child in self.children:
            if child.poll() is not None:
                return child
        return None

    def _wait_ready(self, triton: _Child) -> bool:
        deadline = time.monotonic() + self.config.startup_timeout_s
        while not self._stop.is_set():
            if self._exited() is not None:
                return False
            if http_ready(self.config.ready_url):
                log.info("tritonserver ready (%s)", self.config.ready_url)
                return True
            if time.monotonic() > deadline:
                log.error("tritonserver not ready after %.0fs", self.config.startup_timeout_s)
                self.request_stop("startup timeout")
                return False
            self._stop.wait(0.5)
        return False

    def _stop_children(self) -> None:
        """SIGTERM front end, then Triton (in-flight requests still reach it); SIGKILL what outlives the budget."""
        deadline = time.monotonic() + self.config.stop_timeout_s
        order = list(reversed(self.children))  # front end first
        for i, child in enumerate(order):
            if child.poll() is None:
                log.info("stopping %s (pid %d)", child.spec.name, child.pid)
                child.signal(signal.SIGTERM)
            now = time.monotonic()
            # Earlier children get half of what is left, the last one the rest.
            until = deadline if i == len(order) - 1 else now + (deadline - now) / 2
            while child.poll() is None and time.monotonic() < until:
                self._reap()
                time.sleep(POLL_INTERVAL_S)
        for child in self.children:
            if child.poll() is None:
                log.warning("%s did not stop in time, killing", child.spec.name)
                child.signal(signal.SIGKILL, group=True)
                try:
                    child.popen.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    log.error("%s (pid %d) survived SIGKILL", child.spec.name, child.pid)
            else:
                child.signal(signal.SIGKILL, group=True)  # leftovers of its process group, if any
        self._reap()

    def run(self) -> int:
        """Supervise until a child exits (non-zero return) or a stop is requested (0 if clean)."""
        failed: _Child | None = None
        try:
            triton = _Child(self.config.triton, self._reaped)
            self.children.append(triton)
            if self._wait_ready(triton):
                self.children.append(_Child(self.config.frontend, self._reaped))
                log.info("serving; pids %s", [c.pid for c in self.children])
                while not self._stop.is_set():
                    failed = self._exited()
                    if failed is not None:
                        break
                    self._stop.wait(POLL_INTERVAL_S)
            else:
                failed = self._exited()
        finally:
            if failed is not None:
                log.error("%s exited with status %s; stopping the rest", failed.spec.name, failed.poll())
            elif self.stop_reason:
                log.info("%s: shutting down", self.stop_reason)
            self._stop_children()
        if failed is not None:
            code = failed.poll()
            return code if code is not None and code > 0 else 1
        return 1 if self.stop_reason == "startup timeout" else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of docker/serve. Accepts (and ignores) a leading ``serve`` argument, as SageMaker passes it."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "serve":
        args = args[1:]
    if args:
        sys.stderr.write(f"usage: serve  (configured by environment variables; unexpected {args})\n")
        return 2
    logging.basicConfig(
        level=os.environ.get("FUSION_EMOTION_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s serve: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = config_from_env()
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    supervisor = Supervisor(config)
    supervisor.install_signal_handlers()
    return supervisor.run()
