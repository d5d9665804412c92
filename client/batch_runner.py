"""``fusion-emotion batch``'s runner: sources in, records out, a few files in flight, a clean stop.

At most ``2 x concurrency`` sources are queued, so memory stays what the files in flight cost. Ctrl-C or
SIGTERM stop the feeding, write what has finished, and exit 130; a second Ctrl-C exits at once. Shared by the
local routes and the gathering of a SageMaker Batch Transform job (``fusion_emotion.deploy.transform``).
"""

from __future__ import annotations

import logging
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusion_emotion.client.batch_inputs import describe_error
from fusion_emotion.client.results import ResultsFile
from fusion_emotion.client.search import SegmentIndex

from fusion_emotion.handoff import put_until_stopped

log = logging.getLogger(__name__)


@dataclass
class Summary:
    ok: int = 0
    failed: int = 0
    skipped_ok: int = 0
    skipped_failed: int = 0
    media_s: float = 0.0
    seconds: float = 0.0
    interrupted: bool = False
    abandoned: int = 0  # files still in flight when a stopped run returned
    fatal: str | None = None
    failures: list[str] = field(default_factory=list)  # the first few, for the closing summary

    @property
    def inputs(self) -> int:
        return self.ok + self.failed + self.skipped_ok + self.skipped_failed

    @property
    def all_ok(self) -> bool:
        return self.fatal is None and not self.interrupted and self.failed == 0 and self.skipped_failed == 0

    def media_minutes_per_hour(self) -> float:
        return (self.media_s / 60.0) / (self.seconds / 3600.0) if self.seconds > 0 else 0.0


_SENTINEL: Any = object()


class _Run:
    """One ``run_batch``: the feeder and worker threads, and what the calling thread does with their results."""

    def __init__(
        self,
        handle: Callable[[str], dict[str, Any]],
        results: ResultsFile,
        concurrency: int,
        progress: Any,
        stop: threading.Event,
    ) -> None:
        self.handle, self.results, self.concurrency = handle, results, concurrency
        self.progress, self.stop = progress, stop
        self.work: queue.Queue[Any] = queue.Queue(maxsize=2 * concurrency)
        self.done: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.summary = Summary()
        self.lock = threading.Lock()
        self.busy = 0  # files being handled right now

    def put(self, item: Any) -> bool:
        return put_until_stopped(self.work, item, self.stop, 0.2)

    def feed(self, sources: Iterable[str]) -> None:
        try:
            for source in sources:
                if self.stop.is_set():
                    return
                state = self.results.state(source)
                if state is not None:
                    self.done.put(("skipped", state))
                elif not self.put(source):
                    return
        except Exception as exc:  # enumeration failed (e.g. S3 listing denied): the run cannot go on
            self.done.put(("fatal", describe_error(exc)))
        finally:
            for _ in range(self.concurrency):
                if not self.put(_SENTINEL):
                    break

    def work_loop(self) -> None:
        while not self.stop.is_set():
            try:
                source = self.work.get(timeout=0.2)
            except queue.Empty:
                continue
            if source is _SENTINEL:
                self.done.put(("worker-exit", None))
                return
            with self.lock:
                if self.stop.is_set():
                    return
                self.busy += 1
            record = self.handle(source)
            with self.lock:
                self.done.put(("record", record))
                self.busy -= 1

    def take(self, kind: str, payload: Any) -> None:
        summary, progress = self.summary, self.progress
        if kind == "record":
            self.results.write(payload)
            ok = payload.get("status") == "ok"
            if ok:
                summary.ok += 1
                summary.media_s += payload.get("duration_s") or 0.0
            else:
                summary.failed += 1
                if len(summary.failures) < 5:
                    summary.failures.append(f"{payload['source']}: {payload.get('error')}")
            if progress is not None:
                progress.update(ok, payload.get("duration_s"))
        elif kind == "skipped":
            if payload == "ok":
                summary.skipped_ok += 1
            else:
                summary.skipped_failed += 1
            if progress is not None:
                progress.skip()
        elif kind == "fatal":
            summary.fatal = payload
            self.stop.set()

    def collect(self) -> None:
        """Take results until every worker has exited or the run is stopped."""
        running = self.concurrency
        while running and not self.stop.is_set():
            try:
                kind, payload = self.done.get(timeout=0.2)
            except queue.Empty:
                if self.progress is not None:
                    self.progress.tick()
                continue
            if kind == "worker-exit":
                running -= 1
            else:
                self.take(kind, payload)

    def drain(self, grace_s: float) -> None:
        """After a stop: files in flight get a moment to finish (each is an answer worth keeping)."""
        deadline = time.monotonic() + grace_s
        while True:
            try:
                kind, payload = self.done.get(timeout=0.05)
            except queue.Empty:
                with self.lock:
                    idle = self.busy == 0 and self.done.empty()
                if idle or time.monotonic() > deadline:
                    break
                continue
            if kind not in ("worker-exit", "fatal"):
                self.take(kind, payload)
        with self.lock:
            self.summary.abandoned = self.busy
        self.summary.interrupted = self.summary.fatal is None


