"""Batch throughput on this machine: a generated clip library through ``fusion-emotion batch``.

Makes (or reuses) a library of 720p H.264/AAC clips with a face and speech,
starts tritonserver (``--profile``, default cpu) and the front end on free
ports, runs ``fusion-emotion batch --url`` over the library in whole-clip mode
and in ``--timeline`` mode, and prints media minutes per hour and the server's
CPU seconds per media minute (tritonserver and its stubs, the front end), the
number the per-instance estimate in perf/README.md is scaled from. Asserts
nothing; numbers on a shared machine are noisy: note the load average.

    .venv/bin/python perf/batch_throughput.py --repository build/repo --library build/library \
        --count 12 --seconds 20 --output build/batch_perf
"""

# ruff: noqa: T201 - a benchmark prints its numbers

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from fusion_emotion.client.batch_inputs import media_duration

from fusion_emotion import contract as C
from fusion_emotion import testmedia
from fusion_emotion.cli import main as fe
from fusion_emotion.core.fusion import FusionHead
from fusion_emotion.core.rows import decode_row
from fusion_emotion.core.timeline import compute_timeline
from fusion_emotion.core.windows import window_params
from fusion_emotion.server.procs import free_port, tree_cpu_seconds


def make_library(out: Path, count: int, seconds: float, bitrate: int) -> list[Path]:
    """``count`` MP4 clips (1280x720 30 fps H.264 + 48 kHz AAC speech with pauses), made once."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"clip{i:03d}_{seconds:g}s.mp4" for i in range(count)]
    missing = [p for p in paths if not p.exists()]
    if missing:
        speech = testmedia.speech(rate=48_000)
        pause = np.zeros(24_000, dtype=np.float32)
        reps = int(np.ceil(seconds * 48_000 / (len(speech) + len(pause))))
        track = np.concatenate([np.concatenate([speech, pause])] * reps)[: int(seconds * 48_000)]
        for i, path in enumerate(paths):
            if path.exists():
                continue
            data = testmedia.mp4(seconds=seconds, audio=track, audio_rate=48_000, video_bitrate=bitrate, seed=i)
            path.with_suffix(".tmp").write_bytes(data)
            path.with_suffix(".tmp").replace(path)
            print(f"made {path} ({len(data) / 1e6:.1f} MB)")
    return paths


# Per-stage budget of perf/README.md ("GPU expectations"): encoder GPU ms per pass (R3D-18 + HuBERT-base, FP16,
# batched), CPU core-equivalents of an instance (vCPUs are hyper-threads: 2 per core, SMT counted +30 %), and the
# front end + gRPC + BLS copies per request in core-seconds.
GPU_MS_PER_PASS = {"T4 (g4dn)": (6.1, 8.5), "A10G (g5)": (5.6, 8.0)}
CORE_EQUIVALENTS = {"xlarge (4 vCPU)": 2.6, "2xlarge (8 vCPU)": 5.2}
TRANSPORT_CORE_S = (0.05, 0.1)
WINDOW_S = 4.0


def cpu_stages(repository: Path, clip: Path, repeats: int = 3) -> dict[str, float]:
    """CPU seconds of the work that stays on the CPU on a GPU instance, for one library clip (median of repeats):
    whole clip = decode + QA + encoder inputs (``decode_row``); timeline = the timeline pass with the encoders
    replaced by zeros (decode, per-window frames and audio, QA, fusion head)."""
    data = clip.read_bytes()
    head = FusionHead.load(repository / C.FUSION_HEAD / "1" / C.HEAD_WEIGHTS_FILENAME)

    def zeros(dim: int):
        return lambda batch: np.zeros((len(batch), dim), np.float32)

    def cpu(fn) -> float:
        runs = []
        for _ in range(repeats):
            t0 = time.process_time()
            fn()
            runs.append(time.process_time() - t0)
        return statistics.median(runs)

    whole = cpu(lambda: decode_row(data, None))
    timeline = cpu(
        lambda: compute_timeline(
            data,
            None,
            window_params(),
            encode_video=zeros(C.VIDEO_EMBED_DIM),
            encode_audio=zeros(C.AUDIO_EMBED_DIM),
            head=head,
        )
    )
    return {"duration_s": media_duration(data) or 0.0, "whole_cpu_s": whole, "timeline_cpu_s": timeline}


def estimate(stages: dict[str, float]) -> list[str]:
    """Expected media minutes per hour per instance: the CPU side (measured here, scaled to the instance's
    cores) against the GPU side (encoder budget), whichever binds."""
    dur = stages["duration_s"]
    lines = []
    for mode, cpu_s, passes in (
        ("whole clip", stages["whole_cpu_s"], 1.0),
        ("timeline", stages["timeline_cpu_s"], dur / WINDOW_S + 1.0),
    ):
        for gpu, (g_lo, g_hi) in GPU_MS_PER_PASS.items():
            for size, cores in CORE_EQUIVALENTS.items():
                # per file: CPU core-s and GPU s; capacity in media seconds per wall second
                cpu_hi, cpu_lo = cpu_s + TRANSPORT_CORE_S[1], cpu_s + TRANSPORT_CORE_S[0]
                cap_cpu = (cores * dur / cpu_hi, cores * dur / cpu_lo)
                cap_gpu = (dur / (passes * g_hi / 1000), dur / (passes * g_lo / 1000))
                lo, hi = min(cap_cpu[0], cap_gpu[0]), min(cap_cpu[1], cap_gpu[1])
                binds = "CPU" if cap_cpu[1] <= cap_gpu[0] else "GPU" if cap_gpu[1] <= cap_cpu[0] else "both"
                lines.append(
                    f"{mode:10s} {gpu:10s} {size:16s}: {lo * 60:,.0f}-{hi * 60:,.0f} media minutes per hour "
                    f"({binds} binds)"
                )
    return lines


def wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[3]} exited ({proc.returncode}) before {url} was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def _run_mode(mode: str, args: argparse.Namespace, front: int, pids: list[int]) -> dict[str, object]:
    """One ``fusion-emotion batch`` over the library through the front end, with the servers' CPU seconds."""
    out = args.output / f"{mode}.jsonl"
    out.unlink(missing_ok=True)
    cmd = ["batch", str(args.library), "--output", str(out), "--url", f"http://127.0.0.1:{front}"]
    cmd += ["--concurrency", str(args.concurrency if mode == "whole" else 2), "--no-index"]
    if mode == "timeline":
        cmd.append("--timeline")
    load0 = os.getloadavg()[0]
    cpu0, t0 = tree_cpu_seconds(pids), time.monotonic()
    rc = fe(cmd)
    cpu, wall = tree_cpu_seconds(pids) - cpu0, time.monotonic() - t0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    ok = [r for r in records if r["status"] == "ok"]
    media_min = sum(r["duration_s"] or 0.0 for r in ok) / 60
    return {
        "exit_status": rc,
        "files_ok": len(ok),
        "files_failed": len(records) - len(ok),
        "media_minutes": round(media_min, 2),
        "wall_s": round(wall, 1),
        "media_minutes_per_hour": round(media_min / (wall / 3600), 1),
        "server_cpu_s_per_media_minute": round(cpu / media_min, 1) if media_min else None,
        "load_average_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }


def _report(args: argparse.Namespace, front: int, pids: list[int]) -> None:
    report: dict[str, object] = {}
    for mode in args.modes.split(","):
        report[mode] = _run_mode(mode, args, front, pids)
        print(f"{mode}: {json.dumps(report[mode])}")
    stages = cpu_stages(args.repository, sorted(args.library.glob("*.mp4"))[0])
    report["cpu_stages_one_clip"] = {k: round(v, 3) for k, v in stages.items()}
    print(
        f"CPU part of one clip (what stays on the CPU on a GPU instance): {json.dumps(report['cpu_stages_one_clip'])}"
    )
    report["estimate"] = estimate(stages)
    print("expected per instance (CPU stages measured here, GPU from the per-stage budget):")
    for line in report["estimate"]:
        print("  " + line)
    (args.output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output / 'report.json'} ({os.cpu_count()} CPUs here)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repository", type=Path, required=True, help="exported model repository")
    p.add_argument("--library", type=Path, default=Path("build/library"))
    p.add_argument("--count", type=int, default=12)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--bitrate", type=int, default=2_000_000, help="video bits/s (default 2 Mbit/s)")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--modes", default="whole,timeline")
    p.add_argument("--output", type=Path, default=Path("build/batch_perf"))
    args = p.parse_args(argv)

    make_library(args.library, args.count, args.seconds, args.bitrate)
    args.output.mkdir(parents=True, exist_ok=True)  # before tritonserver.log is opened there
    grpc, http, metrics, front = free_port(), free_port(), free_port(), free_port()
    exe = [sys.executable, "-m", "fusion_emotion.cli"]
    triton = subprocess.Popen(
        [*exe, "triton", "--repository", str(args.repository), "--profile", args.profile]
        + ["--grpc-port", str(grpc), "--http-port", str(http), "--metrics-port", str(metrics)],
        stdout=(args.output / "tritonserver.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    serve = None
    try:
        wait_http(f"http://127.0.0.1:{http}/v2/health/ready", 600, triton)
        serve = subprocess.Popen(
            [*exe, "serve", "--triton-url", f"127.0.0.1:{grpc}", "--port", str(front), "--host", "127.0.0.1"]
            + ["--max-body-bytes", str(100 * 1024 * 1024), "--request-timeout", "590"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_http(f"http://127.0.0.1:{front}/ping", 120, serve)
        _report(args, front, [triton.pid, serve.pid])
    finally:
        for proc in (serve, triton):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
