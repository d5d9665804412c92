"""Soak test: bounded mixed load on 127.0.0.1 against the real front end and tritonserver.

``python -m fusion_emotion.ops.soak`` (``make soak``: 10 minutes) starts tritonserver
and ``fusion-emotion serve`` on free loopback ports, then keeps ``concurrency``
clients busy with a fixed mix of good and bad requests until the time is up.

Checks: every good answer equals the in-process ReferencePipeline's (computed
once per input) within ``tolerance``; no 5xx for good inputs; bad inputs get 4xx.
The resident memory (RSS, via psutil) of tritonserver, each Python-backend stub
and the front end is sampled over time and its growth after warm-up reported.
Everything goes to a JSON file (default build/soak.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fusion_emotion import testmedia
from fusion_emotion.core.pipeline import ReferencePipeline
from fusion_emotion.ops.soak_load import Case, mixed_load
from fusion_emotion.server import procs
from fusion_emotion.server.launcher import die_with_parent
from fusion_emotion.server.procs import free_port

log = logging.getLogger("fusion_emotion.ops.soak")


# --------------------------------------------------------------------------- inputs
def make_cases(max_body_bytes: int) -> list[Case]:
    speech48 = testmedia.speech(rate=48_000)
    speech44 = testmedia.speech(text="It is eleven o'clock. Please sit down.", rate=44_100)
    mp4 = testmedia.mp4(width=640, height=360, seconds=2.0, audio=speech48, audio_rate=48_000, video_bitrate=1_500_000)
    wav = testmedia.wav(np.stack([speech44, 0.5 * speech44], axis=1), 44_100, "s16")
    rng = np.random.default_rng(0)
    good = [
        Case("mp4+wav", mp4, wav, True),
        Case("mp4", mp4, None, True),
        Case("wav", None, wav, True),
        Case("flv", testmedia.flv(seconds=1.5, audio=speech44, audio_rate=44_100), None, True),
        Case(
            "avi+wav", testmedia.avi(width=320, height=240, seconds=1.5, audio=speech44, audio_rate=44_100), wav, True
        ),
        Case("mp4_noaudio", testmedia.mp4(width=320, height=240, seconds=1.0, audio=None), None, True),
    ]
    bad = [
        Case("garbage_video", rng.bytes(20_000), None, False),
        Case("truncated_mp4", mp4[: len(mp4) // 3], None, False),
        Case("mp4_as_audio", None, mp4, False),
        Case("wav_header_only", None, testmedia.header_only_wav(), False),
        Case("wav_as_video", wav, None, False),
        Case("empty_audio", None, b"", False),
        Case("over_body_limit", rng.bytes(max_body_bytes + 1), None, False),
    ]
    return good + bad


def attach_reference(cases: list[Case], repository: Path) -> None:
    ref = ReferencePipeline(repository)
    for case in cases:
        if case.good:
            case.expected = ref.predict(case.video, case.audio)[0]


# --------------------------------------------------------------------------- processes
def memory_sample(triton_root: int, frontend_pid: int) -> dict[str, int]:
    """RSS in KiB: tritonserver, each stub (by model instance), the front end."""
    sample: dict[str, int] = {}
    for proc in procs.descendants(triton_root):
        rss = procs.rss_kb(proc)
        if rss is None:
            continue
        model = procs.stub_model(proc)
        if model is not None:
            sample[f"stub:{model}:{proc.pid}"] = rss
        elif procs.is_tritonserver(proc):
            sample["tritonserver"] = rss
    rss = procs.rss_kb(frontend_pid)
    if rss is not None:
        sample["frontend"] = rss
    return sample


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
            return resp.status == 200
    except OSError:
        return False


@dataclass
class Stack:
    triton: subprocess.Popen
    frontend: subprocess.Popen
    base_url: str
    logs: list[Any] = field(default_factory=list)

    def stop(self) -> None:
        for proc in (self.frontend, self.triton):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(40)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def start_stack(
    repository: Path, workdir: Path, max_body_bytes: int, request_timeout_s: float = 55.0, timeout_s: float = 300
) -> Stack:
    grpc, http, metrics, port = free_port(), free_port(), free_port(), free_port()
    py = sys.executable
    tlog = open(workdir / "tritonserver.log", "wb")  # noqa: SIM115 - closed in Stack.stop's caller
    triton = subprocess.Popen(
        [py, "-m", "fusion_emotion.cli", "triton", "--repository", str(repository), "--profile", "cpu",
         "--grpc-port", str(grpc), "--http-port", str(http), "--metrics-port", str(metrics)],
        stdout=tlog, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent(os.getpid()),
    )  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while not _http_ok(f"http://127.0.0.1:{http}/v2/health/ready"):
        if triton.poll() is not None or time.monotonic() > deadline:
            triton.kill()
            raise RuntimeError(f"tritonserver did not become ready (see {workdir / 'tritonserver.log'})")
        time.sleep(0.3)
    flog = open(workdir / "frontend.log", "wb")  # noqa: SIM115
    frontend = subprocess.Popen(
        [py, "-m", "fusion_emotion.cli", "serve", "--triton-url", f"127.0.0.1:{grpc}", "--host", "127.0.0.1",
         "--port", str(port), "--max-body-bytes", str(max_body_bytes), "--request-timeout", str(request_timeout_s)],
        stdout=flog, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent(os.getpid()),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    while not _http_ok(base + "/ping"):
        if frontend.poll() is not None or time.monotonic() > deadline:
            frontend.kill()
            triton.send_signal(signal.SIGTERM)
            raise RuntimeError(f"front end did not become ready (see {workdir / 'frontend.log'})")
        time.sleep(0.3)
    return Stack(triton, frontend, base, [tlog, flog])


MIN_REQUESTS_PER_INTERVAL = 8
"""Samples are joined into intervals of at least this many answered requests before slopes are taken."""


def median_interval_slope(x: list[float], y: list[float], min_dx: float = MIN_REQUESTS_PER_INTERVAL) -> float | None:
    """Median over consecutive intervals (each spanning >= ``min_dx`` in x) of dy/dx.

    A steady leak raises every interval; a few one-off steps (allocator arenas
    growing when a new batch shape peaks) raise only the intervals they fall in,
    which the median ignores while they are fewer than half.
    """
    slopes: list[float] = []
    i = 0
    for j in range(1, len(x)):
        if x[j] - x[i] >= min_dx:
            slopes.append((y[j] - y[i]) / (x[j] - x[i]))
            i = j
    return float(np.median(slopes)) if slopes else None


def growth_per_request(samples: list[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    """Total RSS growth (KiB) per answered request after warm-up, from samples that carry ``requests`` counts.

    A leak grows memory with every request, so it shows as a steady slope of RSS
    against requests served. Samples taken with nothing in flight (``quiet``: the
    soak drains its clients every ``quiet_every_s``) are used when there are at
    least two: mid-load samples swing by hundreds of MB with the tensors in flight,
    which on a slow machine is more than a minute's requests could leak. The median
    interval slope then follows a steady leak and ignores one-off steps (allocator
    arenas reaching a new peak).
    """
    after = [s for s in samples if s["t"] >= warmup_s and "requests" in s]
    quiet = [s for s in after if s.get("quiet")]
    if len(quiet) >= 2:
        after = quiet
    keys = set(after[0]["rss_kb"]) if after else set()
    usable = [s for s in after if set(s["rss_kb"]) == keys]  # a replaced process would fake a jump
    xs = [float(s["requests"]) for s in usable]
    ys = [float(sum(s["rss_kb"].values())) for s in usable]
    slope = median_interval_slope(xs, ys, min_dx=1 if len(quiet) >= 2 else MIN_REQUESTS_PER_INTERVAL)
    span = xs[-1] - xs[0] if xs else 0.0
    return {
        "kb_per_request": None if slope is None else round(slope, 1),
        "end_to_end_kb_per_request": round((ys[-1] - ys[0]) / span, 1) if span else None,
        "requests": int(span),
        "samples": len(usable),
        "quiet_samples": len(quiet) >= 2,
    }


def summarize_memory(samples: list[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    """Per process: RSS after warm-up (first sample at or after ``warmup_s``), at the end, growth; totals; per request."""
    if not samples:
        return {}
    after = [s for s in samples if s["t"] >= warmup_s] or samples
    first, last = after[0]["rss_kb"], samples[-1]["rss_kb"]
    procs: dict[str, Any] = {}
    for key in sorted(set(first) | set(last)):
        a, b = first.get(key), last.get(key)
        procs[key] = {
            "start_mb": None if a is None else round(a / 1024, 1),
            "end_mb": None if b is None else round(b / 1024, 1),
            "growth_mb": None if a is None or b is None else round((b - a) / 1024, 1),
            "peak_mb": round(max(s["rss_kb"].get(key, 0) for s in samples) / 1024, 1),
        }
    common = set(first) & set(last)
    total_a = sum(first[k] for k in common) / 1024
    total_b = sum(last[k] for k in common) / 1024
    return {
        "warmup_s": warmup_s,
        "processes": procs,
        "total_start_mb": round(total_a, 1),
        "total_end_mb": round(total_b, 1),
        "total_growth_mb": round(total_b - total_a, 1),
        "total_growth_pct": round(100 * (total_b - total_a) / total_a, 2) if total_a else None,
        "same_processes": set(first) == set(last),
        "growth_per_request": growth_per_request(samples, warmup_s),
    }


class _Sampler:
    """Memory samples of the stack over time, with the count of requests answered by then."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.t_start = time.monotonic()
        self.samples: list[dict[str, Any]] = []
        self.completed = [0]

    def sample(self) -> dict[str, Any]:
        return {
            "t": round(time.monotonic() - self.t_start, 1),
            "requests": self.completed[0],
            "rss_kb": memory_sample(self.stack.triton.pid, self.stack.frontend.pid),
        }

    async def every(self, interval_s: float, stop: asyncio.Event) -> None:
        while True:
            self.samples.append(self.sample())
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
                return
            except asyncio.TimeoutError:
                continue