def run_batch(
    sources: Iterable[str],
    handle: Callable[[str], dict[str, Any]],
    results: ResultsFile,
    *,
    concurrency: int = 4,
    progress: Any = None,
    stop: threading.Event | None = None,
    grace_s: float = 5.0,
) -> Summary:
    """Feed ``sources`` to ``concurrency`` worker threads and write their records as they finish.

    ``handle(source) -> record`` must not raise. Only this (the calling) thread writes,
    so every line is whole. Setting ``stop`` ends feeding and starts nothing new; files
    in flight get ``grace_s`` to finish (their answers are written), the rest are
    abandoned (``Summary.abandoned``; daemon threads) and answered by the next run.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    run = _Run(handle, results, concurrency, progress, stop or threading.Event())
    start = time.monotonic()
    threading.Thread(target=run.feed, args=(sources,), name="batch-feed", daemon=True).start()
    for i in range(concurrency):
        threading.Thread(target=run.work_loop, name=f"batch-{i}", daemon=True).start()
    run.collect()
    if run.stop.is_set():
        run.drain(grace_s)
    run.summary.seconds = time.monotonic() - start
    return run.summary


def print_summary(summary: Summary, output: str, retry_hint: bool) -> None:
    """The closing lines on the terminal: counts, media hours per hour, the first failures, what to do next."""
    out = sys.stdout
    media_h = summary.media_s / 3600.0
    before = (
        f"; answered before: {summary.skipped_ok} ok, {summary.skipped_failed} failed"
        if summary.skipped_ok or summary.skipped_failed
        else ""
    )
    out.write(f"batch: {summary.ok} ok, {summary.failed} failed{before}\n")
    rate = (summary.ok + summary.failed) / summary.seconds if summary.seconds > 0 else 0.0
    out.write(
        f"media: {media_h:.3f} h in {summary.seconds:.1f} s -> {summary.media_minutes_per_hour():.0f} media minutes "
        f"per hour, {rate * 60:.1f} files/min\n"
    )
    for line in summary.failures:
        out.write(f"  failed: {line}\n")
    if summary.interrupted:
        out.write(f"interrupted: every finished file is in {output}; run the same command again to continue\n")
    elif retry_hint and (summary.failed or summary.skipped_failed):
        out.write(f"failed files have error lines in {output}; rerun with --retry-failed to try them again\n")


def stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """First SIGINT/SIGTERM: stop cleanly (finish writing what is done); a second SIGINT: now."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not stop.is_set():
            sys.stderr.write("\nstopping: writing finished files; Ctrl-C again to quit at once\n")
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def update_search_index(results: Path) -> None:
    """Bring ``fusion-emotion search``'s index up to date now, so the first search answers at once."""
    if not results.exists():
        return
    start = time.monotonic()
    with SegmentIndex(results) as index:
        added = index.refresh()
    log.info("search index %s: +%d clips in %.1f s", index.path, added, time.monotonic() - start)
