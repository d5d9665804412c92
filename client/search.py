"""``fusion-emotion search``: the best-scoring moments for an emotion across a batch results file.

Queries run on an SQLite index beside the JSONL (``results.jsonl.index.sqlite``),
never on the JSONL itself: one row per segment (a clip without a timeline is
one segment spanning it), a B-tree per emotion ordered by score with the clip's
overall confidence alongside, so "top 10 happy with confidence >= 0.5" reads
the first matching index entries and stops. The index is built on first use and
then brought up to date incrementally: results files only grow (``batch``
appends whole lines), so only the bytes after the indexed offset are read; small
appends land in a small unindexed table that queries scan alongside. A file that
shrank or whose head changed is indexed again from scratch.
"""

# ruff: noqa: T201 - results go to the terminal by design

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fusion_emotion.client.results import iter_records, record_segments

from fusion_emotion import contract as C
from fusion_emotion.core.summary import by_speaker, runs

log = logging.getLogger(__name__)

SCHEMA_VERSION = "3"  # 3: the speaker column (speakers=channels results)
_HEAD_BYTES = 4096
_BATCH_ROWS = 20_000
# Two tables of segments: ``segments`` with one B-tree per emotion, and ``recent``, unindexed, for small
# appends (maintaining six B-trees row by row costs ~5-50 ms a clip, mostly page writes). A query takes
# the top rows of each. ``recent`` is folded into ``segments`` (indexes dropped, rows moved, indexes
# built again) when it outgrows a twentieth of ``segments`` or _RECENT_ROWS, and every large append
# (over _BULK_BYTES or a twentieth of the file) goes straight down that bulk path.
_RECENT_ROWS = 50_000
_BULK_BYTES = 8 * 1024 * 1024
_INDEXES = (*(f"seg_{label}" for label in C.LABELS), "seg_file")
_COLUMNS = (
    f"file_id INTEGER NOT NULL, t_start REAL, t_end REAL, {', '.join(f'{k} REAL NOT NULL' for k in C.LABELS)}, "
    "confidence REAL, speaker TEXT"
)


@dataclass(frozen=True)
class Hit:
    source: str
    t_start: float
    t_end: float | None
    score: float
    overall_confidence: float | None
    speaker: str | None = None


def index_path_for(results: Path) -> Path:
    return results.with_name(results.name + ".index.sqlite")


def _head_digest(path: Path, length: int) -> str:
    """Digest of the file's first ``length`` bytes: tells an appended file from a replaced one."""
    with path.open("rb") as fh:
        return hashlib.blake2b(fh.read(length), digest_size=16).hexdigest()


