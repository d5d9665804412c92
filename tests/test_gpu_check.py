"""perf/gpu_check.sh as its own smoke run (``--device cpu --quick``): the script a GPU machine runs stays runnable.

It runs as on the bare GPU machine: the machine's own python with the package laid out by
scripts/lint_imports.py on PYTHONPATH (here the venv's python, which has the same packages as that machine
plus DALI, so the DALI stage runs on the CPU variant too). The numbers of a CPU run say nothing about a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_run(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    proc = subprocess.run(
        ["bash", str(ROOT / "perf" / "gpu_check.sh"), "--device", "cpu", "--quick"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=480,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stages = {
        r["stage"]: r for r in map(json.loads, (tmp_path / "results.jsonl").read_text().splitlines()) if "status" in r
    }
    assert {k: v["status"] for k, v in stages.items()} == {
        "encoders": "ok", "drift": "ok", "nvdec": "skipped", "dali": "ok"
    }  # fmt: skip
    summary = (tmp_path / "summary.md").read_text()
    assert "| drift | ok | max dp" in summary and "no GPU: NVDEC not measured" in summary
    assert (tmp_path / "layout" / "fusion_emotion" / "export" / "models.py").is_file()  # as it installs
