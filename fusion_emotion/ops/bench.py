"""``fusion-emotion bench``: closed-loop load test of the service, side by side with references.

Why this exists: the product has to prove, with numbers measured in one command on
one machine, that it beats the previous design (eager PyTorch, full decode per
request) and that serving adds little over the same work done in-process. So one
invocation can run the service target (HTTP front end, Triton gRPC, SageMaker
endpoint or the in-process lean pipeline), the in-process lean pipeline
(``--compare-local``) and the old design (``--baseline``), interleaved in rounds
so every side sees the same background load, and write everything to one JSON.

The old design lives in ``fusion_emotion.ops.baseline`` (torch is imported only
there) and the per-stage timer in ``fusion_emotion.ops.stages``; tritonclient is
imported only for Triton targets.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.ops import cpu_timeline
from fusion_emotion.server import procs

log = logging.getLogger(__name__)

PERCENTILES = (50, 90, 95, 99)


# ----------------------------------------------------------------------------- statistics


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


# ----------------------------------------------------------------------------- load generator


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


# ----------------------------------------------------------------------------- Triton statistics


def _ns(stat: dict[str, Any] | None) -> tuple[int, int]:
    """(count, ns) of one duration statistic from the JSON statistics (int64s arrive as strings)."""
    stat = stat or {}
    return int(stat.get("count", 0) or 0), int(stat.get("ns", 0) or 0)


def flatten_model_stats(stats_json: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Triton's statistics JSON -> {model: cumulative counters} (versions summed)."""
    out: dict[str, dict[str, int]] = {}
    for m in stats_json.get("model_stats", []):
        acc = out.setdefault(m["name"], {})

        def add(key: str, value: int, acc: dict[str, int] = acc) -> None:
            acc[key] = acc.get(key, 0) + value

        add("inference_count", int(m.get("inference_count", 0) or 0))
        add("execution_count", int(m.get("execution_count", 0) or 0))
        inf = m.get("inference_stats", {})
        for name in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
            count, ns = _ns(inf.get(name))
            add(f"{name}_count", count)
            add(f"{name}_ns", ns)
        for b in m.get("batch_stats", []) or []:
            for name in ("compute_input", "compute_infer", "compute_output"):
                count, ns = _ns(b.get(name))
                add(f"batch_{name}_count", count)
                add(f"batch_{name}_ns", ns)
    return out


def stats_delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
    """Per-model queue/compute times of what happened between two snapshots.

    ``*_ms_per_request`` divide Triton's per-request sums by the requests' count
    (a batched execution's time is counted once per request in it);
    ``*_ms_per_execution`` come from the batch statistics, one entry per model
    execution, so their ratio shows what dynamic batching bought.
    """
    out: dict[str, dict[str, Any]] = {}
    for model, a in sorted(after.items()):
        b = before.get(model, {})
        d = {k: a.get(k, 0) - b.get(k, 0) for k in a}
        if d.get("inference_count", 0) == 0 and d.get("success_count", 0) == 0 and d.get("fail_count", 0) == 0:
            continue

        def per(ns_key: str, count_key: str, d: dict[str, int] = d) -> float | None:
            count = d.get(count_key, 0)
            return d.get(ns_key, 0) / count / 1e6 if count else None

        execs = d.get("execution_count", 0)
        out[model] = {
            "requests": d.get("success_count", 0) + d.get("fail_count", 0),
            "inferences": d.get("inference_count", 0),
            "executions": execs,
            "avg_batch": d.get("inference_count", 0) / execs if execs else None,
            "failed": d.get("fail_count", 0),
            "request_ms_per_request": per("success_ns", "success_count"),
            "queue_ms_per_request": per("queue_ns", "queue_count"),
            "compute_input_ms_per_request": per("compute_input_ns", "compute_input_count"),
            "compute_infer_ms_per_request": per("compute_infer_ns", "compute_infer_count"),
            "compute_output_ms_per_request": per("compute_output_ns", "compute_output_count"),
            "compute_input_ms_per_execution": per("batch_compute_input_ns", "batch_compute_input_count"),
            "compute_infer_ms_per_execution": per("batch_compute_infer_ns", "batch_compute_infer_count"),
            "compute_output_ms_per_execution": per("batch_compute_output_ns", "batch_compute_output_count"),
        }
    return out


