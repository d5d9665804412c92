"""Closed-loop load: N requests with C in flight against one target, and the numbers one run yields.

The generator of ``fusion-emotion bench`` (and of the tools built on it): each worker thread sends the
next request as soon as its previous one finished, like perf_analyzer's concurrency mode.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PERCENTILES = (50, 90, 95, 99)


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float | None]:
    """avg/min/max and p50/p90/p95/p99 in milliseconds (linear interpolation, numpy's default).

    Only successful requests count; an empty list gives None everywhere so a run
    where everything failed cannot masquerade as a fast one.
    """
    keys = ["avg", "min", "max"] + [f"p{p}" for p in PERCENTILES]
    if not latencies_s:
        return dict.fromkeys(keys)
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    out: dict[str, float | None] = {"avg": float(ms.mean()), "min": float(ms.min()), "max": float(ms.max())}
    for p, v in zip(PERCENTILES, np.percentile(ms, PERCENTILES), strict=True):
        out[f"p{p}"] = float(v)
    return out


@dataclass
class RunResult:
    """One closed-loop run: N requests with C in flight against one target."""

    target: str
    requests: int
    concurrency: int
    wall_s: float
    latencies_s: list[float]
    errors: int
    error_samples: list[str] = field(default_factory=list)
    triton_stats: dict[str, Any] | None = None
    round: int = 0
    cpu_s: float | None = None  # CPU seconds spent serving the run (see CpuMeter)
    cpu_timeline: dict[str, Any] | None = None  # busy cores over the run (--cpu-timeline)

    @property
    def ok(self) -> int:
        return len(self.latencies_s)

    @property
    def throughput_rps(self) -> float:
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.target,
            "round": self.round,
            "requests": self.requests,
            "concurrency": self.concurrency,
            "succeeded": self.ok,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "wall_s": round(self.wall_s, 4),
            "throughput_rps": self.throughput_rps,
            "latency_ms": latency_summary(self.latencies_s),
        }
        if self.cpu_s is not None:
            out["cpu_ms_per_request"] = self.cpu_s / self.requests * 1000.0
        if self.triton_stats is not None:
            out["triton_stats"] = self.triton_stats
        if self.cpu_timeline is not None:
            out["cpu_timeline"] = self.cpu_timeline
        return out


def pool_runs(runs: Sequence[RunResult]) -> dict[str, Any]:
    """Rounds of one target merged: all latencies pooled, throughput = successes / total wall time."""
    if not runs:
        raise ValueError("no runs to pool")
    merged = RunResult(
        target=runs[0].target,
        requests=sum(r.requests for r in runs),
        concurrency=runs[0].concurrency,
        wall_s=sum(r.wall_s for r in runs),
        latencies_s=[x for r in runs for x in r.latencies_s],
        errors=sum(r.errors for r in runs),
        error_samples=[s for r in runs for s in r.error_samples][:5],
        cpu_s=sum(r.cpu_s for r in runs) if all(r.cpu_s is not None for r in runs) else None,
    )
    out = merged.to_json()
    out.pop("round")
    out["rounds"] = len(runs)
    out["throughput_rps_per_round"] = [r.throughput_rps for r in runs]
    stats = [r.triton_stats for r in runs if r.triton_stats is not None]
    if stats:
        out["triton_stats"] = stats[-1] if len(stats) == 1 else {"per_round": stats}
    timelines = [r.cpu_timeline["summary"] for r in runs if r.cpu_timeline is not None]
    if timelines:
        out["cpu_timeline"] = timelines  # one summary per round (the samples are in "runs")
    return out


class Progress:
    """A one-line counter on a terminal; a log line every 25 % otherwise."""

    def __init__(self, label: str, total: int, stream: Any = None) -> None:
        self.label, self.total = label, total
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = self.errors = 0
        self.start = time.perf_counter()
        self._lock = threading.Lock()
        self._next_mark = 0.25

    def update(self, ok: bool) -> None:
        with self._lock:
            self.done += 1
            self.errors += 0 if ok else 1
            elapsed = time.perf_counter() - self.start
            rate = self.done / elapsed if elapsed > 0 else 0.0
            if self.tty:
                self.stream.write(
                    f"\r{self.label}: {self.done}/{self.total} done, {self.errors} errors, {rate:.2f} req/s   "
                )
                self.stream.flush()
            elif self.done / self.total >= self._next_mark or self.done == self.total:
                log.info("%s: %s/%s done, %s errors, %.2f req/s", self.label, self.done, self.total, self.errors, rate)
                while self._next_mark <= self.done / self.total:
                    self._next_mark += 0.25

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def run_closed_loop(
    send: Callable[[], None],
    requests: int,
    concurrency: int,
    *,
    label: str = "bench",
    progress: bool = True,
) -> tuple[float, list[float], int, list[str]]:
    """Send ``requests`` calls with ``concurrency`` in flight, one thread per in-flight request.

    Each worker takes the next request as soon as its previous one finishes
    (closed loop, like perf_analyzer's concurrency mode). Returns
    (wall seconds, successful latencies, error count, a few error messages).
    """
    if requests < 1 or concurrency < 1:
        raise ValueError("requests and concurrency must be >= 1")
    lock = threading.Lock()
    counter = iter(range(requests))
    latencies: list[float] = []
    errors: list[str] = []
    bar = Progress(label, requests) if progress else None

    def worker() -> None:
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            t0 = time.perf_counter()
            try:
                send()
            except Exception as exc:  # every failure is counted, none stops the run
                with lock:
                    errors.append(f"{type(exc).__name__}: {str(exc)[:300]}")
                if bar:
                    bar.update(False)
                continue
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
            if bar:
                bar.update(True)

    threads = [
        threading.Thread(target=worker, name=f"bench-{i}", daemon=True) for i in range(min(concurrency, requests))
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if bar:
        bar.close()
    return wall, latencies, len(errors), errors[:5]
