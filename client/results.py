"""``fusion-emotion batch``'s results file: one JSONL line per source, resumable, and its CSV of segments.

Lines are written whole and flushed, by one thread, in completion order; a rerun skips every source that
already has a line (16 bytes kept per source), and a half-written last line left by a crash is cut off.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fusion_emotion import contract as C

log = logging.getLogger(__name__)


def _digest(source: str) -> bytes:
    return hashlib.blake2b(source.encode("utf-8", "surrogateescape"), digest_size=16).digest()


def _truncate_partial_line(path: Path) -> int:
    """Cut a last line without its newline (a crash mid-write); returns the bytes removed."""
    with path.open("rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return 0
        pos = size
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            fh.seek(pos)
            chunk = fh.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = pos + nl + 1
                break
        else:
            keep = 0
        fh.truncate(keep)
        return size - keep


class ResultsFile:
    """The JSONL output: which sources are answered already, and whole-line appends."""

    def __init__(self, path: Path, retry_failed: bool = False) -> None:
        self.path = path
        self.retry_failed = retry_failed
        self.ok: set[bytes] = set()
        self.failed: set[bytes] = set()
        self._fh: Any = None

    def load(self) -> None:
        """Read what earlier runs answered (streamed; 16 bytes kept per source)."""
        if not self.path.exists():
            return
        cut = _truncate_partial_line(self.path)
        if cut:
            log.warning("%s: dropped a half-written last line (%d bytes) from an interrupted run", self.path, cut)
        with self.path.open("rb") as fh:
            for number, raw in enumerate(fh, 1):
                try:
                    record = json.loads(raw)
                    key = _digest(record["source"])
                except (ValueError, KeyError, TypeError):
                    log.warning("%s:%d is not a result line; ignored", self.path, number)
                    continue
                if record.get("status") == "ok":
                    self.ok.add(key)
                    self.failed.discard(key)
                elif key not in self.ok:
                    self.failed.add(key)

    def state(self, source: str) -> str | None:
        """``"ok"`` / ``"failed"`` when a line answers ``source`` already (failed: unless retrying), else None."""
        key = _digest(source)
        if key in self.ok:
            return "ok"
        if key in self.failed and not self.retry_failed:
            return "failed"
        return None

    def __enter__(self) -> ResultsFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("ab")
        return self

    def write(self, record: dict[str, Any]) -> None:
        """One whole line, flushed: a crash can lose at most the line being written, never corrupt others."""
        self._fh.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
        self._fh.flush()
        key = _digest(record["source"])
        if record.get("status") == "ok":
            self.ok.add(key)
            self.failed.discard(key)
        elif key not in self.ok:
            self.failed.add(key)

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every parsable line of a results file, streamed."""
    with path.open("rb") as fh:
        for raw in fh:
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict) and "source" in record:
                yield record


def record_segments(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's scored timeline segments (silent ones, with vad, have no scores), or the whole clip as
    one segment ``[0, duration]``."""
    if record.get("segments"):
        return [seg for seg in record["segments"] if seg.get("speech") is not False]
    result = record["result"]
    return [
        {"start": 0.0, "end": record.get("duration_s"), **{k: result[k] for k in C.LABELS}}
        | {"dominant_emotion": result["dominant_emotion"]}
    ]


def write_segments_csv(results: Path, out: Path) -> int:
    """One row per segment of every ok line (whole clips as one row), written to a temp file then renamed."""
    tmp = out.with_name(out.name + ".tmp")
    rows = 0
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["source", "start", "end", *C.LABELS, "dominant_emotion", "overall_confidence"])
        for record in iter_records(results):
            if record.get("status") != "ok":
                continue
            confidence = record["result"].get("qa_flags", {}).get("overall_confidence")
            for seg in record_segments(record):
                writer.writerow(
                    [
                        record["source"],
                        seg["start"],
                        seg["end"],
                        *(f"{seg[k]:.6f}" for k in C.LABELS),
                        seg["dominant_emotion"],
                        "" if confidence is None else f"{confidence:.6f}",
                    ]
                )
                rows += 1
    tmp.replace(out)
    return rows