class TritonStats:
    """Snapshots of Triton's statistics extension over gRPC (all models)."""

    def __init__(self, url: str) -> None:
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(url)

    def read(self) -> dict[str, dict[str, int]]:
        """One raw read of the counters (may still lack the last requests' records)."""
        return flatten_model_stats(self.client.get_inference_statistics(as_json=True))

    def snapshot(self, timeout_s: float = 2.0, interval_s: float = 0.1) -> dict[str, dict[str, int]]:
        """The counters once they stop moving. Triton records a request's statistics
        after its response is sent (the ensemble's and its last step's last of all),
        so a read taken right after the client's last response can miss them; both
        ends of a measured window must be settled or the window gains or loses requests."""
        current = self.read()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            time.sleep(interval_s)
            again = self.read()
            if again == current:
                break
            current = again
        return current

    def close(self) -> None:
        self.client.close()


# ----------------------------------------------------------------------------- CPU accounting


class CpuMeter:
    """CPU seconds spent by this process (in-process targets) or by server process trees."""

    def __init__(self, server_pids: Sequence[int] | None = None) -> None:
        self.server_pids = list(server_pids or [])

    def read(self) -> float:
        return procs.tree_cpu_seconds(self.server_pids) if self.server_pids else time.process_time()


# ----------------------------------------------------------------------------- targets


