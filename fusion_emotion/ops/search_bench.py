"""How fast ``fusion-emotion search`` answers on a large library: a generated results file, timed.

Writes a ``batch``-format JSONL with ``--files`` clips of ``--segments`` timeline
segments each (Dirichlet-random probabilities, random overall confidence: the
shape and size of real output, not real predictions), then times the first
index build, queries for every emotion with and without a confidence filter,
an incremental refresh after appending lines, and the whole CLI in a fresh
process. Prints the numbers; asserts nothing.

    .venv/bin/python -m fusion_emotion.ops.search_bench --files 100000 --segments 8 --dir build/search_bench
"""

# ruff: noqa: T201 - a benchmark prints its numbers

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.client.search import SegmentIndex, index_path_for


def fake_record(i: int, segments: int, rng: np.random.Generator, window_s: float = 4.0) -> dict[str, Any]:
    """One ok line as ``batch --timeline`` writes it (full float precision, like the real JSON)."""
    probs = rng.dirichlet(np.full(C.NUM_CLASSES, 2.0), size=segments + 1)
    confidence = float(rng.uniform(0.0, 1.0))
    clip = probs[0]
    result: dict[str, Any] = {label: float(p) for label, p in zip(C.LABELS, clip, strict=True)}
    result["qa_flags"] = {name: float(rng.uniform()) for name in C.QA_FLAG_NAMES}
    result["qa_flags"]["overall_confidence"] = confidence
    result["dominant_emotion"] = C.LABELS[int(np.argmax(clip))]
    segs = [
        {
            "start": k * window_s,
            "end": (k + 1) * window_s,
            **{label: float(p) for label, p in zip(C.LABELS, probs[k + 1], strict=True)},
            "dominant_emotion": C.LABELS[int(np.argmax(probs[k + 1]))],
        }
        for k in range(segments)
    ]
    return {
        "source": f"s3://media-library/clips/{i // 1000:03d}/{i:06d}.mp4",
        "status": "ok",
        "media": "video",
        "duration_s": segments * window_s,
        "result": result,
        "segments": segs,
        "seconds": 1.0,
    }


def write_results(path: Path, files: int, segments: int, seed: int = 0, start: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with path.open("a", encoding="utf-8") as fh:
        for i in range(start, start + files):
            fh.write(json.dumps(fake_record(i, segments, rng), separators=(",", ":")) + "\n")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=100_000)
    p.add_argument("--segments", type=int, default=8, help="timeline segments per clip (default 8: 32 s clips)")
    p.add_argument("--dir", type=Path, default=Path("build/search_bench"))
    p.add_argument("--repeats", type=int, default=5, help="runs of each query (default 5)")
    args = p.parse_args(argv)

    args.dir.mkdir(parents=True, exist_ok=True)
    results = args.dir / f"results_{args.files}x{args.segments}.jsonl"
    index = index_path_for(results)
    for stale in (results, index, Path(str(index) + "-wal"), Path(str(index) + "-shm")):
        stale.unlink(missing_ok=True)
    t0 = time.perf_counter()
    write_results(results, args.files, args.segments)
    print(f"generated {results} ({results.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s")

    with SegmentIndex(results) as idx:
        t0 = time.perf_counter()
        added = idx.refresh()
        build = time.perf_counter() - t0
        clips, segs = idx.counts()
        print(f"index build: {added} clips, {segs} segments in {build:.1f} s ({index.stat().st_size / 1e6:.0f} MB)")
        t0 = time.perf_counter()
        idx.refresh()
        print(f"refresh with nothing new: {_ms(time.perf_counter() - t0)}")
        for min_conf in (None, 0.5, 0.95):
            times = []
            for emotion in C.LABELS:
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    hits = idx.search(emotion, 10, min_conf)
                    times.append(time.perf_counter() - t0)
                    assert len(hits) == 10
            label = "no filter" if min_conf is None else f"--min-confidence {min_conf}"
            print(
                f"query top 10, {label}: median {_ms(statistics.median(times))}, max {_ms(max(times))} "
                f"({len(times)} queries over the six emotions)"
            )
    start = args.files
    for extra in (100, max(100, args.files // 10)):  # row by row, then the bulk path (over a twentieth)
        write_results(results, extra, args.segments, seed=start, start=start)
        start += extra
        with SegmentIndex(results) as idx:
            t0 = time.perf_counter()
            added = idx.refresh()
            refresh = time.perf_counter() - t0
            t0 = time.perf_counter()
            idx.search("happy", 10)
            print(
                f"append {added} clips, then refresh: {refresh:.2f} s; the query after it: "
                f"{_ms(time.perf_counter() - t0)}"
            )
    cmd = [sys.executable, "-m", "fusion_emotion.cli", "search", str(results), "--emotion", "happy", "--top", "10"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    print(f"whole CLI in a new process (`{' '.join(cmd[3:])}`): {time.perf_counter() - t0:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
