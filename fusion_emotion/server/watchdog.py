"""The stub watchdog of ``fusion-emotion triton``: replace Python-backend stubs that die while the server runs."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Server(Protocol):
    """What the watchdog needs of a running tritonserver (``launcher.TritonProcess``)."""

    proc: Any

    def ready(self, timeout: float = ...) -> bool: ...
    def stubs(self) -> dict[int, str]: ...
    def reload_model(self, model: str) -> None: ...
    def start(self) -> Any: ...
    def stop(self) -> Any: ...


def watch(server: Server, stopping: Callable[[], bool], max_reloads: int = 3, period_s: float = 1.0) -> int:
    """Wait for tritonserver to exit, replacing Python-backend stubs that die meanwhile.

    Triton 2.51 keeps a crashed stub's model instance and fails every request the
    scheduler gives it. When a stub disappears while the server runs, its model
    is reloaded in place (the other instances keep serving); if that reload does
    not finish, tritonserver is restarted. If stubs keep dying, the server is
    stopped and the exit code is 3, so a supervisor replaces us.
    """
    baseline: dict[int, str] = {}
    reloads = 0
    while True:
        try:
            return server.proc.wait(timeout=period_s)
        except subprocess.TimeoutExpired:
            pass
        if stopping():
            continue
        if not baseline:
            if server.ready(timeout=period_s):
                baseline = server.stubs()
            continue
        current = server.stubs()
        dead = {pid: model for pid, model in baseline.items() if pid not in current}
        # A model reloaded on purpose (Triton's load API) starts its new stubs before its old ones go: a
        # model that still has as many stubs as before lost none.
        replaced = {m for m in set(dead.values()) if _count(current, m) >= _count(baseline, m)}
        if replaced:
            dead = {pid: model for pid, model in dead.items() if model not in replaced}
            baseline = {pid: model for pid, model in baseline.items() if model not in replaced}
            baseline.update({pid: model for pid, model in current.items() if model in replaced})
        if not dead or server.proc.poll() is not None or stopping():
            continue
        models = sorted(set(dead.values()))
        log.error("Python-backend stub(s) %s of %s died while tritonserver kept running", sorted(dead), models)
        reloads += 1
        if reloads > max_reloads:
            log.error("stubs keep dying (%d reloads); stopping tritonserver", reloads - 1)
            server.stop()
            return 3
        try:
            for model in models:
                log.warning("reloading %s to replace its dead stub (%d/%d)", model, reloads, max_reloads)
                server.reload_model(model)
            baseline = wait_replaced(server, baseline, dead)
        except (OSError, RuntimeError) as exc:
            # the reload did not complete in time: replace the whole server instead
            log.error("reload failed (%s); restarting tritonserver", exc)
            server.stop()
            try:
                server.start()
            except (FileNotFoundError, RuntimeError, ValueError) as start_exc:
                log.error("%s", start_exc)
                return 2
            baseline = {}


def _count(stubs: dict[int, str], model: str) -> int:
    return sum(1 for m in stubs.values() if m == model)


def wait_replaced(
    server: Server, baseline: dict[int, str], dead: dict[int, str], timeout: float = 20.0
) -> dict[int, str]:
    """The new stub set once every model with a dead stub has its full instance count again.

    Triton may answer a reload of an unchanged model without creating instances;
    raise then, so the caller falls back to a server restart.
    """
    wanted = {m: sum(1 for v in baseline.values() if v == m) for m in set(dead.values())}
    deadline = time.monotonic() + timeout
    while True:
        current = server.stubs()
        live = {m: sum(1 for pid, v in current.items() if v == m and pid not in dead) for m in wanted}
        if all(live[m] >= n for m, n in wanted.items()):
            return current
        if time.monotonic() > deadline:
            raise RuntimeError(f"reload left {live} instances of {wanted}")
        time.sleep(0.25)
