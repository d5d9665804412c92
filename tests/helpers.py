"""Test helpers: free ports, a live tritonserver started through the real CLI."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psutil
import uvicorn

from fusion_emotion.frontend.stream_settings import StreamSettings, uvicorn_ws_options
from fusion_emotion.server.launcher import die_with_parent
from fusion_emotion.server.procs import free_port

__all__ = ["RawWebSocket", "free_port", "http_ready", "rss_mb", "serve_app", "start_triton", "TritonHandle"]


T = TypeVar("T")


def clients_with_peak(
    client: Callable[[int], T], count: int, measure: Callable[[], float], every_s: float = 0.01
) -> tuple[list[T], float, float]:
    """Run ``client(i)`` for ``count`` clients at once while sampling ``measure()``.

    Returns (results in client order, the peak of ``measure`` including before the start, wall seconds).
    """
    peak = [measure()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], measure())
            except Exception:  # the measured process went away: the test's own checks say so
                return
            time.sleep(every_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    try:
        with ThreadPoolExecutor(count) as pool:
            results = list(pool.map(client, range(count)))
    finally:
        stop.set()
        sampler.join(5)
    return results, peak[0], time.monotonic() - t0


@contextlib.contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Serve an ASGI app on a free port in a thread (uvicorn); yields the base URL."""
    port = free_port()
    stream_settings = getattr(getattr(app, "state", None), "stream_settings", None) or StreamSettings()
    ws = uvicorn_ws_options(stream_settings)  # as `serve` runs it
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on", **ws)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("app did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


def http_ready(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


@dataclass
class TritonHandle:
    """A tritonserver run by `fusion-emotion triton` in a child process."""

    repository: Path
    proc: subprocess.Popen
    grpc_port: int
    http_port: int
    metrics_port: int
    log_path: Path
    extra_ports: dict[str, int] = field(default_factory=dict)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def start_triton(
    repository: Path,
    log_path: Path,
    *,
    profile: str = "cpu",
    extra_args: list[str] | None = None,
    extra_ports: dict[str, int] | None = None,
    timeout: float = 240.0,
    shm_size: str | None = None,
    launcher_args: list[str] | None = None,
) -> TritonHandle:
    """``shm_size`` ("64m") runs the launcher in a private mount namespace with a tmpfs of that size on
    /dev/shm (Docker's ``--shm-size``; needs root), as in a container."""
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    cmd = [
        sys.executable, "-m", "fusion_emotion.cli", "triton",
        "--repository", str(repository), "--profile", profile,
        "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port),
    ]  # fmt: skip
    cmd += launcher_args or []
    if extra_args:
        cmd += ["--", *extra_args]
    if shm_size is not None:
        mount = f'mount -t tmpfs -o size={shm_size} tmpfs /dev/shm && exec "$@"'
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh", *cmd]
    log = open(log_path, "wb")  # noqa: SIM115 - handed to the child
    # dies with this process (pytest killed by a timeout or the OOM killer leaves no server behind)
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent(os.getpid())
    )
    log.close()
    handle = TritonHandle(repository, proc, grpc_port, http_port, metrics_port, log_path, extra_ports or {})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tritonserver exited early ({proc.returncode}):\n{handle.log_text()[-4000:]}")
        if http_ready(f"http://127.0.0.1:{http_port}/v2/health/ready"):
            return handle
        time.sleep(0.3)
    handle.stop()
    raise TimeoutError(f"tritonserver not ready in {timeout} s:\n{handle.log_text()[-4000:]}")


def rss_mb(pids: list[int]) -> float:
    """Resident memory of these processes together, in MiB (a process gone counts 0)."""
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


class RawWebSocket:
    """A WebSocket client on a bare socket: it sends what it is told and reads nothing after the handshake."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("ws://").split("/")[0].split(":")
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills soon when not read
        self.sock.connect((host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /stream HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)  # the handshake only, byte by byte: nothing past it is read
        assert head.startswith(b"HTTP/1.1 101"), head

    def send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
        else:
            head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        data = np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)
        self.sock.sendall(head + mask + data.tobytes())

    def read_all(self, timeout_s: float = 10.0) -> bytes:
        self.sock.settimeout(timeout_s)
        out = b""
        try:
            while chunk := self.sock.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return out

    def close(self) -> None:
        self.sock.close()


async def exchange(ws: Any, messages: list[Any], wait_s: float) -> tuple[list[dict[str, Any]], int | None]:
    """On an open WebSocket: send these messages (str = text, bytes = binary), then read until the server
    closes: (its messages, the close code)."""
    import json

    import websockets

    received: list[dict[str, Any]] = []
    for m in messages:
        try:
            await ws.send(m)
        except websockets.ConnectionClosed:
            break

    async def read() -> None:
        async for raw in ws:
            received.append(json.loads(raw))

    try:
        await asyncio.wait_for(read(), wait_s)
    except websockets.ConnectionClosed:
        pass
    return received, ws.close_code
