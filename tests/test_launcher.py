"""`fusion-emotion triton` never leaves an orphan server: killing the launcher takes tritonserver and its stubs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import start_triton

from fusion_emotion.server import procs

GONE_WITHIN_S = 30.0  # Triton's graceful stop (--exit-timeout-secs 20 bounds it); measured 13.8 s at load 5-8


def _wait_gone(pids: list[int], timeout: float) -> tuple[list[int], float]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        left = [p for p in pids if procs.alive(p)]
        if not left:
            return [], time.monotonic() - t0
        time.sleep(0.1)
    return [p for p in pids if procs.alive(p)], time.monotonic() - t0


_PARENT = """
import subprocess, sys, time
from fusion_emotion.server.launcher import die_with_parent
import os
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                         start_new_session=True, preexec_fn=die_with_parent(os.getpid()))
print(child.pid, flush=True)
time.sleep(120)
"""


def test_die_with_parent_signals_the_child_when_the_parent_is_killed() -> None:
    """The mechanism alone: a child in its own session still dies when its parent is SIGKILLed."""
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        child = int(parent.stdout.readline())
        assert procs.alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        left, _ = _wait_gone([child], 10.0)
        assert left == []
    finally:
        parent.kill()
        parent.wait()
        if child and procs.alive(child):
            os.kill(child, signal.SIGKILL)


@pytest.mark.integration
@pytest.mark.timeout(420)
def test_sigkill_of_the_launcher_takes_tritonserver_and_every_stub(demo_repository: Path, tmp_path: Path) -> None:
    handle = start_triton(demo_repository, tmp_path / "tritonserver.log")
    family = [p.pid for p in procs.descendants(handle.proc.pid)]
    try:
        server = [p for p in family if procs.is_tritonserver(p)]
        stubs = procs.stubs(handle.proc.pid)
        assert len(server) == 1, [procs.cmdline(p)[:2] for p in family]
        assert len(stubs) >= 4, stubs  # preprocess, both encoders, fusion_head (CPU profile)
        os.kill(handle.proc.pid, signal.SIGKILL)
        handle.proc.wait(10)
        left, took = _wait_gone(family, GONE_WITHIN_S)
        print(f"tritonserver and {len(stubs)} stubs gone {took:.1f} s after the launcher's SIGKILL")
        assert left == [], [(p, procs.cmdline(p)[:2]) for p in left]
    finally:
        for pid in family:  # only what this test started
            if procs.alive(pid):
                os.kill(pid, signal.SIGKILL)
