"""``fusion-emotion bench-stream``: how many live streams one server carries in real time.

N concurrent WebSocket streams of real speech (espeak-ng, 16 kHz), each sent at real-time pace in
``--chunk`` messages for ``--seconds``, optionally with 5 fps face frames (JPEG, 640x480). Stream starts
are spread evenly over one hop (as independent callers are) unless ``--aligned``. Per N it reports:

* update latency: the front end's ``latency_ms`` (from the arrival of the message that completed the
  hop's audio to the update leaving the server), p50/p95/max; and the client's view (send of that chunk
  to receipt of the update, loopback included);
* updates lost (expected from the stream length and hop, minus received) and late (latency over one hop);
* CPU: seconds of the server processes (tritonserver with its stubs, and the front end) per second of
  stream, i.e. the share of one core each stream costs, plus the bench client's own CPU;
* Triton's per-model statistics (encoder batch sizes and compute per execution): the per-stage numbers
  that size other hardware.

``--repository DIR`` starts tritonserver (``--profile``) and the front end on free loopback ports and
stops them afterwards; ``--url`` measures a running front end instead (``--server-pid`` for its CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fusion_emotion.client.stream import MediaSource, jpeg, play
from fusion_emotion.ops.loadgen import latency_summary
from fusion_emotion.ops.report import fmt, host_info, load_average
from fusion_emotion.ops.server_stats import TritonStats, stats_delta
from fusion_emotion.server import procs
from fusion_emotion.server.launcher import ServerOptions, TritonProcess

log = logging.getLogger(__name__)


@dataclass
class Servers:
    """tritonserver and the front end, started for the bench (loopback only)."""

    triton: Any = None
    frontend: subprocess.Popen | None = None
    grpc_url: str = ""
    ws_url: str = ""
    pids: list[int] = field(default_factory=list)

    @classmethod
    def start(cls, repository: Path, profile: str, log_dir: Path, timeout_s: float = 600.0) -> Servers:
        grpc, http, metrics, fe = procs.free_port(), procs.free_port(), procs.free_port(), procs.free_port()
        log_dir.mkdir(parents=True, exist_ok=True)
        triton = TritonProcess(
            ServerOptions(repository.resolve(), profile, grpc, http, metrics), log_file=log_dir / "tritonserver.log"
        )
        triton.start()
        servers = cls(triton=triton, grpc_url=f"127.0.0.1:{grpc}", ws_url=f"ws://127.0.0.1:{fe}/stream")
        try:
            triton.wait_ready(timeout_s)
            env = dict(os.environ, FUSION_EMOTION_MAX_STREAMS=os.environ.get("FUSION_EMOTION_MAX_STREAMS", "64"))
            with open(log_dir / "frontend.log", "wb") as out:
                servers.frontend = subprocess.Popen(
                    [sys.executable, "-m", "fusion_emotion.cli", "serve", "--triton-url", servers.grpc_url,
                     "--host", "127.0.0.1", "--port", str(fe)],
                    stdout=out, stderr=subprocess.STDOUT, env=env,
                )  # fmt: skip
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{fe}/ping", timeout=2) as resp:  # noqa: S310
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline or servers.frontend.poll() is not None:
                    raise RuntimeError(f"front end did not become ready (see {log_dir / 'frontend.log'})")
                time.sleep(0.5)
        except BaseException:
            servers.stop()
            raise
        servers.pids = [triton.proc.pid, servers.frontend.pid]
        return servers

    def stop(self) -> None:
        if self.frontend is not None and self.frontend.poll() is None:
            self.frontend.terminate()
            try:
                self.frontend.wait(30)
            except subprocess.TimeoutExpired:
                self.frontend.kill()
        if self.triton is not None:
            self.triton.stop()


def process_cpu(servers: Servers | None) -> dict[str, float]:
    """CPU seconds so far per server part: each Triton model's stub(s), tritonserver itself, the front end."""
    if servers is None or servers.triton is None or servers.frontend is None:
        return {}
    out: dict[str, float] = {
        "tritonserver": procs.cpu_seconds(servers.triton.proc.pid),
        "frontend": procs.cpu_seconds(servers.frontend.pid),
    }
    for pid, model in servers.triton.stubs().items():
        out[model] = out.get(model, 0.0) + procs.cpu_seconds(pid)
    return out


