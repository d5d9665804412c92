#!/usr/bin/env python3
"""perf_analyzer concurrency sweep on the ``fusion_emotion`` ensemble over gRPC, optionally beside ``bench``.

    python perf/perf_analyzer_sweep.py --concurrency 1,2,4 --requests 16             # make perf-analyzer
    python perf/perf_analyzer_sweep.py --concurrency 1,2,4 --requests 16 --bench     # make perf-compare

Starts tritonserver (``fusion-emotion triton``, cpu profile) on --repository
(exported with random-init weights, seed 0, when missing), or uses a running
one (--triton HOST:PORT). Real clips go in perf_analyzer's --input-data file
(default: the RAVDESS-like generated clip, its own audio track). For each
concurrency and round it runs perf_analyzer with ``--request-count`` and, with
--bench, ``bench``'s gRPC target (``fusion-emotion bench --triton``) beside it
with the same clip, concurrency and request count (which goes first alternates
per round), so background load hits both alike. Both are also read from the
server side (Triton statistics of the ensemble, server CPU per request).

Writes to --output-dir: ``input_data.json``, ``perf_analyzer.csv`` (perf_analyzer's
own rows, one per concurrency and round), ``summary.json``; prints a table.
Exit status 1 if any request failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from fusion_emotion import contract as C
from fusion_emotion.ops import bench
from fusion_emotion.ops.perf_analyzer import PerfAnalyzer, compare_rows, ensure_demo_repository, measure
from fusion_emotion.ops.perf_inputs import make_input_data

log = logging.getLogger("perf_analyzer_sweep")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--triton", metavar="HOST:PORT", help="gRPC endpoint of a running server (default: start one)")
    p.add_argument("--repository", type=Path, default=Path("build/perf/repo"), help="model repository to serve")
    p.add_argument("--profile", default="cpu", help="profile of the started server (default cpu)")
    p.add_argument("--ports", default="18501,18502,18503", help="grpc,http,metrics ports of the started server")
    p.add_argument(
        "--server-pid", type=int, action="append", default=[], help="with --triton: server PID, for CPU ms/request"
    )
    p.add_argument("--video", type=Path, help="clip (default: generate the RAVDESS-like 1280x720 test clip)")
    p.add_argument("--audio", type=Path, help="WAV sent with every request (default: the clip's own track)")
    p.add_argument("--concurrency", default="1,2,4", help="comma-separated concurrencies (default 1,2,4)")
    p.add_argument("--requests", "-n", type=int, default=16, help="measured requests per run (default 16)")
    p.add_argument("--rounds", type=int, default=1, help="runs per concurrency and tool (default 1)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured sequential requests first (default 2)")
    p.add_argument("--bench", action="store_true", help="also run bench's gRPC target, interleaved")
    p.add_argument("--output-dir", type=Path, default=Path("build/perf/perf_analyzer"))
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds one perf_analyzer run may take")
    p.add_argument("--report", type=Path, metavar="SUMMARY", help="only print the table of an earlier summary.json")
    return p.parse_args(argv)


def _clip(args: argparse.Namespace, out: Path) -> tuple[bytes | None, bytes | None, str]:
    audio = args.audio.read_bytes() if args.audio else None
    if args.video:
        return args.video.read_bytes(), audio, args.video.name
    from fusion_emotion import testmedia  # only without --video (the generators need av and espeak-ng)

    clip = testmedia.mp4(audio=testmedia.speech(rate=48_000), audio_rate=48_000)
    (out / "clip.mp4").write_bytes(clip)
    return clip, audio, "generated RAVDESS-like clip (1280x720 30 fps 3.5 s H.264 ~8 Mbit/s + 48 kHz AAC)"


def _start_server(args: argparse.Namespace) -> Any:
    from fusion_emotion.server.launcher import ServerOptions, TritonProcess  # optional: [triton] (not with --url)

    repo = ensure_demo_repository(args.repository.resolve())
    grpc, http, metrics = (int(p) for p in args.ports.split(","))
    server = TritonProcess(
        ServerOptions(repo, args.profile, grpc, http, metrics),
        log_file=args.output_dir / "tritonserver.log",
    )
    server.start()
    server.wait_ready(timeout=600)
    return server


def _bench_json(res: bench.RunResult) -> dict[str, Any]:
    return res.to_json() | {"target": "bench --triton"}


TOOLS = ("perf_analyzer", "bench")


def _row(c: Any, rnd: Any, tool: str, r: dict[str, Any]) -> str:
    ens = (r.get("triton_stats") or {}).get(C.ENSEMBLE, {})
    lat, server = r["latency_ms"], ens.get("request_ms_per_request")
    overhead = lat["avg"] - server if lat.get("avg") is not None and server is not None else None
    return (
        f"| {c} | {rnd} | {tool} | {r['throughput_rps']:.3f} | {_f(lat['avg'])} | {_f(lat.get('p50'))} | "
        f"{_f(lat.get('p95'))} | {_f(server)} | {_f(overhead)} | {_f(r.get('cpu_ms_per_request'))} | "
        f"{r['errors']}/{r['requests']} |"
    )


def _ratio_row(c: Any, rnd: Any, cmp: dict[str, Any]) -> str:
    verdict = "DISAGREE: " + ",".join(cmp["disagree"]) if cmp["disagree"] else "within 15 %"
    return (
        f"| {c} | {rnd} | pa / bench | x{_f(cmp['throughput_ratio'], '.3f')} | x{_f(cmp['avg_ratio'], '.3f')} | "
        f"x{_f(cmp['p50_ratio'], '.3f')} | | | | x{_f(cmp['cpu_ratio'], '.3f')} | {verdict} |"
    )


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one tool at one concurrency merged: successes / total time, request-weighted means."""
    ok = sum(r["succeeded"] for r in runs)
    wall = sum(r["succeeded"] / r["throughput_rps"] for r in runs if r["throughput_rps"])

    def mean(get: Any) -> float | None:
        vals = [(get(r), r["succeeded"]) for r in runs]
        if not ok or any(v is None for v, _ in vals):
            return None
        return sum(v * n for v, n in vals) / ok

    return {
        "requests": sum(r["requests"] for r in runs),
        "succeeded": ok,
        "errors": sum(r["errors"] for r in runs),
        "throughput_rps": ok / wall if wall else 0.0,
        "latency_ms": {"avg": mean(lambda r: r["latency_ms"]["avg"]), "p50": None, "p95": None},
        "cpu_ms_per_request": mean(lambda r: r.get("cpu_ms_per_request")),
        "triton_stats": {
            C.ENSEMBLE: {
                "request_ms_per_request": mean(
                    lambda r: (r.get("triton_stats") or {}).get(C.ENSEMBLE, {}).get("request_ms_per_request")
                )
            }
        },
    }


