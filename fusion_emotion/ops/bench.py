"""``fusion-emotion bench``: closed-loop load test of the service, side by side with references.

Why this exists: the product has to prove, with numbers measured in one command on
one machine, that it beats the previous design (eager PyTorch, full decode per
request) and that serving adds little over the same work done in-process. So one
invocation can run the service target (HTTP front end, Triton gRPC, SageMaker
endpoint or the in-process lean pipeline), the in-process lean pipeline
(``--compare-local``) and the old design (``--baseline``), interleaved in rounds
so every side sees the same background load, and write everything to one JSON.

The pieces: ``loadgen`` (the closed loop and one run's numbers), ``targets`` (what is loaded),
``server_stats`` (Triton's statistics, CPU seconds), ``baseline`` (the old design; torch is imported
only there) and ``stages`` (the per-stage timer).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fusion_emotion.ops import cpu_timeline
from fusion_emotion.ops.loadgen import RunResult, latency_summary, pool_runs, run_closed_loop
from fusion_emotion.ops.report import fmt, host_info, load_average
from fusion_emotion.ops.server_stats import CpuMeter, TritonStats, stats_delta
from fusion_emotion.ops.stages import measure_stages
from fusion_emotion.ops.targets import HttpTarget, LocalTarget, RemoteTarget, SageMakerTarget, Target, TritonTarget

log = logging.getLogger(__name__)


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
    import matplotlib  # optional: [plots]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional: [plots]

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


def report_text(doc: dict[str, Any]) -> str:
    """The human summary printed after the JSON is written."""
    lines = []
    rows = [(doc["primary"], doc)] + [(k, doc[k]) for k in ("local", "baseline") if isinstance(doc.get(k), dict)]
    for key, r in rows:
        lat = r["latency_ms"]
        lines.append(
            f"{key:>9}: {r['throughput_rps']:.3f} req/s  avg {fmt(lat['avg'])} ms  p50 {fmt(lat['p50'])}  "
            f"p95 {fmt(lat['p95'])}  p99 {fmt(lat['p99'])}  errors {r['errors']}/{r['requests']}  "
            f"cpu {fmt(r.get('cpu_ms_per_request'))} ms/req  "
            f"(c={r['concurrency']}, rounds={r.get('rounds', 1)})"
        )
    for name, per_c in doc.get("comparisons", {}).items():
        for c, cmp in per_c.items():
            lines.append(
                f"{name} (c={c}): throughput x{fmt(cmp['throughput_ratio'], '.2f')}, p95 x{fmt(cmp['p95_ratio'], '.2f')}"
            )
    stats = doc.get("triton_stats")
    if isinstance(stats, dict) and "per_round" not in stats:
        for model, s in stats.items():
            lines.append(
                f"  triton {model:>14}: {s['requests']} req, {s['executions']} exec (batch {fmt(s['avg_batch'], '.2f')}), "
                f"queue {fmt(s['queue_ms_per_request'], '.1f')} ms/req, infer {fmt(s['compute_infer_ms_per_request'], '.1f')} ms/req, "
                f"{fmt(s['compute_infer_ms_per_execution'], '.1f')} ms/exec"
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
        from fusion_emotion.ops.baseline import BaselineTarget  # optional: [export] (torch)

        targets["baseline"] = BaselineTarget(video, audio, args.seed, args.baseline_checkpoint)
    primary = next(iter(targets))
    if args.server_pid and "service" in targets:
        targets["service"].server_pids = list(args.server_pid)

    load_before = load_average()
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
    doc["host"] = host_info() | {"loadavg_before": load_before, "loadavg_after": load_average()}
    doc["started_unix"] = started
    doc["duration_s"] = time.time() - started
    every_run = [r for by_c in results.values() for runs in by_c.values() for r in runs]
    doc["runs"] = [r.to_json() for r in every_run]
    if args.stages:
        if video is None:
            log.error("--stages needs --video")
        else:
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