def speech_source(seconds: float, video: bool, fps: float) -> Any:
    """Real speech (espeak-ng sentences, 16 kHz), and face frames as JPEG when ``video``."""
    from fusion_emotion import testmedia  # optional: [dev] (espeak-ng speech, face frames)

    texts = (
        "Kids are talking by the door.",
        "Dogs are sitting by the door.",
        "It is eleven o'clock. Please sit down.",
        "The quick brown fox jumps over the lazy dog.",
    )
    parts = []
    for text in texts:
        parts += [testmedia.speech(text=text, rate=16_000), np.zeros(4_000, np.float32)]
    speech = np.resize(np.concatenate(parts), int(seconds * 16_000))
    pcm = (np.clip(speech, -1, 32767 / 32768) * 32768).astype("<i2")[:, None]
    frames: list[tuple[float, bytes]] = []
    if video:
        pool = [jpeg(f) for f in testmedia.video_frames(640, 480, 4.0, fps)]
        frames = [(round(i / fps, 6), pool[i % len(pool)]) for i in range(int(seconds * fps))]
    return MediaSource(pcm, 16_000, frames)


def expected_updates(seconds: float, hop_s: float) -> int:
    from fusion_emotion.core.stream import stream_config  # optional: [models]
    from fusion_emotion.core.windows import plan_stream_windows

    return len(plan_stream_windows(int(round(seconds * 16_000)), stream_config(16_000, 1, hop_s).windows))


async def _phase(url: str, n: int, source: Any, hop_s: float, chunk_s: float, aligned: bool) -> list[Any]:
    offsets = [0.0] * n if aligned else [hop_s * i / n for i in range(n)]
    return await asyncio.gather(
        *(play(url, source, realtime=True, chunk_s=chunk_s, hop_s=hop_s, start_delay_s=o) for o in offsets),
        return_exceptions=True,
    )


def run_phase(
    url: str, n: int, source: Any, *, hop_s: float, chunk_s: float, aligned: bool, server_pids: list[int],
    stats: Any = None, servers: Servers | None = None,
) -> dict[str, Any]:  # fmt: skip

    before_stats = stats.snapshot() if stats is not None else None
    load_before = load_average()
    cpu0 = procs.tree_cpu_seconds(server_pids) if server_pids else None
    parts0 = process_cpu(servers)
    own0, t0 = time.process_time(), time.perf_counter()
    results = asyncio.run(_phase(url, n, source, hop_s, chunk_s, aligned))
    wall = time.perf_counter() - t0
    own = time.process_time() - own0
    cpu = procs.tree_cpu_seconds(server_pids) - cpu0 if cpu0 is not None else None
    parts = {k: v - parts0.get(k, 0.0) for k, v in process_cpu(servers).items()}
    expected = expected_updates(source.duration_s, hop_s)
    server_lat, client_lat, lost, errors, closes = [], [], 0, [], []
    for r in results:
        if isinstance(r, BaseException):
            errors.append(type(r).__name__)
            lost += expected
            continue
        closes.append(r.close_code)
        errors += [e.get("kind", "?") for e in r.errors]
        lost += max(0, expected - len(r.updates))
        # the last update follows {"end": true}: its latency counts from END, the rest from their hop's audio
        server_lat += [u["latency_ms"] / 1000 for u in r.updates if u.get("latency_ms") is not None]
        client_lat += r.client_latency_s[: max(0, len(r.updates) - 1)]
    # late: the update reached the client more than one hop after the chunk completing its audio was sent
    # (end to end: includes any time the audio waited unread while the server paced the stream)
    late = sum(1 for s in client_lat if s > hop_s) + (1 if any(s > hop_s for s in server_lat[-1:]) else 0)
    stream_s = n * source.duration_s
    doc = {
        "streams": n,
        "seconds": source.duration_s,
        "video_fps": len(source.frames) / source.duration_s if source.frames else 0,
        "hop_s": hop_s,
        "updates_expected": expected * n,
        "updates_received": expected * n - lost,
        "updates_lost": lost,
        "updates_late": late,
        "errors": errors,
        "close_codes": sorted(set(c for c in closes if c is not None)),
        "server_latency_ms": latency_summary(server_lat),
        "client_latency_ms": latency_summary(client_lat),
        "wall_s": wall,
        "server_cpu_s": cpu,
        "server_cores_busy": cpu / wall if cpu is not None else None,
        "server_cpu_per_stream": cpu / stream_s if cpu is not None else None,
        "client_cpu_s": own,
        # per part: CPU seconds per stream-second (share of one core each stream costs there)
        "cpu_per_stream_by_part": {k: v / stream_s for k, v in sorted(parts.items())},
        "loadavg_before": load_before,
        "loadavg_after": load_average(),
    }
    p95 = doc["server_latency_ms"]["p95"]
    doc["realtime"] = bool(lost == 0 and late == 0 and not errors and p95 is not None and p95 < hop_s * 1000)
    doc["late_rule"] = (
        "client-side latency over one hop (every update but the last), or the last update's server latency"
    )
    if stats is not None:
        doc["triton_stats"] = stats_delta(before_stats, stats.snapshot())
    return doc