class Target:
    """Something that answers one request for the benchmark clip; ``send`` raises on failure."""

    name = "target"
    triton_url: str | None = None
    server_pids: list[int] | None = None  # None: the work happens in this process

    def send(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release clients or models."""


class RemoteTarget(Target):
    """A target served by other processes: CPU is only metered with ``server_pids``."""


class HttpTarget(RemoteTarget):
    """The HTTP front end, one multipart POST per request (same body as ``predict --url``)."""

    def __init__(self, url: str, video: bytes | None, audio: bytes | None, concurrency: int, timeout_s: float = 120.0):
        import httpx

        from fusion_emotion.client.http import _decode, encode_multipart

        parts = url.rstrip("/")
        self.url = parts if parts.count("/") > 2 else parts + "/invocations"
        self.name = f"http {self.url}"
        self.body, self.content_type = encode_multipart(video, audio)
        self._decode = _decode
        limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
        self.client = httpx.Client(timeout=timeout_s, limits=limits)

    def send(self) -> None:
        resp = self.client.post(self.url, content=self.body, headers={"Content-Type": self.content_type})
        payload = self._decode(resp.status_code, resp.content)
        if "dominant_emotion" not in payload:
            raise RuntimeError(f"unexpected response keys {sorted(payload)[:8]}")

    def close(self) -> None:
        self.client.close()


class TritonTarget(RemoteTarget):
    """The ``fusion_emotion`` ensemble over gRPC, one client per worker thread."""

    def __init__(self, url: str, video: bytes | None, audio: bytes | None, timeout_s: float = 120.0) -> None:
        import tritonclient.grpc as grpcclient

        from fusion_emotion.client.triton import build_inputs, requested_outputs

        self.name = f"triton {url}"
        self.triton_url = url
        self.grpc = grpcclient
        self.inputs = build_inputs(video, audio, grpcclient)
        self.outputs = requested_outputs(grpcclient)
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self.grpc.InferenceServerClient(self.triton_url)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def send(self) -> None:
        result = self._client().infer(C.ENSEMBLE, self.inputs, outputs=self.outputs, client_timeout=self.timeout_s)
        probs = result.as_numpy(C.OUT_PROBABILITIES.name)
        if probs is None or probs.shape[-1] != C.NUM_CLASSES:
            raise RuntimeError("response without probabilities")

    def close(self) -> None:
        for c in self._clients:
            c.close()


class SageMakerTarget(RemoteTarget):
    """A SageMaker endpoint running the front end (boto3 ``invoke_endpoint``)."""

    def __init__(self, endpoint: str, video: bytes | None, audio: bytes | None, region: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        from fusion_emotion.client.http import predict_sagemaker_endpoint

        self.name = f"sagemaker {endpoint}"
        self.endpoint, self.video, self.audio = endpoint, video, audio
        self.client = boto3.client("sagemaker-runtime", region_name=region, config=Config(max_pool_connections=64))
        self._predict = predict_sagemaker_endpoint

    def send(self) -> None:
        self._predict(self.endpoint, self.video, self.audio, client=self.client)


class LocalTarget(Target):
    """The lean pipeline in-process: same preprocessing, encoders and head, no server."""

    def __init__(self, repository: str | Path, video: bytes | None, audio: bytes | None, intra_op_threads: int = 0):
        from fusion_emotion.core.pipeline import ReferencePipeline

        self.name = f"local {repository}"
        self.pipeline = ReferencePipeline(repository, intra_op_threads=intra_op_threads)
        self.video, self.audio = video, audio

    def send(self) -> None:
        self.pipeline.predict(self.video, self.audio)


# ----------------------------------------------------------------------------- orchestration


@dataclass
class Plan:
    """What one ``bench`` invocation runs."""

    requests: int
    concurrencies: list[int]
    rounds: int = 1
    warmup: int = 2
    progress: bool = True
    cpu_timeline_s: float | None = None  # sampling interval of --cpu-timeline


def run_target(
    target: Target,
    requests: int,
    concurrency: int,
    warmup: int,
    progress: bool,
    round_no: int = 0,
    cpu_timeline_s: float | None = None,
) -> RunResult:
    """Warm up (sequentially, not measured), then one measured closed-loop run with Triton stat deltas."""
    for _ in range(warmup):
        try:
            target.send()
        except Exception as exc:  # a failing warmup shows up again as measured errors
            log.warning("warmup request failed: %s", exc)
    stats = TritonStats(target.triton_url) if target.triton_url else None
    before = stats.snapshot() if stats else None
    meter = CpuMeter(target.server_pids) if (target.server_pids or not isinstance(target, RemoteTarget)) else None
    timeline = cpu_timeline.CpuTimeline(target.server_pids, cpu_timeline_s) if cpu_timeline_s else None
    cpu0 = meter.read() if meter else 0.0
    if timeline is not None:
        timeline.start()
    wall, lat, errors, samples = run_closed_loop(
        target.send, requests, concurrency, label=f"{target.name} c={concurrency}", progress=progress
    )
    result = RunResult(target.name, requests, concurrency, wall, lat, errors, samples, round=round_no)
    if timeline is not None:
        result.cpu_timeline = timeline.to_json()
    if meter is not None:
        result.cpu_s = meter.read() - cpu0
    if stats is not None and before is not None:
        try:
            result.triton_stats = stats_delta(before, stats.snapshot())
        finally:
            stats.close()
    return result


def run_plan(targets: dict[str, Target], plan: Plan) -> dict[str, dict[int, list[RunResult]]]:
    """Every concurrency, every round, every target in turn (A B C A B C...), so load drifts hit all alike."""
    results: dict[str, dict[int, list[RunResult]]] = {k: {} for k in targets}
    for c in plan.concurrencies:
        for r in range(plan.rounds):
            for key, target in targets.items():
                res = run_target(
                    target, plan.requests, c, plan.warmup if r == 0 else 0, plan.progress, r, plan.cpu_timeline_s
                )
                log.info(
                    "%s c=%s round %s: %.3f req/s, p95 %.0f ms, %s errors",
                    key, c, r, res.throughput_rps, latency_summary(res.latencies_s)["p95"] or float("nan"), res.errors,
                )  # fmt: skip
                results[key].setdefault(c, []).append(res)
    return results


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def summarise(
    results: dict[str, dict[int, list[RunResult]]], primary: str, headline: int | None = None
) -> dict[str, Any]:
    """The JSON document: the primary target's numbers at top level, the others and ratios beside them.

    ``headline`` picks the concurrency reported at top level in a sweep (default: the highest).
    """
    pooled = {key: {c: pool_runs(runs) for c, runs in by_c.items()} for key, by_c in results.items()}
    concurrencies = sorted(pooled[primary])
    head = headline if headline in pooled[primary] else concurrencies[-1]
    doc: dict[str, Any] = dict(pooled[primary][head])
    doc["primary"] = primary
    comparisons: dict[str, Any] = {}
    for key in pooled:
        if key == primary:
            continue
        doc[key] = pooled[key].get(head)
        per_c = {}
        for c in concurrencies:
            if c not in pooled[key]:
                continue
            s, o = pooled[primary][c], pooled[key][c]
            per_c[str(c)] = {
                "throughput_ratio": _ratio(s["throughput_rps"], o["throughput_rps"]),
                "p95_ratio": _ratio(s["latency_ms"]["p95"], o["latency_ms"]["p95"]),
                "p95_ms": {primary: s["latency_ms"]["p95"], key: o["latency_ms"]["p95"]},
                "throughput_rps": {primary: s["throughput_rps"], key: o["throughput_rps"]},
            }
        comparisons[f"{primary}_vs_{key}"] = per_c
    if comparisons:
        doc["comparisons"] = comparisons
    if len(concurrencies) > 1:
        doc["sweep"] = {key: [pooled[key][c] for c in sorted(pooled[key])] for key in pooled}
    return doc


def plot_sweep(doc: dict[str, Any], path: str | Path) -> None:
    """Latency (p50 solid, p95 dashed) and throughput vs concurrency, one colour per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (key, runs) in enumerate(doc["sweep"].items()):
        colour = f"C{i}"
        cs = [r["concurrency"] for r in runs]
        ax_lat.plot(cs, [r["latency_ms"]["p50"] for r in runs], "o-", color=colour, label=f"{key} p50")
        ax_lat.plot(cs, [r["latency_ms"]["p95"] for r in runs], "s--", color=colour, label=f"{key} p95")
        ax_tp.plot(cs, [r["throughput_rps"] for r in runs], "o-", color=colour, label=key)
    for ax, ylabel in ((ax_lat, "latency (ms)"), (ax_tp, "throughput (requests/s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("fusion-emotion bench: " + doc.get("clip", {}).get("description", ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _host_info() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _fmt(v: float | None, spec: str = ".0f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def report_text(doc: dict[str, Any]) -> str:
    """The human summary printed after the JSON is written."""
    lines = []
    rows = [(doc["primary"], doc)] + [(k, doc[k]) for k in ("local", "baseline") if isinstance(doc.get(k), dict)]
    for key, r in rows:
        lat = r["latency_ms"]
        lines.append(
            f"{key:>9}: {r['throughput_rps']:.3f} req/s  avg {_fmt(lat['avg'])} ms  p50 {_fmt(lat['p50'])}  "
            f"p95 {_fmt(lat['p95'])}  p99 {_fmt(lat['p99'])}  errors {r['errors']}/{r['requests']}  "
            f"cpu {_fmt(r.get('cpu_ms_per_request'))} ms/req  "
            f"(c={r['concurrency']}, rounds={r.get('rounds', 1)})"
        )
    for name, per_c in doc.get("comparisons", {}).items():
        for c, cmp in per_c.items():
            lines.append(
                f"{name} (c={c}): throughput x{_fmt(cmp['throughput_ratio'], '.2f')}, p95 x{_fmt(cmp['p95_ratio'], '.2f')}"
            )
    stats = doc.get("triton_stats")
    if isinstance(stats, dict) and "per_round" not in stats:
        for model, s in stats.items():
            lines.append(
                f"  triton {model:>14}: {s['requests']} req, {s['executions']} exec (batch {_fmt(s['avg_batch'], '.2f')}), "
                f"queue {_fmt(s['queue_ms_per_request'], '.1f')} ms/req, infer {_fmt(s['compute_infer_ms_per_request'], '.1f')} ms/req, "
                f"{_fmt(s['compute_infer_ms_per_execution'], '.1f')} ms/exec"
            )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- CLI


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="load-test the service (and optionally the in-process pipeline and the old design) side by side",
        description="Closed-loop benchmark: N requests with C in flight on one clip. With --baseline and/or "
        "--compare-local the references run in the same command, interleaved in --rounds, and the ratios are printed.",
    )
    tgt = p.add_mutually_exclusive_group(required=True)
    tgt.add_argument("--url", help="HTTP front end, http://HOST:PORT (path defaults to /invocations)")
    tgt.add_argument("--triton", metavar="HOST:PORT", help="Triton gRPC endpoint (the fusion_emotion ensemble)")
    tgt.add_argument("--sagemaker-endpoint", metavar="NAME", help="SageMaker endpoint running the front end")
    tgt.add_argument("--local", metavar="DIR", help="in-process lean pipeline on an exported model repository")
    p.add_argument("--video", type=Path, help="video file sent with every request")
    p.add_argument("--audio", type=Path, help="WAV sent with every request (default: the video's own track)")
    p.add_argument("--requests", "-n", type=int, default=32, help="measured requests per run (default 32)")
    p.add_argument("--concurrency", "-c", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--sweep", help="comma-separated concurrencies, e.g. 1,2,4,8,16 (overrides --concurrency)")
    p.add_argument("--plot", type=Path, help="PNG of latency/throughput vs concurrency (with --sweep)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds per target (default 1)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured sequential requests per target first (default 2)")
    p.add_argument("--output", "-o", type=Path, required=True, help="results JSON")
    p.add_argument("--baseline", action="store_true", help="also run the old design (eager PyTorch, full decode)")
    p.add_argument("--baseline-checkpoint", help="checkpoint for the baseline (default: random init, --seed)")
    p.add_argument("--seed", type=int, default=0, help="random-init seed of the baseline (matches export --seed)")
    p.add_argument("--compare-local", metavar="DIR", help="also run the in-process lean pipeline on this repository")
    p.add_argument("--intra-op-threads", type=int, default=0, help="onnxruntime threads of --local/--compare-local")
    p.add_argument("--triton-stats", metavar="HOST:PORT", help="Triton gRPC endpoint to read statistics from (--url)")
    p.add_argument("--region", help="AWS region (--sagemaker-endpoint)")
    p.add_argument(
        "--server-pid",
        type=int,
        action="append",
        default=[],
        help="PID whose process tree serves the target (tritonserver, front end); repeatable: reports CPU ms/request",
    )
    p.add_argument(
        "--cpu-timeline",
        type=float,
        metavar="SECONDS",
        help="sample busy cores (and, with --server-pid, cores by model) every SECONDS during each measured run; "
        "reports idle core-seconds and prints the timeline",
    )
    p.add_argument("--stages", metavar="DIR", help="also time each stage of one request on this repository")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.video is None and args.audio is None:
        log.error("give --video and/or --audio")
        return 2
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    video = args.video.read_bytes() if args.video else None
    audio = args.audio.read_bytes() if args.audio else None
    concurrencies = [int(c) for c in args.sweep.split(",")] if args.sweep else [args.concurrency]
    if args.cpu_timeline is not None and args.cpu_timeline <= 0:
        log.error("--cpu-timeline needs a positive interval in seconds")
        return 2
    plan = Plan(
        args.requests, concurrencies, max(1, args.rounds), max(0, args.warmup), not args.no_progress, args.cpu_timeline
    )

    targets: dict[str, Target] = {}
    if args.url:
        targets["service"] = HttpTarget(args.url, video, audio, max(concurrencies))
        targets["service"].triton_url = args.triton_stats
    elif args.triton:
        targets["service"] = TritonTarget(args.triton, video, audio)
    elif args.sagemaker_endpoint:
        targets["service"] = SageMakerTarget(args.sagemaker_endpoint, video, audio, args.region)
    else:
        targets["local"] = LocalTarget(args.local, video, audio, args.intra_op_threads)
    if args.compare_local and "local" not in targets:
        targets["local"] = LocalTarget(args.compare_local, video, audio, args.intra_op_threads)
    if args.baseline:
        if video is None:
            log.error("--baseline needs --video")
            return 2
        from fusion_emotion.ops.baseline import BaselineTarget

        targets["baseline"] = BaselineTarget(video, audio, args.seed, args.baseline_checkpoint)
    primary = next(iter(targets))
    if args.server_pid and "service" in targets:
        targets["service"].server_pids = list(args.server_pid)

    load_before = _load()
    started = time.time()
    try:
        results = run_plan(targets, plan)
    finally:
        for t in targets.values():
            t.close()
    doc = summarise(results, primary, args.concurrency)
    doc["targets"] = {k: t.name for k, t in targets.items()}
    doc["clip"] = {
        "video": str(args.video) if args.video else None,
        "video_bytes": len(video) if video else 0,
        "audio": str(args.audio) if args.audio else None,
        "description": f"{args.video.name if args.video else ''} {args.audio.name if args.audio else ''}".strip(),
    }
    doc["host"] = _host_info() | {"loadavg_before": load_before, "loadavg_after": _load()}
    doc["started_unix"] = started
    doc["duration_s"] = time.time() - started
    every_run = [r for by_c in results.values() for runs in by_c.values() for r in runs]
    doc["runs"] = [r.to_json() for r in every_run]
    if args.stages:
        if video is None:
            log.error("--stages needs --video")
        else:
            from fusion_emotion.ops.stages import measure_stages

            doc["stages"] = measure_stages(args.stages, video, audio, baseline=args.baseline)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2, allow_nan=False, default=_json_default))
    if args.plot and "sweep" in doc:
        plot_sweep(doc, args.plot)
    sys.stdout.write(report_text(doc))
    for r in every_run:
        if r.cpu_timeline is not None:
            title = f"cpu timeline {r.target} c={r.concurrency} round {r.round}"
            sys.stdout.write(f"{title}: {cpu_timeline.summary_line(r.cpu_timeline['summary'])}\n")
            sys.stdout.write(cpu_timeline.table(cpu_timeline.from_json(r.cpu_timeline)) + "\n")
    if "stages" in doc:
        for name, s in doc["stages"].items():
            sys.stdout.write(f"  stage {name:>24}: wall {s['wall_ms']:8.1f} ms  cpu {s['cpu_ms']:8.1f} ms\n")
    sys.stdout.write(
        f"results: {args.output}  load average before {load_before} after {doc['host']['loadavg_after']}\n"
    )
    return 0 if all(r.errors == 0 for r in every_run) else 1


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
