"""Run a real tritonserver on a model repository: ``fusion-emotion triton``.

Locally the server is the one bundled in the ``nvidia-pytriton`` wheel (Triton
2.51, Python backend only). Its Python-backend stub has to sit next to
``libtriton_python.so``, find ``libpython3.X.so`` and this environment's
site-packages; this module prepares a backend directory once and starts the
server with that environment. ``FUSION_EMOTION_TRITONSERVER`` points at another
binary (e.g. ``/opt/tritonserver/bin/tritonserver`` in NVIDIA's image), which is
then used as is.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fusion_emotion.arguments import field_args
from fusion_emotion.repository import check_servable
from fusion_emotion.server import procs, shm
from fusion_emotion.server.watchdog import watch

log = logging.getLogger(__name__)

# cpu_int8 exists once `fusion-emotion quantize` has written it into a repository.
PROFILE_CONFIG_NAME = {
    "gpu": None,
    "cpu": "cpu",
    "gpu_fp16": "gpu_fp16",
    "cpu_int8": "cpu_int8",
    "cpu_dali": "cpu_dali",
    "gpu_dali": "gpu_dali",
}
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class Bundle:
    """Paths of the tritonserver shipped in the nvidia-pytriton wheel."""

    binary: Path
    libs: Path
    python_backend: Path
    stub: Path

    @classmethod
    def locate(cls, python_version: str | None = None) -> Bundle:
        """The bundle with the stub for ``python_version`` ("3.10"; default: this interpreter's).

        Another version's stub serves a packed execution environment of that version
        (``fusion-emotion package --target sagemaker-triton``), as in the stock image.
        """
        try:
            import pytriton  # optional: [triton] (the bundled tritonserver; a server elsewhere needs none)
        except ImportError as exc:
            raise RuntimeError("nvidia-pytriton is not installed: run `make setup`") from exc
        root = Path(pytriton.__file__).resolve().parent / "tritonserver"
        version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
        bundle = cls(
            binary=root / "bin" / "tritonserver",
            libs=root.parent.parent / "nvidia_pytriton.libs",
            python_backend=root / "backends" / "python",
            stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        )
        for path in (bundle.binary, bundle.libs, bundle.python_backend, bundle.stub):
            if not path.exists():
                raise RuntimeError(f"bundled tritonserver incomplete: {path} missing")
        return bundle

    def backend_dir(self) -> Path:
        """A backends/ directory with the stub beside libtriton_python.so (prepared once)."""
        cache = Path(os.environ.get("FUSION_EMOTION_CACHE", Path(sys.prefix) / "share" / "fusion-emotion"))
        target = cache / f"backends-py{self.stub.parent.name.replace('.', '')}"
        python_dir = target / "python"
        wanted = {p.name: p for p in self.python_backend.iterdir() if p.is_file()}
        wanted[self.stub.name] = self.stub
        if all(
            (python_dir / n).is_file() and (python_dir / n).stat().st_size == p.stat().st_size
            for n, p in wanted.items()
        ):
            return target
        staging = cache / f".backends-{uuid.uuid4().hex}"
        (staging / "python").mkdir(parents=True)
        for name, src in wanted.items():
            shutil.copy2(src, staging / "python" / name)
        shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:  # another process prepared it at the same time
            shutil.rmtree(staging, ignore_errors=True)
        return target


def server_env(bundle: Bundle | None) -> dict[str, str]:
    env = dict(os.environ)
    if bundle is not None:
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(bundle.libs), libdir, env.get("LD_LIBRARY_PATH", "")) if p
        )
        # The stub's embedded interpreter finds its prefix from `python3` on PATH: put
        # this environment first so the stub imports this venv's packages (numpy < 2).
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    return env


@dataclass
class ServerOptions:
    repository: Path
    profile: str = "cpu"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    extra_args: list[str] = field(default_factory=list)
    log_verbose: int = 0
    shm_default_bytes: int = shm.SHM_REGION_BYTES
    shm_growth_bytes: int = shm.SHM_GROWTH_BYTES
    # /dev/shm whose size is checked against the budget before starting (None: no check)
    dev_shm: Path | None = Path("/dev/shm")


def build_command(opts: ServerOptions, binary: Path, backend_dir: Path | None) -> list[str]:
    if opts.profile not in PROFILE_CONFIG_NAME:
        raise ValueError(f"unknown profile {opts.profile!r}; choose from {', '.join(PROFILE_CONFIG_NAME)}")
    cmd = [
        str(binary),
        f"--model-repository={opts.repository}",
        f"--grpc-port={opts.grpc_port}",
        f"--http-port={opts.http_port}",
        f"--metrics-port={opts.metrics_port}",
        f"--grpc-address={opts.host}",
        f"--http-address={opts.host}",
        "--strict-readiness=true",
        "--exit-on-error=true",
        "--disable-auto-complete-config",
        "--exit-timeout-secs=20",
        f"--log-verbose={opts.log_verbose}",
        # unique per server so several servers (tests, blue/green) never share regions
        f"--backend-config=python,shm-region-prefix-name=fe{os.getpid()}_{uuid.uuid4().hex[:6]}_",
        f"--backend-config=python,shm-default-byte-size={opts.shm_default_bytes}",
        f"--backend-config=python,shm-growth-byte-size={opts.shm_growth_bytes}",
    ]
    if not any(a.startswith("--model-control-mode") for a in opts.extra_args):
        # every model loaded at start, and each one reloadable on its own (stub watchdog)
        cmd += ["--model-control-mode=explicit", "--load-model=*"]
    if backend_dir is not None:
        cmd.append(f"--backend-directory={backend_dir}")
    config_name = PROFILE_CONFIG_NAME[opts.profile]
    if config_name:
        cmd.append(f"--model-config-name={config_name}")
    if opts.profile.startswith("cpu"):
        cmd.append("--allow-gpu-metrics=false")
    return cmd + list(opts.extra_args)


def check_shm(opts: ServerOptions) -> shm.ShmPlan | None:
    """Refuse a /dev/shm too small for the profile's regions at the real-time input limit, naming the size."""
    if opts.dev_shm is None:
        return None
    try:
        size = shm.dev_shm_size(opts.dev_shm)
    except OSError as exc:
        log.warning("cannot read the size of %s (%s): shared-memory budget not checked", opts.dev_shm, exc)
        return None
    plan = shm.plan_shm(opts.repository, opts.profile, size, opts.shm_default_bytes)
    if not plan.fits:
        need_mib = -(-plan.needed_bytes // (1024 * 1024))
        raise RuntimeError(
            f"{plan.describe()}: /dev/shm is too small. Give the container at least {need_mib} MiB "
            f"(docker run --shm-size={need_mib}m), or lower --shm-default-bytes / preprocess instances"
        )
    log.info("shared memory: %s", plan.describe())
    if not plan.fits_timeline:
        log.warning(
            "shared memory: a timeline request at the same input size on top needs %.0f MiB more (%.0f MiB in "
            "all): on this /dev/shm, timelines running beside full decoders can get 503 (docker run --shm-size)",
            plan.timeline_bytes / 2**20,
            (plan.needed_bytes + plan.timeline_bytes) / 2**20,
        )
    return plan


def check_repository(path: Path, profile: str = "cpu") -> None:
    """Refuse a repository the profile cannot serve (templates without weights), naming what is missing."""
    check_servable(path, profile)


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child receive ``sig`` when its parent dies.

    ``prctl(PR_SET_PDEATHSIG)``: the kernel signals the child when the *thread* that
    forked it exits, so fork from a thread that lives as long as the child should
    (the launcher forks from its main thread). If the parent died before prctl took
    effect, the child signals itself at once.
    """

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), sig)

    return preexec


class TritonProcess:
    """tritonserver as a child in its own process group (so no stub outlives it) that dies with its launcher.

    SIGTERM reaches tritonserver when the launcher dies, however it dies (even
    SIGKILL): Triton then shuts down as on a normal stop (``--exit-timeout-secs``
    bounds it) and its stubs exit when their parent does. A graceful exit, rather
    than SIGKILL, lets Triton remove its shared-memory regions.
    """

    def __init__(self, opts: ServerOptions, log_file: Path | None = None) -> None:
        self.opts = opts
        self.log_file = log_file
        self.proc: subprocess.Popen | None = None
        self.shm_plan: shm.ShmPlan | None = None

    def start(self) -> None:
        check_repository(self.opts.repository, self.opts.profile)
        if self.shm_plan is None:  # checked (and logged) once, not again on restarts
            self.shm_plan = check_shm(self.opts)
        override = os.environ.get("FUSION_EMOTION_TRITONSERVER")
        bundle = None if override else Bundle.locate()
        binary = Path(override) if override else bundle.binary
        cmd = build_command(self.opts, binary, bundle.backend_dir() if bundle else None)
        log.info("starting %s", " ".join(cmd))
        out = open(self.log_file, "ab") if self.log_file else None  # noqa: SIM115 - closed by the child's exit
        self.proc = subprocess.Popen(
            cmd,
            env=server_env(bundle),
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
            preexec_fn=die_with_parent(os.getpid()),  # forked from the launcher's main thread
        )
        if out:
            out.close()

    def ready(self, timeout: float = 1.0) -> bool:
        url = f"http://{self.opts.host}:{self.opts.http_port}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
                return resp.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {self.proc.returncode} before becoming ready")
            if self.ready():
                return
            time.sleep(0.25)
        raise TimeoutError(f"tritonserver not ready after {timeout:.0f} s")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for a graceful exit, then make sure nothing of the group is left."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not stop in %.0f s; killing it", timeout)
                self.proc.kill()
                self.proc.wait()
        self._kill_group()
        return self.proc.returncode

    def stubs(self) -> dict[int, str]:
        """Live Python-backend stub processes of this server -> their model's name."""
        if self.proc is None:
            return {}
        return procs.stubs(self.proc.pid)

    def reload_model(self, name: str, timeout: float = 60.0) -> None:
        """Reload one model in place (explicit model control): in-flight requests finish on the old instances.

        The model's current config is sent with the load request, which makes Triton
        reload it even though nothing on disk changed.
        """
        base = f"http://{self.opts.host}:{self.opts.http_port}/v2"
        with urllib.request.urlopen(f"{base}/models/{name}/config", timeout=timeout) as resp:  # noqa: S310 - loopback
            config = resp.read().decode()
        body = json.dumps({"parameters": {"config": config}}).encode()
        req = urllib.request.Request(f"{base}/repository/models/{name}/load", data=body, method="POST")  # noqa: S310
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            if resp.status != 200:
                raise RuntimeError(f"reloading {name} answered {resp.status}")

    def _kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "triton",
        help="run tritonserver on a model repository in the foreground",
        description="Run the bundled tritonserver (or $FUSION_EMOTION_TRITONSERVER) on a model repository. "
        "Arguments after `--` go to tritonserver unchanged (e.g. -- --allow-sagemaker=true).",
    )
    p.add_argument("--repository", required=True, type=Path, help="model repository (from `fusion-emotion export`)")
    p.add_argument(
        "--profile",
        choices=sorted(PROFILE_CONFIG_NAME),
        default="cpu",
        help="cpu (default here), gpu, gpu_fp16, cpu_int8 (after `fusion-emotion quantize`), cpu_dali / gpu_dali (DALI decode)",
    )
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    p.add_argument("--log-verbose", type=int, default=0)
    p.add_argument(
        "--shm-default-bytes",
        type=int,
        default=shm.SHM_REGION_BYTES,
        help="Python-backend shm region each stub starts with (default 1 MiB; checked against /dev/shm)",
    )
    p.add_argument(
        "--shm-growth-bytes", type=int, default=shm.SHM_GROWTH_BYTES, help="Python-backend shm growth step (1 MiB)"
    )
    p.add_argument(
        "--max-restarts",
        type=int,
        default=3,
        help="model reloads after Python-backend stubs die before giving up with exit code 3 (default 3)",
    )
    p.add_argument("extra", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    opts = ServerOptions(
        **field_args(ServerOptions, args, repository=args.repository.resolve(), extra_args=list(args.extra))
    )
    server = TritonProcess(opts)
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        log.info("signal %s: stopping tritonserver", signal.Signals(signum).name)
        if server.proc and server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        server.start()
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    code = watch(server, lambda: stopping, max_reloads=args.max_restarts)
    server.stop()
    log.info("tritonserver exited with code %s", code)
    return code