class SegmentIndex:
    """The index of one results file; ``refresh()`` before ``search()``."""

    def __init__(self, results: Path, index: Path | None = None) -> None:
        self.results = results
        self.path = index or index_path_for(results)
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA cache_size=-65536")  # 64 MiB: index builds and appends stay in memory

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> SegmentIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- building
    def _meta(self) -> dict[str, str]:
        try:
            return dict(self.db.execute("SELECT key, value FROM meta"))
        except sqlite3.OperationalError:
            return {}

    def _create(self) -> None:
        self.db.executescript(
            "DROP TABLE IF EXISTS meta; DROP TABLE IF EXISTS files; DROP TABLE IF EXISTS segments;"
            "DROP TABLE IF EXISTS recent;"
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "CREATE TABLE files (id INTEGER PRIMARY KEY, source TEXT NOT NULL UNIQUE, duration_s REAL,"
            " overall_confidence REAL);"
            f"CREATE TABLE segments ({_COLUMNS}); CREATE TABLE recent ({_COLUMNS});"
        )
        self.db.executemany(
            "INSERT INTO meta VALUES (?, ?)", [("version", SCHEMA_VERSION), ("offset", "0"), ("head", "")]
        )

    def _create_indexes(self, analyze: bool) -> None:
        """After a bulk load (faster than maintaining them row by row); IF NOT EXISTS mends an interrupted build."""
        for label in C.LABELS:
            self.db.execute(f"CREATE INDEX IF NOT EXISTS seg_{label} ON segments ({label} DESC, confidence)")
        self.db.execute("CREATE INDEX IF NOT EXISTS seg_file ON segments (file_id)")
        if analyze:
            self.db.execute("ANALYZE")

    def _lines(self, offset: int) -> Iterator[tuple[int, bytes]]:
        """(offset after the line, line) for every whole line from ``offset`` on."""
        with self.results.open("rb") as fh:
            fh.seek(offset)
            pos = offset
            for raw in fh:
                if not raw.endswith(b"\n"):
                    return  # a line being written right now: next time
                pos += len(raw)
                yield pos, raw

    def _count(self, table: str) -> int:
        return int(self.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def refresh(self) -> int:
        """Index what the results file gained since last time; returns the number of clips added."""
        meta = self._meta()
        size = self.results.stat().st_size
        offset = int(meta.get("offset", "0"))
        fresh = (
            meta.get("version") != SCHEMA_VERSION
            or offset > size
            or meta.get("head") != _head_digest(self.results, min(offset, _HEAD_BYTES))
        )
        if fresh:
            self._create()
            offset = 0
        bulk = offset == 0 or size - offset > max(_BULK_BYTES, offset // 20)
        db = self.db
        if bulk:
            with db:
                for name in _INDEXES:
                    db.execute(f"DROP INDEX IF EXISTS {name}")
        table = "segments" if bulk else "recent"
        added = 0
        cur = db.cursor()
        rows: list[tuple[Any, ...]] = []
        end = offset
        insert = f"INSERT INTO {table} VALUES ({', '.join('?' * (5 + C.NUM_CLASSES))})"

        def flush() -> None:
            cur.executemany(insert, rows)
            rows.clear()

        with db:
            for pos, raw in self._lines(offset):
                end = pos
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(record, dict) or record.get("status") != "ok" or "result" not in record:
                    continue
                result = record["result"]
                confidence = (result.get("qa_flags") or {}).get("overall_confidence")
                old = cur.execute("SELECT id FROM files WHERE source = ?", (record["source"],)).fetchone()
                if old is not None:  # a later answer for the same source replaces the earlier one
                    flush()
                    cur.execute("DELETE FROM segments WHERE file_id = ?", old)
                    cur.execute("DELETE FROM recent WHERE file_id = ?", old)
                    cur.execute("DELETE FROM files WHERE id = ?", old)
                cur.execute(
                    "INSERT INTO files (source, duration_s, overall_confidence) VALUES (?, ?, ?)",
                    (record["source"], record.get("duration_s"), confidence),
                )
                file_id = cur.lastrowid
                for seg in record_segments(record):
                    scores = (float(seg[k]) for k in C.LABELS)
                    rows.append((file_id, seg["start"], seg["end"], *scores, confidence, seg.get("speaker")))
                added += 1
                if len(rows) >= _BATCH_ROWS:
                    flush()
            flush()
            cur.executemany(
                "UPDATE meta SET value = ? WHERE key = ?",
                [(str(end), "offset"), (_head_digest(self.results, min(end, _HEAD_BYTES)), "head")],
            )
        recent = self._count("recent")
        if recent and (bulk or recent > min(_RECENT_ROWS, max(1000, self._count("segments") // 20))):
            with db:  # fold the small appends into the indexed table in one go
                for name in _INDEXES:
                    db.execute(f"DROP INDEX IF EXISTS {name}")
                db.execute("INSERT INTO segments SELECT * FROM recent")
                db.execute("DELETE FROM recent")
            bulk = True
        with db:
            self._create_indexes(analyze=bulk)
        return added

    # ----------------------------------------------------------------- querying
    def counts(self) -> tuple[int, int]:
        """(clips, segments) in the index."""
        return self._count("files"), self._count("segments") + self._count("recent")

    def search(
        self, emotion: str, top: int = 10, min_confidence: float | None = None, speaker: str | None = None
    ) -> list[Hit]:
        """The ``top`` segments by ``emotion`` probability, best first (ties: earlier clip first); ``speaker``:
        only that speaker's segments (``speakers=channels`` results)."""
        if emotion not in C.LABELS:
            raise ValueError(f"unknown emotion {emotion!r}; one of {', '.join(C.LABELS)}")
        terms = [
            t for t, v in (("confidence >= :conf", min_confidence), ("speaker = :speaker", speaker)) if v is not None
        ]
        where = f"WHERE {' AND '.join(terms)}" if terms else ""
        cols = f"file_id, t_start, t_end, {emotion} AS score, confidence, speaker"
        sql = (
            "SELECT f.source, s.t_start, s.t_end, s.score, s.confidence, s.speaker FROM ("
            f"SELECT * FROM (SELECT {cols} FROM segments INDEXED BY seg_{emotion} {where} "
            f"ORDER BY {emotion} DESC LIMIT :top) "
            f"UNION ALL SELECT * FROM (SELECT {cols} FROM recent {where} ORDER BY {emotion} DESC LIMIT :top)"
            ") AS s JOIN files AS f ON f.id = s.file_id ORDER BY s.score DESC, s.file_id, s.t_start LIMIT :top"
        )
        params = {"top": top, "conf": min_confidence, "speaker": speaker}
        return [Hit(*row) for row in self.db.execute(sql, params)]


# --------------------------------------------------------------------------- CLI
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="the best-scoring segments for an emotion in a batch results file",
        description="Lists source, t_start, t_end, score and overall confidence of the best segments, "
        "from an SQLite index kept beside the results file (built on first use, then updated incrementally).",
    )
    p.add_argument("results", type=Path, help="JSONL written by fusion-emotion batch")
    p.add_argument("--emotion", required=True, choices=C.LABELS)
    p.add_argument("--top", type=int, default=10, help="how many segments (default 10)")
    p.add_argument("--min-confidence", type=float, help="only clips whose overall_confidence is at least this")
    p.add_argument("--index", type=Path, help="index file (default: RESULTS.index.sqlite)")
    p.add_argument("--speaker", help="only this speaker's segments (results made with --speakers channels)")
    p.add_argument(
        "--for-s",
        type=float,
        metavar="SECONDS",
        help="calls instead of moments: every run of --emotion (dominant, pauses up to 4 s bridged) lasting at "
        "least this long, e.g. --emotion angry --speaker customer --for-s 20",
    )
    p.add_argument("--min-p", type=float, help="with --for-s: the emotion's probability must also reach this")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class RunHit:
    source: str
    speaker: str
    emotion: str
    start: float
    end: float
    length_s: float
    peak: float


def sustained(
    results: Path, emotion: str, for_s: float, speaker: str | None = None, min_p: float | None = None
) -> list[RunHit]:
    """Every run of ``emotion`` lasting ``for_s`` or more, per call and speaker, in file order (a scan of the
    results file: runs need each call's segments in order, which the per-emotion index does not keep)."""
    out: list[RunHit] = []
    for record in iter_records(results):
        if record.get("status") != "ok" or "result" not in record:
            continue
        for name, segs in by_speaker(record["result"], record.get("segments") or []).items():
            if speaker is not None and name != speaker:
                continue
            for r in runs(segs, emotion, min_p=min_p):
                if r.length_s + 1e-9 >= for_s:
                    out.append(RunHit(record["source"], name, emotion, r.start, r.end, r.length_s, r.peak))
    return out


def _print_runs(hits: list[RunHit], as_json: bool) -> int:
    if as_json:
        for hit in hits:
            sys.stdout.write(json.dumps(asdict(hit)) + "\n")
        return 0
    print(f"{'length_s':>8}  {'start':>8}  {'end':>8}  {'peak':>6}  speaker  source")
    for hit in hits:
        print(f"{hit.length_s:8.2f}  {hit.start:8.2f}  {hit.end:8.2f}  {hit.peak:6.3f}  {hit.speaker}  {hit.source}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.top < 1:
        log.error("--top must be >= 1")
        return 2
    if not args.results.is_file():
        log.error("%s: no such results file", args.results)
        return 2
    if args.for_s is not None:
        return _print_runs(sustained(args.results, args.emotion, args.for_s, args.speaker, args.min_p), args.json)
    with SegmentIndex(args.results, args.index) as index:
        t0 = time.perf_counter()
        added = index.refresh()
        t1 = time.perf_counter()
        hits = index.search(args.emotion, args.top, args.min_confidence, args.speaker)
        t2 = time.perf_counter()
        clips, segments = index.counts()
    if added:
        log.info("indexed %d new clips in %.2f s", added, t1 - t0)
    log.info("%d clips, %d segments; query %.1f ms", clips, segments, (t2 - t1) * 1000)
    if args.json:
        for hit in hits:
            sys.stdout.write(json.dumps(asdict(hit)) + "\n")
        return 0
    print(f"{'score':>7}  {'conf':>5}  {'t_start':>8}  {'t_end':>8}  source")
    for hit in hits:
        conf = "-" if hit.overall_confidence is None else f"{hit.overall_confidence:.3f}"
        end = "-" if hit.t_end is None else f"{hit.t_end:8.2f}"
        print(f"{hit.score:7.4f}  {conf:>5}  {hit.t_start:8.2f}  {end:>8}  {hit.source}")
    return 0