async def _warm_then_load(
    sampler: _Sampler,
    cases: list[Case],
    *,
    duration_s: float,
    concurrency: int,
    tolerance: float,
    sample_every_s: float,
    warmup_requests: int | None,
    request_timeout_s: float,
    seed: int,
    quiet_every_s: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(warm-up stats, measured stats), memory sampled all along and at every quiet point."""
    stop_sampling = asyncio.Event()
    task = asyncio.create_task(sampler.every(sample_every_s, stop_sampling))
    base, http_timeout = sampler.stack.base_url, request_timeout_s + 30
    try:
        # Warm-up (not counted): every batch size and input kind once, so ONNX Runtime's
        # arenas and the decoders reach their working size before growth is measured.
        n_warm = 2 * concurrency if warmup_requests is None else warmup_requests
        warm = await mixed_load(
            base, cases, 3600, concurrency, tolerance, seed + 1, http_timeout, n_warm, sampler.completed
        )
        warm["ended_at_s"] = round(time.monotonic() - sampler.t_start, 1)
        sampler.samples.append(sampler.sample() | {"t": warm["ended_at_s"], "quiet": True})
        stats = await mixed_load(
            base,
            cases,
            duration_s,
            concurrency,
            tolerance,
            seed,
            http_timeout,
            completed=sampler.completed,
            quiet_every_s=quiet_every_s,
            on_quiet=lambda: sampler.samples.append(sampler.sample() | {"quiet": True}),
        )
        return warm, stats
    finally:
        stop_sampling.set()
        await task


def run_soak(
    repository: Path | None = None,
    *,
    duration_s: float = 600.0,
    concurrency: int = 16,
    tolerance: float = 1e-4,
    sample_every_s: float = 5.0,
    warmup_requests: int | None = None,
    max_body_bytes: int = 6 * 1024 * 1024,
    request_timeout_s: float = 55.0,
    output: Path | None = None,
    seed: int = 0,
    quiet_every_s: float = 20.0,
) -> dict[str, Any]:
    """Start the stack, run the load, sample memory; returns (and writes) the report.

    Every ``quiet_every_s`` the clients drain and a quiet memory sample is taken (see growth_per_request).
    """
    with tempfile.TemporaryDirectory(prefix="fusion-soak-") as tmp:
        work = Path(tmp)
        if repository is None:
            from fusion_emotion.export.repository import export_random  # optional: [export]

            repository = work / "model_repository"
            export_random(repository, seed=0)
        cases = make_cases(max_body_bytes)
        attach_reference(cases, repository)
        stack = start_stack(repository, work, max_body_bytes, request_timeout_s)
        sampler = _Sampler(stack)
        try:
            warm, stats = asyncio.run(
                _warm_then_load(
                    sampler,
                    cases,
                    duration_s=duration_s,
                    concurrency=concurrency,
                    tolerance=tolerance,
                    sample_every_s=sample_every_s,
                    warmup_requests=warmup_requests,
                    request_timeout_s=request_timeout_s,
                    seed=seed,
                    quiet_every_s=quiet_every_s,
                )
            )
            sampler.samples.append(sampler.sample())
            alive = stack.triton.poll() is None and stack.frontend.poll() is None
        finally:
            stack.stop()
            for f in stack.logs:
                f.close()
        report = {
            "duration_s": duration_s,
            "concurrency": concurrency,
            "tolerance": tolerance,
            "request_timeout_s": request_timeout_s,
            "cases": {c.name: "good" if c.good else "bad" for c in cases},
            "servers_alive_at_end": alive,
            **stats,
            "requests_per_s": round(stats["requests"] / duration_s, 2),
            "warmup": {k: warm.get(k) for k in ("requests", "wrong_answers", "good_5xx", "bad_not_4xx", "ended_at_s")},
            "memory": summarize_memory(sampler.samples, warm.get("ended_at_s", 0.0)),
            "memory_samples": sampler.samples,
        }
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fusion_emotion.ops.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, help="model repository (default: export a random-init one)")
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--output", type=Path, default=Path("build/soak.json"))
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--request-timeout", type=float, default=55.0, help="front end's Triton deadline (504 past it)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    report = run_soak(
        args.repository,
        duration_s=args.duration,
        concurrency=args.concurrency,
        tolerance=args.tolerance,
        request_timeout_s=args.request_timeout,
        output=args.output,
    )
    summary = {k: report[k] for k in ("requests", "good", "bad", "wrong_answers", "good_5xx", "bad_not_4xx")}
    summary["total_growth_mb"] = report["memory"].get("total_growth_mb")
    summary["growth_kb_per_request"] = report["memory"].get("growth_per_request", {}).get("kb_per_request")
    log.info("soak done: %s -> %s", json.dumps(summary), args.output)
    ok = (
        report["wrong_answers"] == 0
        and report["good_5xx"] == 0
        and report["good_other_errors"] == 0
        and report["bad_not_4xx"] == 0
        and report["transport_errors"] == 0
        and report["servers_alive_at_end"]
        and report["warmup"]["wrong_answers"] == 0
        and report["warmup"]["good_5xx"] == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
