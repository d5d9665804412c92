"""The soak test's load: closed-loop clients sending a fixed mix of good and bad requests, every answer checked.

Good requests must get 200 with the reference probabilities (within ``tolerance``), bad ones a 4xx; every
other outcome is counted and a few examples kept for the report.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from fusion_emotion import contract as C


@dataclass
class Case:
    name: str
    video: bytes | None
    audio: bytes | None
    good: bool
    expected: np.ndarray | None = None  # reference probabilities for good cases


def _multipart(case: Case) -> dict[str, Any]:
    files = {}
    if case.video is not None:
        files["video_file"] = ("input.bin", case.video, "application/octet-stream")
    if case.audio is not None:
        files["audio_file"] = ("input.bin", case.audio, "application/octet-stream")
    return {"files": files}


class Tally:
    """What the load saw: status counts per case, and every answer that is not what its case expects."""

    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance
        self.stats: dict[str, Any] = {
            "requests": 0,
            "good": 0,
            "bad": 0,
            "wrong_answers": 0,
            "good_5xx": 0,
            "good_other_errors": 0,
            "bad_not_4xx": 0,
            "transport_errors": 0,
            "status_counts": {},
            "per_case": {},
            "examples_of_failures": [],
        }
        self.latencies: list[float] = []

    def note_failure(self, text: str) -> None:
        if len(self.stats["examples_of_failures"]) < 20:
            self.stats["examples_of_failures"].append(text)

    def transport_error(self, case: Case, exc: Exception) -> None:
        self.stats["transport_errors"] += 1
        self.note_failure(f"{case.name}: transport {type(exc).__name__}")

    def answer(self, case: Case, resp: httpx.Response, latency_s: float) -> None:
        stats = self.stats
        self.latencies.append(latency_s)
        stats["requests"] += 1
        code = resp.status_code
        stats["status_counts"][str(code)] = stats["status_counts"].get(str(code), 0) + 1
        per = stats["per_case"].setdefault(case.name, {})
        per[str(code)] = per.get(str(code), 0) + 1
        if case.good:
            stats["good"] += 1
            if code >= 500:
                stats["good_5xx"] += 1
                self.note_failure(f"{case.name}: {code} {resp.text[:200]}")
            elif code != 200:
                stats["good_other_errors"] += 1
                self.note_failure(f"{case.name}: {code} {resp.text[:200]}")
            else:
                body = resp.json()
                got = np.array([body[k] for k in C.LABELS], dtype=np.float64)
                if case.expected is None or not np.allclose(got, case.expected, atol=self.tolerance, rtol=0):
                    stats["wrong_answers"] += 1
                    self.note_failure(f"{case.name}: got {got.tolist()} want {case.expected}")
        else:
            stats["bad"] += 1
            if not 400 <= code < 500:
                stats["bad_not_4xx"] += 1
                self.note_failure(f"{case.name}: {code} {resp.text[:200]}")

    def report(self) -> dict[str, Any]:
        if self.latencies:
            lat = np.array(self.latencies)
            self.stats["latency_s"] = {
                "p50": round(float(np.percentile(lat, 50)), 3),
                "p95": round(float(np.percentile(lat, 95)), 3),
                "max": round(float(lat.max()), 3),
            }
        return self.stats


async def mixed_load(
    base: str,
    cases: list[Case],
    duration_s: float,
    concurrency: int,
    tolerance: float,
    seed: int,
    http_timeout: float,
    max_requests: int | None = None,
    completed: list[int] | None = None,
    quiet_every_s: float | None = None,
    on_quiet: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Closed-loop mixed load; ``completed[0]`` counts answered requests live (for the memory sampler).

    With ``quiet_every_s``, the load runs in rounds: after each, the clients wait until every request in
    flight has been answered and ``on_quiet`` is called (a memory sample with nothing in flight), then the
    next round starts.
    """
    tally = Tally(tolerance)
    good_weighted = [c for c in cases if c.good] * 3  # 3 good : 1 bad per draw on average when 6 good / 7 bad
    pool = good_weighted + [c for c in cases if not c.good]
    end = time.monotonic() + duration_s
    budget = [max_requests or 0]
    rngs = [random.Random(seed * 1000 + wid) for wid in range(concurrency)]

    async def worker(wid: int, client: httpx.AsyncClient, until: float) -> None:
        rng = rngs[wid]
        while time.monotonic() < until:
            if max_requests is not None:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            case = rng.choice(pool)
            t0 = time.monotonic()
            try:
                resp = await client.post(base + "/invocations", **_multipart(case), timeout=http_timeout)
            except httpx.HTTPError as exc:
                tally.transport_error(case, exc)
                continue
            if completed is not None:
                completed[0] += 1
            tally.answer(case, resp, time.monotonic() - t0)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as client:
        while True:
            until = end if quiet_every_s is None else min(end, time.monotonic() + quiet_every_s)
            await asyncio.gather(*(worker(i, client, until) for i in range(concurrency)))
            if on_quiet is not None:
                on_quiet()
            if time.monotonic() >= end or (max_requests is not None and budget[0] <= 0):
                break
    return tally.report()