def table(rows: list[dict[str, Any]]) -> str:
    """Every run, the per-run ratio, then per concurrency the rounds pooled.

    "client overhead" = client mean latency - the server's mean request time for
    the same requests: what the client side adds (send, network, receive).
    """
    head = (
        "| c | round | tool | req/s | avg ms | p50 ms | p95 ms | server ms/req | client overhead ms "
        "| server CPU ms/req | errors |"
    )
    lines = [head, "|" + "---|" * 11]
    for row in rows:
        for tool in TOOLS:
            if tool in row:
                lines.append(_row(row["concurrency"], row["round"], tool, row[tool]))
        if "comparison" in row:
            lines.append(_ratio_row(row["concurrency"], row["round"], row["comparison"]))
    if len({row["round"] for row in rows}) > 1:
        for c in dict.fromkeys(row["concurrency"] for row in rows):
            merged = {t: pooled([row[t] for row in rows if row["concurrency"] == c and t in row]) for t in TOOLS}
            for tool in TOOLS:
                if merged[tool]["succeeded"]:
                    lines.append(_row(c, "all", tool, merged[tool]))
            if all(merged[t]["succeeded"] for t in TOOLS):
                lines.append(_ratio_row(c, "all", compare_rows(merged["perf_analyzer"], merged["bench"])))
    return "\n".join(lines) + "\n"


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _f(v: float | None, spec: str = ".0f") -> str:
    return "n/a" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        sys.stdout.write(table(json.loads(args.report.read_text())["runs"]))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    pa = PerfAnalyzer.locate()
    video, audio, clip_name = _clip(args, out)
    input_data = out / "input_data.json"
    input_data.write_text(json.dumps(make_input_data([(video, audio)])))
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    server = None if args.triton else _start_server(args)
    url = args.triton or f"127.0.0.1:{server.opts.grpc_port}"
    pids = [server.proc.pid] if server else list(args.server_pid)
    target = bench.TritonTarget(url, video, audio)
    target.server_pids = pids or None
    load_before = _load()
    rows: list[dict[str, Any]] = []
    csv_lines: list[str] = []
    started = time.time()
    try:
        for _ in range(args.warmup):  # lazy imports and first-call costs, paid once for both tools
            target.send()
        for c in concurrencies:
            for r in range(args.rounds):
                csv_path = out / f"perf_analyzer_c{c}_r{r}.csv"
                row: dict[str, Any] = {"concurrency": c, "round": r, "loadavg_before": _load()}
                # who goes first alternates per round: under a drifting load the second tool of a
                # pair otherwise always meets the later (here: usually lighter) load
                order = TOOLS if r % 2 == 0 or not args.bench else TOOLS[::-1]
                row["order"] = list(order)
                for tool in order:
                    if tool == "perf_analyzer":
                        row[tool] = measure(
                            pa, url, input_data, c, args.requests, csv_path, server_pids=pids, timeout_s=args.timeout
                        )
                        if csv_path.is_file():
                            lines = csv_path.read_text().splitlines()
                            csv_lines += lines[1:] if csv_lines else lines
                    elif args.bench:
                        res = bench.run_target(target, args.requests, c, warmup=0, progress=False, round_no=r)
                        row[tool] = _bench_json(res)
                if args.bench:
                    row["comparison"] = compare_rows(row["perf_analyzer"], row["bench"])
                row["loadavg_after"] = _load()
                rows.append(row)
                log.info("c=%s round %s done, load average %s", c, r, row["loadavg_after"])
    finally:
        target.close()
        if server is not None:
            server.stop()
    if csv_lines:
        (out / "perf_analyzer.csv").write_text("\n".join(csv_lines) + "\n")
    doc = {
        "clip": clip_name,
        "video_bytes": len(video) if video else 0,
        "audio": str(args.audio) if args.audio else None,
        "triton": url,
        "requests_per_run": args.requests,
        "rounds": args.rounds,
        "perf_analyzer": str(pa.binary),
        "host": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": _load()},
        "started_unix": started,
        "duration_s": time.time() - started,
        "runs": rows,
    }
    (out / "summary.json").write_text(json.dumps(doc, indent=2, default=str))
    sys.stdout.write(table(rows))
    sys.stdout.write(f"load average before {load_before} after {doc['host']['loadavg_after']}; results in {out}\n")
    failed = any(r[t]["errors"] for r in rows for t in ("perf_analyzer", "bench") if t in r)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
