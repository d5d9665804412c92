"""What every benchmark's report shares: the host it ran on, the load around it, numbers that may be missing."""

from __future__ import annotations

import math
import os
import platform
from typing import Any


def host_info() -> dict[str, Any]:
    """CPUs, platform and Python of this machine (every result JSON records them)."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def load_average() -> list[float]:
    """The 1/5/15-minute load averages ([] where the OS has none): a busy machine explains slow numbers."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def fmt(v: float | None, spec: str = ".0f") -> str:
    """``v`` formatted, or ``n/a`` for a number that was not measured (None or NaN)."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)
