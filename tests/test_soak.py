"""The one-minute soak: mixed good and bad load at concurrency 16 through the real front end.

``make soak`` runs the same thing for 10 minutes (``python -m fusion_emotion.ops.soak``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fusion_emotion.ops.soak import run_soak

pytestmark = pytest.mark.integration

SOAK_SECONDS = float(os.environ.get("FUSION_EMOTION_SOAK_TEST_S", "60"))
# Generous: after warm-up, RSS of tritonserver + stubs + front end together may not grow by more.
# ONNX Runtime's arenas in the encoder stubs grow in steps (up to ~340 MB each) whenever a new
# batch shape peaks, then stay flat: the 10-minute soak grew 841 MB in all, 33 MB in its last
# 5.5 minutes (docs/reliability.md). A leak per request would pass 1 GiB within the minute.
MAX_TOTAL_GROWTH_MB = 1024.0


@pytest.mark.timeout(900)
def test_soak_one_minute(demo_repository: Path, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    # The deadline is raised above SageMaker's 55 s: this machine is shared, and a 504 from a
    # starved CPU would say nothing about the service.
    report = run_soak(
        demo_repository,
        duration_s=SOAK_SECONDS,
        concurrency=16,
        sample_every_s=2.0,
        request_timeout_s=170.0,
        output=out,
    )
    summary = {k: v for k, v in report.items() if k != "memory_samples"}
    print("soak report:", json.dumps(summary, indent=1))
    assert json.loads(out.read_text())["requests"] == report["requests"]
    assert report["servers_alive_at_end"]
    assert report["good"] > 0 and report["bad"] > 0, summary
    assert report["wrong_answers"] == 0, report["examples_of_failures"]
    assert report["good_5xx"] == 0 and report["good_other_errors"] == 0, report["examples_of_failures"]
    assert report["bad_not_4xx"] == 0, report["examples_of_failures"]
    assert report["transport_errors"] == 0, report["examples_of_failures"]
    warm = report["warmup"]
    assert warm["requests"] > 0 and warm["wrong_answers"] == 0 and warm["good_5xx"] == 0 and warm["bad_not_4xx"] == 0
    memory = report["memory"]
    assert memory["same_processes"], memory  # no process died and was replaced
    assert memory["total_growth_mb"] < MAX_TOTAL_GROWTH_MB, memory
