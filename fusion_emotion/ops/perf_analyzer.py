"""NVIDIA's real ``perf_analyzer`` binary, runnable here: ``fusion-emotion perf-analyzer ARGS...``.

Why this exists: perf_analyzer is how Triton users measure a model, so our
numbers must be reproducible with it, not only with ``fusion-emotion bench``.
The binary ships in the ``tritonclient`` 2.51.0 wheel (the bundled server's
version; later wheels need glibc 2.38 and fail on Debian 12). ``make setup``
installs that wheel and the CUDA runtime it links with ``pip --no-deps --target
<venv>/opt/perf-analyzer`` (``requirements/perf-analyzer.txt``), off
``sys.path``: the 2.51 Python package pins protobuf < 5, which onnx refuses, and
only its ``bin/perf_analyzer`` is used. The binary links ``libb64.so.0d``
(Debian ``libb64-0d``) and ``libcudart.so.12`` (PyPI
``nvidia-cuda-runtime-cu12``, located through its installed file list); this
module puts the latter on ``LD_LIBRARY_PATH`` and passes every argument through
unchanged.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusion_emotion import contract as C
from fusion_emotion.ops.server_stats import CpuMeter, TritonStats, stats_delta

log = logging.getLogger(__name__)

BINARY_ENV = "FUSION_EMOTION_PERF_ANALYZER"  # explicit binary (e.g. NVIDIA's SDK image), used as is
TOOL_SUBDIR = Path("opt") / "perf-analyzer"  # under sys.prefix, written by `make setup`
CUDART_DIST = "nvidia-cuda-runtime-cu12"
CUDART_SONAME = "libcudart.so.12"
DISAGREE = 0.15  # perf_analyzer and bench measure the same loop: a larger gap needs an explanation


def tool_prefix() -> Path:
    """Where ``make setup`` installs the perf_analyzer wheel for this environment."""
    return Path(sys.prefix) / TOOL_SUBDIR


def cuda_runtime_dirs(search_paths: Iterable[str | Path] | None = None) -> list[Path]:
    """Folders holding ``libcudart.so.12`` of an installed ``nvidia-cuda-runtime-cu12``.

    Found from the distribution's own file list (``importlib.metadata``), so no
    site-packages layout is assumed. ``search_paths`` None means ``sys.path``.
    """
    paths = sys.path if search_paths is None else [str(p) for p in search_paths]
    found: list[Path] = []
    for dist in importlib.metadata.distributions(path=paths):
        if (dist.metadata["Name"] or "").lower() != CUDART_DIST:
            continue
        for f in dist.files or []:
            if f.name == CUDART_SONAME:
                folder = Path(dist.locate_file(f)).resolve().parent
                if folder not in found:
                    found.append(folder)
    return found


@dataclass(frozen=True)
class PerfAnalyzer:
    """A perf_analyzer binary and the library folders it needs on ``LD_LIBRARY_PATH``."""

    binary: Path
    lib_dirs: tuple[Path, ...] = ()

    @classmethod
    def locate(cls, prefix: Path | None = None) -> PerfAnalyzer:
        """$FUSION_EMOTION_PERF_ANALYZER, else the ``make setup`` install, else ``perf_analyzer`` on PATH."""
        override = os.environ.get(BINARY_ENV)
        if override:
            binary = Path(override)
            if not binary.is_file():
                raise FileNotFoundError(f"{BINARY_ENV}={override} is not a file")
            return cls(binary, tuple(cuda_runtime_dirs()))
        prefix = tool_prefix() if prefix is None else prefix
        binary = prefix / "bin" / "perf_analyzer"
        if binary.is_file():
            dirs = cuda_runtime_dirs([prefix]) or cuda_runtime_dirs()
            if not dirs:
                raise FileNotFoundError(f"{CUDART_SONAME} ({CUDART_DIST}) not found in {prefix}: run `make setup`")
            return cls(binary, tuple(dirs))
        on_path = shutil.which("perf_analyzer")
        if on_path:  # NVIDIA's SDK image: its own libraries are already where the loader looks
            return cls(Path(on_path), tuple(cuda_runtime_dirs()))
        raise FileNotFoundError(
            f"perf_analyzer not found ({binary} missing, none on PATH, {BINARY_ENV} unset): run `make setup`"
        )

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default os.environ) with the library folders first on LD_LIBRARY_PATH."""
        env = dict(os.environ if base is None else base)
        parts = [str(d) for d in self.lib_dirs] + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
        if parts:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(dict.fromkeys(parts))
        return env

    def command(self, args: Sequence[str]) -> list[str]:
        return [str(self.binary), *args]

    def run(self, args: Sequence[str], timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run to completion, capturing stdout and stderr (text)."""
        return subprocess.run(
            self.command(args), env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
        )


def ensure_demo_repository(path: Path) -> Path:
    """``path`` as a model repository: exported with random-init weights (seed 0) when it holds none yet."""

    if not (path / C.ENSEMBLE / "config.pbtxt").is_file():
        from fusion_emotion.export.repository import export_random  # optional: [export]

        log.info("exporting random-init weights (seed 0) to %s", path)
        export_random(path, seed=0)
    return path


# ----------------------------------------------------------------------------- arguments and output


def concurrency_args(
    model: str,
    url: str,
    input_data: Path,
    concurrency: int,
    requests: int,
    *,
    protocol: str = "grpc",
    csv_path: Path | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """One closed-loop run of ``requests`` requests with ``concurrency`` in flight on real input data.

    ``--request-count`` fixes the number of measured requests (no stability
    windows: on a shared machine they may never settle), like ``bench --requests``.
    """
    if concurrency < 1 or requests < 1:
        raise ValueError("concurrency and requests must be >= 1")
    args = [
        "-m", model, "-u", url, "-i", protocol,
        "--input-data", str(input_data),
        "--concurrency-range", str(concurrency),
        "--request-count", str(requests),
    ]  # fmt: skip
    if csv_path is not None:
        args += ["-f", str(csv_path), "--verbose-csv"]
    return args + list(extra)


def read_csv(path: Path) -> list[dict[str, float]]:
    """perf_analyzer's ``-f`` CSV: the measurement rows (keys as its header names them), numbers as floats.

    Reading stops at the first blank line, where other tables may follow.
    """
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        rows = []
        for values in reader:
            if not any(v.strip() for v in values):
                break
            rows.append({k: float(v) for k, v in zip(header, values) if k and v.strip()})
    return rows


_BLOCK = re.compile(r"^Request concurrency: (\d+)\s*$", re.M)
_FIELD = {
    "request_count": re.compile(r"^\s*Request count: (\d+)", re.M),
    "throughput": re.compile(r"^\s*Throughput: ([0-9.eE+-]+) infer/sec", re.M),
    "server_success": re.compile(r"^\s*Successful request count: (\d+)", re.M),
}


def parse_report(stdout: str) -> dict[int, dict[str, float]]:
    """Per concurrency: the client's request count and throughput and the server's successful count."""
    out: dict[int, dict[str, float]] = {}
    blocks = list(_BLOCK.finditer(stdout))
    for i, m in enumerate(blocks):
        end = blocks[i + 1].start() if i + 1 < len(blocks) else len(stdout)
        text = stdout[m.end() : end]
        values = {k: float(rx.search(text).group(1)) for k, rx in _FIELD.items() if rx.search(text)}
        out[int(m.group(1))] = values
    return out


def measure(
    pa: PerfAnalyzer,
    url: str,
    input_data: Path,
    concurrency: int,
    requests: int,
    csv_path: Path,
    *,
    model: str = "fusion_emotion",
    server_pids: Sequence[int] = (),
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """One perf_analyzer run, reported like ``bench``'s runs (throughput_rps, latency_ms, errors, ...).

    Also takes the Triton statistics and the server's CPU seconds around the
    run, the same way ``bench`` does, so the two tools can be compared on what
    the server saw, not only on what each client timed.
    """

    stats = TritonStats(url)
    meter = CpuMeter(server_pids) if server_pids else None
    try:
        before = stats.snapshot()
        cpu0 = meter.read() if meter else 0.0
        args = concurrency_args(model, url, input_data, concurrency, requests, csv_path=csv_path)
        proc = pa.run(args, timeout=timeout_s)
        cpu_s = meter.read() - cpu0 if meter else None
        server = stats_delta(before, stats.snapshot())
    finally:
        stats.close()
    report = parse_report(proc.stdout).get(concurrency, {})
    rows = read_csv(csv_path) if proc.returncode == 0 and csv_path.is_file() else []
    row = rows[0] if rows else {}
    done = int(report.get("request_count", 0)) if row else 0
    out: dict[str, Any] = {
        "target": f"perf_analyzer {url}",
        "concurrency": concurrency,
        "requests": requests,
        "succeeded": done,
        "errors": 0 if proc.returncode == 0 else requests,
        "returncode": proc.returncode,
        "error_samples": [] if proc.returncode == 0 else _error_lines(proc.stdout + proc.stderr),
        "throughput_rps": row.get("Inferences/Second", 0.0),
        "latency_ms": {
            "avg": row["Avg latency"] / 1000 if row else None,
            **{f"p{p}": row[f"p{p} latency"] / 1000 if row else None for p in (50, 90, 95, 99)},
        },
        "triton_stats": server,
        "command": pa.command(args),
    }
    if cpu_s is not None:
        out["cpu_ms_per_request"] = cpu_s / requests * 1000.0
    return out


def compare_rows(pa: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """perf_analyzer vs ``bench`` at one concurrency: ratios (pa / bench) and which of them disagree by > 15 %.

    Both tools drive the same closed loop on the same clip, so their
    throughput and latency should match; CPU per request (server side) says
    whether a difference is the work done or the machine's background load.
    """

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    out: dict[str, Any] = {
        "throughput_ratio": ratio(pa["throughput_rps"], other["throughput_rps"]),
        "avg_ratio": ratio(pa["latency_ms"]["avg"], other["latency_ms"]["avg"]),
        "p50_ratio": ratio(pa["latency_ms"]["p50"], other["latency_ms"]["p50"]),
        "cpu_ratio": ratio(pa.get("cpu_ms_per_request"), other.get("cpu_ms_per_request")),
    }
    # a missing latency (pooled rounds have no median) is not compared; a missing throughput ratio is a failure
    out["disagree"] = [k for k in ("avg_ratio", "p50_ratio") if out[k] is not None and abs(out[k] - 1.0) > DISAGREE]
    if out["throughput_ratio"] is None or abs(out["throughput_ratio"] - 1.0) > DISAGREE:
        out["disagree"].insert(0, "throughput_ratio")
    return out


def _error_lines(text: str) -> list[str]:
    lines = [ln.strip() for ln in text.splitlines() if "error" in ln.lower() or "failed" in ln.lower()]
    return lines[:5] or [text.strip()[-300:]]


# ----------------------------------------------------------------------------- CLI


def register(sub: argparse._SubParsersAction) -> None:
    # prefix_chars that no argument uses: every ARG (-m, --help, --) reaches perf_analyzer unchanged
    p = sub.add_parser(
        "perf-analyzer",
        help="run NVIDIA perf_analyzer (2.51, installed by make setup) with the libraries it needs",
        add_help=False,
        prefix_chars="\0",
    )
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        pa = PerfAnalyzer.locate()
    except FileNotFoundError as exc:
        log.error("%s", exc)
        return 2
    cmd = pa.command(args.args)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(cmd[0], cmd, pa.env())  # perf_analyzer's own exit status, signals and output
    return 0  # not reached
