"""Process trees and loopback ports: the one helper for the launcher, the ops tools and the tests.

tritonserver runs its Python-backend stubs as child processes; the stub watchdog,
the soak test's memory sampler, the benchmark's CPU meter and the fault tests all
need "the live processes below this PID" and "which of them is the stub of which
model". psutil answers both portably, so nothing here parses /proc by hand.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from pathlib import Path

import psutil

STUB_NAME = "triton_python_backend_stub"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (exited, not yet reaped)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def descendants(root: int) -> list[psutil.Process]:
    """Live (non-zombie) processes below ``root``, children first; [] if ``root`` is gone."""
    try:
        found = psutil.Process(root).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in found if alive(p.pid)]


def cmdline(proc: psutil.Process | int) -> list[str]:
    """argv of a process ([] when it is gone or unreadable)."""
    try:
        return (proc if isinstance(proc, psutil.Process) else psutil.Process(proc)).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def stub_model(proc: psutil.Process | int) -> str | None:
    """The model a Python-backend stub serves (argv[1] is <repository>/<model>/<version>/model.py), else None."""
    argv = cmdline(proc)
    if len(argv) > 1 and argv[0].endswith(STUB_NAME):
        return Path(argv[1]).parents[1].name
    return None


def stubs(root: int) -> dict[int, str]:
    """Live Python-backend stubs below ``root`` -> their model's name."""
    out: dict[int, str] = {}
    for proc in descendants(root):
        model = stub_model(proc)
        if model is not None:
            out[proc.pid] = model
    return out


def is_tritonserver(proc: psutil.Process | int) -> bool:
    argv = cmdline(proc)
    return bool(argv) and Path(argv[0]).name == "tritonserver"


def cpu_seconds(proc: psutil.Process | int) -> float:
    """User + system CPU seconds of one process (all its threads); 0 when it is gone."""
    try:
        p = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
        t = p.cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return 0.0
    return t.user + t.system


def tree(roots: Iterable[int]) -> list[psutil.Process]:
    """``roots`` and all their descendants, each once; roots that are gone are skipped."""
    found: dict[int, psutil.Process] = {}
    for root in roots:
        try:
            proc = psutil.Process(root)
            members = [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for member in members:
            found.setdefault(member.pid, member)
    return list(found.values())


def tree_cpu_seconds(roots: Iterable[int]) -> float:
    """User + system CPU seconds of ``roots`` and their live descendants.

    Wall-clock throughput on a shared machine moves with everybody else's load;
    CPU seconds per request barely do, so they show what a change costs.
    """
    return sum(cpu_seconds(proc) for proc in tree(roots))


def mapped_libraries(proc: psutil.Process | int | None = None) -> list[Path]:
    """Shared libraries mapped into a process (this one by default); [] when it is gone or unreadable."""
    try:
        p = psutil.Process() if proc is None else proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
        maps = p.memory_maps(grouped=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []
    return sorted({Path(m.path) for m in maps if ".so" in Path(m.path).name})


def rss_kb(proc: psutil.Process | int) -> int | None:
    """Resident set size in KiB (None when the process is gone)."""
    try:
        p = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
        return int(p.memory_info().rss // 1024)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
