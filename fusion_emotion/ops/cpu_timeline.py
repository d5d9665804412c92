"""Busy cores over a measured run, by part: when and why a server leaves the machine idle.

CPU milliseconds per request say what a request costs; they do not say whether the server kept
the cores busy. A throughput ratio is both: CPU per request and the share of the machine used.
``bench --cpu-timeline SECONDS`` samples, every interval, the machine's busy cores and the cores
each part of the server used (Python-backend stubs by model, other processes by name), and sums
the idle core-seconds: in all, in intervals where no ``preprocess`` stub ran (every instance held
by requests waiting for the encoders, so nothing decodes), and in the last seconds of the run (the
drain of a fixed-count closed loop, when fewer requests than cores are left).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from fusion_emotion import contract as C
from fusion_emotion.server import procs

IN_PROCESS = "in-process"
"""The part name of the benchmark's own process (targets that run the work in it)."""
DECODE_PART = C.PREPROCESS
"""The part whose absence marks decoding starved."""
RUNS_BELOW_CORES = 0.05
"""A part using less than this many cores over an interval counts as not running."""


@dataclass(frozen=True)
class Sample:
    """One interval: seconds from the start, the machine's busy cores, cores by part."""

    t_s: float
    dt_s: float
    busy_cores: float
    parts: dict[str, float]


def _machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (idle and iowait are not busy)."""
    t = psutil.cpu_times()
    total = sum(t)
    idle = t.idle + getattr(t, "iowait", 0.0)
    return total - idle, total


def part_name(proc: psutil.Process) -> str:
    """A stub's model, else the process's name (tritonserver, the front end's interpreter...)."""
    model = procs.stub_model(proc)
    if model is not None:
        return model
    try:
        return proc.name()
    except psutil.Error:
        return "?"


def _part_seconds(server_pids: Sequence[int]) -> dict[int, tuple[str, float]]:
    """pid -> (part, CPU seconds) for the server trees, or for this process when there are none."""
    if not server_pids:
        return {0: (IN_PROCESS, time.process_time())}
    return {proc.pid: (part_name(proc), procs.cpu_seconds(proc)) for proc in procs.tree(server_pids)}


class CpuTimeline:
    """Samples in a background thread between :meth:`start` and :meth:`stop`."""

    def __init__(self, server_pids: Sequence[int] | None, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError("the interval must be positive")
        self.server_pids = list(server_pids or [])
        self.interval_s = interval_s
        self.cores = psutil.cpu_count() or 1
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cpu-timeline", daemon=True)
        self._thread.start()

    def stop(self) -> list[Sample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.samples

    def to_json(self, tail_s: float = 2.0) -> dict[str, Any]:
        """Stop, then :func:`to_json` of the samples on this machine's cores."""
        return to_json(self.stop(), self.cores, tail_s)

    def _run(self) -> None:
        t0 = prev_t = time.monotonic()
        prev_busy = _machine_busy_s()
        prev_parts = _part_seconds(self.server_pids)
        while True:
            stopping = self._stop.wait(self.interval_s)
            now = time.monotonic()
            busy = _machine_busy_s()
            parts_now = _part_seconds(self.server_pids)
            dt = now - prev_t
            if dt > 0:
                total = busy[1] - prev_busy[1]
                cores = self.cores * (busy[0] - prev_busy[0]) / total if total > 0 else 0.0
                by_part: dict[str, float] = {}
                for pid, (name, seconds) in parts_now.items():
                    if pid in prev_parts:  # processes that came or went mid-interval are left out
                        by_part[name] = by_part.get(name, 0.0) + max(0.0, seconds - prev_parts[pid][1]) / dt
                self.samples.append(Sample(prev_t - t0, dt, cores, by_part))
            prev_t, prev_busy, prev_parts = now, busy, parts_now
            if stopping:
                return


def summarize(samples: Sequence[Sample], cores: int, tail_s: float = 2.0) -> dict[str, Any]:
    """Idle core-seconds of a run: all, with no decoding running, and in its last ``tail_s`` seconds.

    The three overlap (a drain interval may also lack decoding); each is a share of what the
    machine could have done (``cores`` x wall).
    """
    wall = sum(s.dt_s for s in samples)
    end = samples[-1].t_s + samples[-1].dt_s if samples else 0.0
    decodes = DECODE_PART in _all_parts(samples)  # a server with a decode stage (not an in-process target)
    idle = no_decode = tail = 0.0
    for s in samples:
        lost = max(0.0, cores - s.busy_cores) * s.dt_s
        idle += lost
        if decodes and s.parts.get(DECODE_PART, 0.0) < RUNS_BELOW_CORES:
            no_decode += lost
        if s.t_s >= end - tail_s:
            tail += lost
    capacity = cores * wall
    return {
        "interval_s": round(wall / len(samples), 3) if samples else None,
        "wall_s": round(wall, 3),
        "cores": cores,
        "mean_busy_cores": round(sum(s.busy_cores * s.dt_s for s in samples) / wall, 3) if wall else None,
        "idle_core_s": round(idle, 3),
        "idle_share": round(idle / capacity, 4) if capacity else None,
        "idle_no_decode_core_s": round(no_decode, 3),
        "idle_last_core_s": round(tail, 3),
        "last_s": tail_s,
        "part_core_s": {
            name: round(sum(s.parts.get(name, 0.0) * s.dt_s for s in samples), 3)
            for name in sorted(_all_parts(samples))
        },
    }


def _all_parts(samples: Sequence[Sample]) -> set[str]:
    return {name for s in samples for name in s.parts}


def to_json(samples: Sequence[Sample], cores: int, tail_s: float = 2.0) -> dict[str, Any]:
    """The summary and every sample, for the bench JSON."""
    return {
        "summary": summarize(samples, cores, tail_s),
        "samples": [
            {
                "t_s": round(s.t_s, 3),
                "dt_s": round(s.dt_s, 3),
                "busy_cores": round(s.busy_cores, 3),
                "parts": {k: round(v, 3) for k, v in s.parts.items()},
            }
            for s in samples
        ],
    }


def from_json(doc: dict[str, Any]) -> list[Sample]:
    """The samples back from :func:`to_json` (for printing a stored run)."""
    return [Sample(r["t_s"], r["dt_s"], r["busy_cores"], dict(r["parts"])) for r in doc["samples"]]


def summary_line(summary: dict[str, Any]) -> str:
    """One line for the printed report."""
    share = summary.get("idle_share")
    return (
        f"busy {summary['mean_busy_cores']} of {summary['cores']} cores, idle {summary['idle_core_s']} core-s "
        f"({'n/a' if share is None else f'{share * 100:.1f} %'}): {summary['idle_no_decode_core_s']} with nothing "
        f"decoding, {summary['idle_last_core_s']} in the last {summary['last_s']:g} s"
    )


def table(samples: Sequence[Sample]) -> str:
    """The timeline as text, one interval per line: busy cores, then cores by part."""
    lines = []
    for s in samples:
        parts = " ".join(f"{k}={v:.2f}" for k, v in sorted(s.parts.items()) if v >= RUNS_BELOW_CORES)
        lines.append(f"  {s.t_s:6.1f} s  busy {s.busy_cores:4.2f}  {parts}")
    return "\n".join(lines)