def report_line(doc: dict[str, Any]) -> str:
    s, c = doc["server_latency_ms"], doc["client_latency_ms"]
    parts = " ".join(f"{k} {v:.3f}" for k, v in doc.get("cpu_per_stream_by_part", {}).items() if v >= 0.001)
    return (
        f"N={doc['streams']:>2} {'A+V' if doc['video_fps'] else 'A  '}: latency p50 {fmt(s['p50'])} ms p95 {fmt(s['p95'])} "
        f"max {fmt(s['max'])} (client p95 {fmt(c['p95'])})  lost {doc['updates_lost']}/{doc['updates_expected']} "
        f"late {doc['updates_late']}  server CPU {fmt(doc['server_cpu_per_stream'], '.2f')} core/stream "
        f"({fmt(doc['server_cores_busy'], '.2f')} cores)  {'REAL-TIME' if doc['realtime'] else 'not real-time'}  "
        f"load {doc['loadavg_before']} -> {doc['loadavg_after']}"
        + (f"\n      core/stream by part: {parts}" if parts else "")
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-stream", help="N concurrent real-time streams: update latency, losses, CPU per stream")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="running front end's WebSocket, e.g. ws://127.0.0.1:8080/stream")
    target.add_argument("--repository", type=Path, help="start tritonserver + front end on this repository")
    p.add_argument("--profile", default="cpu", help="with --repository: Triton profile (default cpu)")
    p.add_argument("--streams", type=int, default=4, help="concurrent streams (default 4)")
    p.add_argument("--sweep", help="comma-separated stream counts, e.g. 1,2,4,6; stops after the first miss")
    p.add_argument("--keep-going", action="store_true", help="with --sweep: run every count even after a miss")
    p.add_argument("--seconds", type=float, default=30.0, help="each stream's length (default 30)")
    p.add_argument("--video", action="store_true", help="send 640x480 JPEG face frames too")
    p.add_argument("--fps", type=float, default=5.0, help="frames per second with --video (default 5)")
    p.add_argument("--hop", type=float, default=1.0, help="seconds between updates (default 1)")
    p.add_argument("--chunk", type=float, default=0.1, help="seconds of audio per message (default 0.1)")
    p.add_argument("--aligned", action="store_true", help="start every stream at once (updates due together)")
    p.add_argument("--warmup", type=float, default=6.0, help="seconds of one stream before measuring (default 6)")
    p.add_argument("--server-pid", type=int, action="append", default=[], help="with --url: server PIDs for CPU")
    p.add_argument("--triton-stats", help="with --url: Triton gRPC HOST:PORT for per-model statistics")
    p.add_argument("--output", type=Path, default=Path("build/bench_stream.json"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    counts = [int(c) for c in args.sweep.split(",")] if args.sweep else [args.streams]
    source = speech_source(args.seconds, args.video, args.fps)
    servers = None
    try:
        if args.repository:
            servers = Servers.start(args.repository, args.profile, args.output.parent / "bench_stream_logs")
            url, pids, stats_url = servers.ws_url, servers.pids, servers.grpc_url
        else:
            url, pids, stats_url = args.url, list(args.server_pid), args.triton_stats
        stats = TritonStats(stats_url) if stats_url else None
        if args.warmup > 0:
            warm = speech_source(args.warmup, args.video, args.fps)
            run_phase(url, 1, warm, hop_s=args.hop, chunk_s=args.chunk, aligned=True, server_pids=[])
        phases = []
        for n in counts:
            doc = run_phase(url, n, source, hop_s=args.hop, chunk_s=args.chunk, aligned=args.aligned,
                            server_pids=pids, stats=stats, servers=servers)  # fmt: skip
            phases.append(doc)
            sys.stdout.write(report_line(doc) + "\n")
            sys.stdout.flush()
            if not doc["realtime"] and args.sweep and not args.keep_going:
                break
    finally:
        if servers is not None:
            servers.stop()
    best = max((d["streams"] for d in phases if d["realtime"]), default=0)
    out = {
        "command": " ".join(sys.argv),
        "host": host_info(),
        "video": args.video,
        "profile": args.profile if args.repository else None,
        "aligned": args.aligned,
        "largest_realtime_streams": best,
        "phases": phases,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2, default=float))
    sys.stdout.write(f"largest real-time N: {best}  results: {args.output}\n")
    return 0
