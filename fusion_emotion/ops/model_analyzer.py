"""Triton Model Analyzer in local launch mode on this project's tritonserver: ``make model-analyzer``.

Why this exists: Model Analyzer searches model configurations by launching
tritonserver itself and driving perf_analyzer, which here needs (1) the bundled
server with the environment ``fusion-emotion triton`` prepares (Python-backend
stub directory, LD_LIBRARY_PATH, this venv first on PATH) and (2) the 2.51
perf_analyzer with its CUDA runtime. Model Analyzer itself lives in its own
venv (``build/model-analyzer/venv``, ``requirements/model-analyzer.txt``): it
needs tritonclient[all] 2.51's protobuf < 5 and numba/optuna, none of which
belong in the serving venv.

What is searched (quick mode, bounded): ``preprocess`` as a BLS model with the
two encoders as its composing models, all on CPU: instance counts and
``max_batch_size`` with dynamic batching. ``fusion_head`` (an ensemble step
costing well under 1 % of a request) is left out; Model Analyzer cannot search
the ensemble's steps and the BLS-called encoders in one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fusion_emotion import contract as C
from fusion_emotion.ops import bench
from fusion_emotion.ops.perf_analyzer import PerfAnalyzer, ensure_demo_repository
from fusion_emotion.ops.perf_inputs import make_input_data
from fusion_emotion.server.launcher import Bundle, ServerOptions, TritonProcess, build_command, server_env

log = logging.getLogger(__name__)

# Flags the analyzer sets on every server it launches; the wrapper must not repeat them.
ANALYZER_OWNED = ("--model-repository", "--http-port", "--grpc-port", "--metrics-port", "--model-control-mode")
# Flags of `fusion-emotion triton` that do not apply to a server the analyzer drives: it loads models itself
# (explicit control, one variant at a time) and writes each variant as config.pbtxt.
NOT_FOR_ANALYZER = ("--load-model", "--model-config-name", "--exit-on-error", "--strict-readiness")
PROFILE_MODEL = C.PREPROCESS
COMPOSING = (C.VIDEO_ENCODER, C.AUDIO_ENCODER)


def prepare_repository(src: Path, dst: Path, profile: str = "cpu") -> Path:
    """A copy of ``src`` (hard links) whose ``config.pbtxt`` is the ``profile`` config of each model.

    The analyzer reads and rewrites ``config.pbtxt`` only, so the profile's
    ``configs/<profile>.pbtxt`` has to be the default config in its input repository.
    """
    if dst.exists():
        shutil.rmtree(dst)
    for model_dir in sorted(p for p in src.iterdir() if (p / "config.pbtxt").is_file()):
        for path in model_dir.rglob("*"):
            rel = path.relative_to(src)
            if "configs" in rel.parts or "__pycache__" in rel.parts or path.is_dir():
                continue
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
        profile_cfg = model_dir / "configs" / f"{profile}.pbtxt"
        if profile_cfg.is_file():
            (dst / model_dir.name / "config.pbtxt").unlink()
            shutil.copy2(profile_cfg, dst / model_dir.name / "config.pbtxt")
    return dst


def server_wrapper_text(repository_hint: Path) -> str:
    """A shell script that execs the bundled tritonserver as ``fusion-emotion triton`` would, plus the analyzer's args.

    Built from the launcher's own ``build_command`` and ``server_env`` (one
    definition of how our server is started), minus the flags the analyzer owns.
    Each launch gets its own Python-backend shared-memory prefix.
    """

    bundle = Bundle.locate()
    cmd = build_command(ServerOptions(repository_hint, profile="cpu"), bundle.binary, bundle.backend_dir())
    keep = []
    for arg in cmd[1:]:
        key = arg.split("=", 1)[0]
        if key in ANALYZER_OWNED or key in NOT_FOR_ANALYZER:
            continue
        if arg.startswith("--backend-config=python,shm-region-prefix-name="):
            continue
        keep.append(shlex.quote(arg))
    env = server_env(bundle)
    lines = [
        "#!/bin/sh",
        "# Written by fusion_emotion.ops.model_analyzer: the bundled tritonserver with the environment",
        "# `fusion-emotion triton` prepares; Model Analyzer appends its own flags.",
        f"export LD_LIBRARY_PATH={shlex.quote(env['LD_LIBRARY_PATH'])}",
        f"export PATH={shlex.quote(env['PATH'])}",
        f"exec {shlex.quote(str(bundle.binary))} {' '.join(keep)} \\",
        '  "--backend-config=python,shm-region-prefix-name=fema$$_" "$@"',
    ]
    return "\n".join(lines) + "\n"


def analyzer_config(
    repository: Path,
    out: Path,
    wrapper: Path,
    perf_analyzer: Path,
    input_data: Path,
    *,
    max_instances: int = 4,
    max_batch: int = 4,
    concurrency: int = 4,
    window_requests: int = 4,
    search_percent: float = 1.0,
    ports: tuple[int, int, int] = (18611, 18612, 18613),
) -> dict[str, Any]:
    """The analyzer's profile config (JSON is YAML): bounded quick search, CPU only, short count windows.

    Every configuration is measured at one concurrency (``concurrency-range`` in
    perf_analyzer_flags overrides the search's ``2 * batch * instances``, which is
    64 for our default config: ~10 min per measurement on this CPU), and the quick
    search visits ``search_percent`` % of the space instead of its default 5-10 %.
    """
    grpc, http, metrics = ports
    return {
        "model_repository": str(repository),
        "output_model_repository_path": str(out / "output_repository"),
        "override_output_model_repository": True,
        "export_path": str(out / "results"),
        "checkpoint_directory": str(out / "checkpoints"),
        "triton_launch_mode": "local",
        "triton_server_path": str(wrapper),
        "triton_output_path": str(out / "tritonserver.log"),
        "perf_analyzer_path": str(perf_analyzer),
        "perf_output": True,
        "perf_output_path": str(out / "perf_analyzer.log"),
        "perf_analyzer_timeout": 900,
        "perf_analyzer_max_auto_adjusts": 1,
        "client_protocol": "grpc",
        "triton_grpc_endpoint": f"127.0.0.1:{grpc}",
        "triton_http_endpoint": f"127.0.0.1:{http}",
        "triton_metrics_url": f"http://127.0.0.1:{metrics}/metrics",
        "client_max_retries": 300,
        "collect_cpu_metrics": True,
        "run_config_search_mode": "quick",
        "run_config_search_min_instance_count": 1,
        "run_config_search_max_instance_count": max_instances,
        "run_config_search_min_model_batch_size": 1,
        "run_config_search_max_model_batch_size": max_batch,
        "min_percentage_of_search_space": search_percent,
        "max_percentage_of_search_space": search_percent,
        "concurrency_sweep_disable": True,
        "num_configs_per_model": 2,
        "bls_composing_models": ",".join(COMPOSING),
        "cpu_only_composing_models": ",".join(COMPOSING),
        "profile_models": {
            PROFILE_MODEL: {
                "cpu_only": True,
                "perf_analyzer_flags": {
                    "input-data": str(input_data),
                    "concurrency-range": concurrency,
                    "measurement-mode": "count_windows",
                    "measurement-request-count": window_requests,
                    "stability-percentage": 50,
                    "max-trials": 5,
                },
            }
        },
        "objectives": ["perf_throughput"],
    }


def analyzer_env(venv_bin: Path) -> dict[str, str]:
    """The analyzer's environment: its venv first on PATH, and perf_analyzer's CUDA runtime on LD_LIBRARY_PATH."""

    pa = PerfAnalyzer.locate()
    env = pa.env()
    env["PATH"] = os.pathsep.join((str(venv_bin), str(pa.binary.parent), env.get("PATH", "")))
    return env


def run_profile(cmd: list[str], env: dict[str, str], time_limit_s: float, grace_s: float = 1200.0) -> int:
    """``model-analyzer profile``, stopped like Ctrl-C at the time limit: it finishes the current
    measurement, saves its checkpoint and stops the server it launched (a kill would orphan that server)."""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        return proc.wait(timeout=time_limit_s)
    except subprocess.TimeoutExpired:
        log.warning("time limit (%.0f s) reached: asking model-analyzer to stop after this measurement", time_limit_s)
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log.error("model-analyzer did not stop in %.0f s; killing it", grace_s)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return 124


_COUNT = re.compile(r"instance_group\s*\{[^}]*?count:\s*(\d+)", re.S)
_BATCH = re.compile(r"^max_batch_size:\s*(\d+)", re.M)


def variant_settings(config_text: str) -> dict[str, Any]:
    """Instance count, max_batch_size and dynamic batching of one config.pbtxt (the analyzer's text format)."""
    count, batch = _COUNT.search(config_text), _BATCH.search(config_text)
    return {
        "instances": int(count.group(1)) if count else 1,
        "max_batch_size": int(batch.group(1)) if batch else 0,
        "dynamic_batching": "dynamic_batching" in config_text,
    }


def measurements(checkpoint: Path, output_repository: Path) -> list[dict[str, Any]]:
    """Every measurement the analyzer saved: the variants measured together, req/s and latency (ms).

    Read from its checkpoint (Model Analyzer 1.44's JSON layout), so an interrupted
    search still yields what it measured.
    """
    doc = json.loads(checkpoint.read_text())
    out = []
    for variants in doc["ResultManager.results"]["_results"].values():
        for variant, (_run_config, by_key) in variants.items():
            for key, m in by_key.items():
                tail = key.split()[-1]
                composing = tail.split(",") if "_config_" in tail and not tail.startswith("-") else []
                data = {tag: v["_value"] for tag, v in m["_model_config_measurements"][0]["_non_gpu_data"]}
                names = [variant, *composing]
                out.append(
                    {
                        "variants": names,
                        "settings": {
                            n.rsplit("_config_", 1)[0]: variant_settings(
                                (output_repository / n / "config.pbtxt").read_text()
                            )
                            for n in names
                            if (output_repository / n / "config.pbtxt").is_file()
                        },
                        "concurrency": int(
                            m["_model_config_measurements"][0]["_model_specific_pa_params"]["concurrency-range"]
                        ),
                        "throughput_rps": data.get("perf_throughput"),
                        "latency_avg_ms": data.get("perf_latency_avg"),
                        "latency_p99_ms": data.get("perf_latency_p99"),
                    }
                )
    return out


def recommended_repository(src: Path, variants: list[str], output_repository: Path, dst: Path) -> Path:
    """A hard-linked copy of the exported repository ``src`` serving the analyzer's variant configs
    under ``--profile cpu`` (a model's ``configs/cpu.pbtxt`` if it has one, else its ``config.pbtxt``)."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, copy_function=os.link, ignore=shutil.ignore_patterns("__pycache__"))
    for variant in variants:
        model = variant.rsplit("_config_", 1)[0]
        text = (output_repository / variant / "config.pbtxt").read_text()
        target = dst / model / "configs" / "cpu.pbtxt"
        if not target.is_file():
            target = dst / model / "config.pbtxt"
        target.unlink()  # a hard link to the source: replace, never write through
        target.write_text(f"# Model Analyzer's {variant} (make model-analyzer)\n{text}")
    return dst


def compare(
    ours: Path, theirs: Path, video: bytes, out: Path, *, concurrency: int, requests: int, rounds: int
) -> dict[str, Any]:
    """Our cpu profile vs the analyzer's pick, two servers at once, bench runs alternated A B A B."""

    servers = {
        "ours": TritonProcess(ServerOptions(ours, "cpu", 18621, 18622, 18623), out / "ours.log"),
        "model_analyzer": TritonProcess(ServerOptions(theirs, "cpu", 18631, 18632, 18633), out / "theirs.log"),
    }
    targets: dict[str, Any] = {}
    try:
        for server in servers.values():
            server.start()
        for key, server in servers.items():
            server.wait_ready(timeout=900)
            target = bench.TritonTarget(f"127.0.0.1:{server.opts.grpc_port}", video, None)
            target.server_pids = [server.proc.pid]
            targets[key] = target
        plan = bench.Plan(requests, [concurrency], rounds, warmup=2, progress=False)
        results = bench.run_plan(targets, plan)
    finally:
        for target in targets.values():
            target.close()
        for server in servers.values():
            server.stop()
    return bench.summarise(results, "model_analyzer", concurrency)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repository", type=Path, default=Path("build/perf/repo"), help="exported model repository")
    p.add_argument("--venv", type=Path, default=Path("build/model-analyzer/venv"), help="Model Analyzer's venv")
    p.add_argument("--output-dir", type=Path, default=Path("build/model-analyzer"))
    p.add_argument("--video", type=Path, help="clip (default: generate the 1280x720 RAVDESS-like test clip)")
    p.add_argument("--max-instances", type=int, default=4)
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight for every measurement")
    p.add_argument("--window-requests", type=int, default=4, help="perf_analyzer count window (requests)")
    p.add_argument("--search-percent", type=float, default=1.0, help="%% of the search space quick mode visits")
    p.add_argument("--time-limit", type=float, default=3600.0, help="seconds before the search is asked to stop")
    p.add_argument("--skip-profile", action="store_true", help="use the measurements of an earlier run")
    p.add_argument("--compare-requests", type=int, default=12, help="bench requests per round (0: no comparison)")
    p.add_argument("--compare-rounds", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    out = args.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    analyzer = args.venv.resolve() / "bin" / "model-analyzer"
    if not analyzer.is_file():
        log.error("%s missing: run `make model-analyzer` (it creates that venv)", analyzer)
        return 2
    src = ensure_demo_repository(args.repository.resolve())
    if args.video:
        video = args.video.read_bytes()
    else:
        from fusion_emotion import testmedia  # optional: [dev] (a generated clip when --video is not given)

        video = testmedia.mp4(audio=testmedia.speech(rate=48_000), audio_rate=48_000)
    env = analyzer_env(analyzer.parent)
    summary: dict[str, Any] = {"loadavg_before": os.getloadavg()}
    if not args.skip_profile:
        repo = prepare_repository(src, out / "repository")
        input_data = out / "input_data.json"
        input_data.write_text(json.dumps(make_input_data([(video, None)])))
        wrapper = out / "tritonserver"
        wrapper.write_text(server_wrapper_text(repo))
        wrapper.chmod(0o755)
        config = analyzer_config(
            repo, out, wrapper, PerfAnalyzer.locate().binary, input_data,
            max_instances=args.max_instances, max_batch=args.max_batch,
            concurrency=args.concurrency, window_requests=args.window_requests, search_percent=args.search_percent,
        )  # fmt: skip
        for stale in ("checkpoints", "results", "output_repository"):
            shutil.rmtree(out / stale, ignore_errors=True)
        config_path = out / "profile.yaml"
        config_path.write_text(json.dumps(config, indent=2))
        started = time.monotonic()
        code = run_profile([str(analyzer), "profile", "-f", str(config_path)], env, args.time_limit)
        summary |= {"profile_exit": code, "profile_s": time.monotonic() - started}
        log.info("profile exited %s after %.0f s, load average %s", code, summary["profile_s"], os.getloadavg())
    checkpoint = out / "checkpoints" / "0.ckpt"
    if not checkpoint.is_file():
        log.error("no measurements saved (%s missing)", checkpoint)
        return 1
    found = [m for m in measurements(checkpoint, out / "output_repository") if m["throughput_rps"]]
    if not found:
        log.error("the analyzer saved no successful measurement")
        return 1
    found.sort(key=lambda m: -m["throughput_rps"])
    best = found[0]
    summary |= {"measurements": found, "recommended": best}
    for m in found:
        log.info("%.3f req/s  avg %.0f ms  %s", m["throughput_rps"], m["latency_avg_ms"], m["settings"])
    report = [str(analyzer), "report", "-e", str(out / "results"), "--checkpoint-directory", str(out / "checkpoints")]
    default = f"{C.PREPROCESS}_config_default"
    configs = ",".join(dict.fromkeys([best["variants"][0], default]))
    summary["report_exit"] = subprocess.run([*report, "--report-model-configs", configs], env=env).returncode
    if args.compare_requests > 0 and any("_config_default" not in v for v in best["variants"]):
        theirs = recommended_repository(src, best["variants"], out / "output_repository", out / "recommended")
        summary["comparison"] = compare(
            src, theirs, video, out, concurrency=args.concurrency, requests=args.compare_requests,
            rounds=args.compare_rounds,
        )  # fmt: skip
    summary["loadavg_after"] = os.getloadavg()
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    log.info("summary: %s", out / "summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
