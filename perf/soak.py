"""`make soak`: the soak test (fusion_emotion.ops.soak) with the duration in minutes.

    python perf/soak.py --minutes 10 --concurrency 16 --output build/soak.json

Any other option of ``python -m fusion_emotion.ops.soak`` (--repository, --tolerance,
--request-timeout) is passed through; exit status 1 when a check failed.
"""

from __future__ import annotations

import argparse
import sys

from fusion_emotion.ops.soak import main


def run(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--minutes", type=float, default=10.0)
    known, rest = p.parse_known_args(argv)
    return main(["--duration", str(known.minutes * 60), *rest])


if __name__ == "__main__":
    sys.exit(run())
