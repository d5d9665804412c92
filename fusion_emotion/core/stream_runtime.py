"""Many live streams in one process: their states, one encoder worker that batches due updates, the sweeper.

What the Triton model ``fusion_emotion_stream`` does, without Triton: the model maps each request to
:meth:`StreamRuntime.start` / :meth:`StreamRuntime.chunk` and gives every stream a :class:`Sink` (its
held response sender); everything else happens here, tested with plain callables.

* ``chunk`` runs in the caller's thread (Triton's ``execute``): it checks and stores the chunk, and for
  every window that became due builds its row (resampling, frame sampling, media QA) and queues an
  update job. It never waits for an encoder.
* One worker thread takes every job queued meanwhile, encodes all their windows together (one batch per
  modality, so updates of many streams due at the same time share one encoder call), scores them and
  hands each update to its stream's sink, in order. While the encoders work, new jobs queue up: the batch
  grows with the load and adds no delay when idle.
* A stream ends at END (its last, partial window, then the final response), at an error in its input (an
  error response, final), when its client is gone (``Sink.cancelled``), after ``idle_timeout_s`` without a
  chunk or an update, or at ``max_duration_s``; its state is dropped at once.
* Overload: at most ``max_streams`` streams; per stream at most ``max_pending_updates`` updates wait for
  the encoders, the oldest being dropped (``dropped_updates``) when a caller sends faster than the
  encoders keep up (the WebSocket front end paces its clients, so only raw gRPC callers can hit it).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from fusion_emotion.core.embed import Encode
from fusion_emotion.core.fusion import FusionHead
from fusion_emotion.core.rows import Row
from fusion_emotion.core.stream import StreamConfig, StreamLimits, StreamState, Update, score_updates
from fusion_emotion.core.stream_frames import jpeg_frame, rgb_frame
from fusion_emotion.core.windows import StreamWindow
from fusion_emotion.errors import ErrorKind, ServingError

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where one stream's responses go (the Triton model: the START request's response sender)."""

    def accepted(self) -> None:
        """The stream is open (sent once, before any update)."""

    def update(self, update: Update) -> None: ...

    def ack(self) -> None:
        """One chunk was taken (stored, its due updates queued): lets a caller bound its chunks in flight."""

    def finish(self, update: Update | None) -> None:
        """The stream's final response (after END): its last update, or None when none was left."""

    def error(self, error: ServingError) -> None:
        """The stream failed; final."""

    def abort(self) -> None:
        """The stream was dropped without a last update (abort, client gone); final."""

    def cancelled(self) -> bool: ...


@dataclass
class _Job:
    stream: _Live
    kind: str  # "update" | "finish" | "error" | "abort"
    window: StreamWindow | None = None
    row: Row | None = None
    error: ServingError | None = None
    dropped: bool = False


@dataclass
class _Live:
    sid: int
    state: StreamState
    sink: Sink
    pending: collections.deque[_Job] = field(default_factory=collections.deque)
    closed: bool = False  # the final job was queued: no more chunks are taken
    final_sent: bool = False  # the final response went out: nothing more is sent
    last_sent: float = 0.0


@dataclass
class RuntimeStats:
    streams_started: int = 0
    updates_sent: int = 0
    dropped_updates: int = 0
    batches: int = 0
    batched_windows: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)


class StreamRuntime:
    """Live streams by sequence id, the encoder worker and the sweeper (threads started here)."""

    def __init__(
        self,
        limits: StreamLimits,
        head: FusionHead,
        encode_video: Encode,
        encode_audio: Encode,
        *,
        max_batch: int = 16,
        sweep_period_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.head = head
        self.encode_video = encode_video
        self.encode_audio = encode_audio
        self.max_batch = max(1, int(max_batch))
        self.clock = clock
        self.stats = RuntimeStats()
        self._streams: dict[int, _Live] = {}
        self._lock = threading.Lock()
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="stream-encode", daemon=True)
        self._worker.start()
        self._sweeper = threading.Thread(
            target=self._sweep_loop, args=(sweep_period_s,), name="stream-sweep", daemon=True
        )
        self._sweeper.start()

    # ------------------------------------------------------------------ requests (caller's thread)

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._streams)

    def start(self, sid: int, config: StreamConfig, sink: Sink) -> None:
        """Open a stream; OVERLOADED past ``max_streams``, BAD_REQUEST for an id already streaming."""
        with self._lock:
            if sid in self._streams:
                raise ServingError(ErrorKind.BAD_REQUEST, "stream", f"sequence {sid} is already streaming")
            if len(self._streams) >= self.limits.max_streams:
                raise ServingError(
                    ErrorKind.OVERLOADED,
                    "stream",
                    f"{self.limits.max_streams} streams are open, the limit; retry later",
                )
            now = self.clock()
            sink.accepted()
            self._streams[sid] = _Live(sid, StreamState(config, self.limits, started=now), sink, last_sent=now)
            self.stats.streams_started += 1
        log.info("stream %d started (%d Hz x %d, hop %.2f s, window %.2f s)", sid, config.sample_rate,
                 config.channels, config.hop_s, config.window_s)  # fmt: skip

    def chunk(
        self,
        sid: int,
        *,
        audio: np.ndarray | None = None,
        jpegs: Sequence[bytes] | None = None,
        rgbs: np.ndarray | None = None,
        times: np.ndarray | None = None,
        end: bool = False,
        abort: bool = False,
    ) -> None:
        """One chunk of stream ``sid``. Unknown streams raise (the caller answers its own request); an error
        in a live stream's input ends that stream with an error on its sink and returns normally."""
        with self._lock:
            live = self._streams.get(sid)
            if live is None or live.closed:
                raise ServingError(
                    ErrorKind.BAD_REQUEST,
                    "stream",
                    f"sequence {sid} is not streaming (never started, ended, or dropped after an error or timeout)",
                )
            if abort:
                self._drop(live, _Job(live, "abort"))
                return
            try:
                self._ingest(live, audio, jpegs, rgbs, times)
                if end:
                    last = live.state.last_window()
                    job = _Job(live, "finish", last, live.state.row(last) if last is not None else None)
                    self._drop(live, job)
                else:
                    live.sink.ack()
            except ServingError as exc:
                self._fail(live, exc)
            except Exception as exc:  # our fault: the stream ends, the others go on
                log.exception("stream %d: chunk failed", sid)
                self._fail(live, ServingError(ErrorKind.INTERNAL, "stream", f"chunk failed ({type(exc).__name__})"))

    def _ingest(
        self,
        live: _Live,
        audio: np.ndarray | None,
        jpegs: Sequence[bytes] | None,
        rgbs: np.ndarray | None,
        times: np.ndarray | None,
    ) -> None:
        state = live.state
        state.last_activity = self.clock()
        if jpegs is not None and rgbs is not None:
            raise ServingError(ErrorKind.BAD_REQUEST, "frame", "send JPEG or raw RGB frames in a chunk, not both")
        count = len(jpegs) if jpegs is not None else (rgbs.shape[0] if rgbs is not None else 0)
        if count:
            t = np.asarray(times if times is not None else [], dtype=np.float64).reshape(-1)
            if t.size != count:
                raise ServingError(ErrorKind.BAD_REQUEST, "frame_times", f"{t.size} frame times for {count} frames")
            if count > self.limits.max_frames_per_chunk:
                raise ServingError(
                    ErrorKind.TOO_LARGE,
                    "frame",
                    f"{count} frames in one chunk, over the {self.limits.max_frames_per_chunk} limit",
                )
            for i in range(count):
                if state.accept_frame_time(float(t[i])):
                    if jpegs is not None:
                        state.add_frame(jpeg_frame(t[i], jpegs[i], self.limits))
                    else:
                        state.add_frame(rgb_frame(t[i], rgbs[i], self.limits))
        if audio is not None and np.asarray(audio).size:
            state.add_audio(audio)
        for window in state.due():
            self._queue_update(live, _Job(live, "update", window, state.row(window)))
        state.trim()

    # ------------------------------------------------------------------ queueing (lock held)

    def _queue_update(self, live: _Live, job: _Job) -> None:
        waiting = [j for j in live.pending if j.kind == "update" and not j.dropped]
        if len(waiting) >= self.limits.max_pending_updates:
            waiting[0].dropped = True
            waiting[0].row = None
            self.stats.dropped_updates += 1
            log.warning("stream %d: encoders behind, update [%.2f, %.2f] s dropped", live.sid,
                        waiting[0].window.t_start, waiting[0].window.t_end)  # fmt: skip
        live.pending.append(job)
        self._jobs.put(job)

    def _drop(self, live: _Live, final_job: _Job) -> None:
        """Queue the stream's final job and forget its state (memory is freed now, not after the encoders)."""
        live.closed = True
        live.pending.append(final_job)
        self._jobs.put(final_job)
        self._streams.pop(live.sid, None)
        live.state = None  # type: ignore[assignment]  # the jobs hold their own rows

    def _fail(self, live: _Live, error: ServingError) -> None:
        """End the stream with its error now, not behind its queued encoder jobs (which are dropped): a chunk
        arriving meanwhile gets "not streaming", and the stream's own error must reach the caller first."""
        self.stats.errors[error.kind.value] += 1
        log.info("stream %d ended: %s (%s)", live.sid, error.kind.value, error.subject)
        for job in live.pending:
            job.dropped, job.row = True, None
        live.closed = live.final_sent = True
        self._streams.pop(live.sid, None)
        live.state = None  # type: ignore[assignment]
        try:
            live.sink.error(error)
        except Exception:  # a sender that fails (client gone): nothing more to tell it
            log.info("stream %d: sending its error failed", live.sid, exc_info=True)

    # ------------------------------------------------------------------ sweeper

    def sweep(self, now: float | None = None) -> None:
        """Drop streams whose client is gone, that were idle too long, or that reached their duration limit."""
        now = self.clock() if now is None else now
        with self._lock:
            for live in list(self._streams.values()):
                try:
                    gone = live.sink.cancelled()
                except Exception:  # a sender that cannot even say is gone
                    gone = True
                if gone:
                    log.info("stream %d: client gone, state dropped", live.sid)
                    self._drop(live, _Job(live, "abort"))
                    continue
                idle = now - max(live.state.last_activity, live.last_sent)
                if idle > self.limits.idle_timeout_s and not any(not j.dropped for j in live.pending):
                    self._fail(
                        live,
                        ServingError(
                            ErrorKind.DEADLINE,
                            "stream",
                            f"no data for {self.limits.idle_timeout_s:g} s (idle timeout); stream closed",
                        ),
                    )
                    continue
                try:
                    live.state.check_duration(now)
                except ServingError as exc:
                    self._fail(live, exc)

    def _sweep_loop(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            try:
                self.sweep()
            except Exception:  # the sweeper must survive anything
                log.exception("stream sweep failed")

    # ------------------------------------------------------------------ encoder worker

    def _take(self) -> list[_Job] | None:
        job = self._jobs.get()
        if job is None:
            return None
        batch = [job]
        windows = int(job.kind in ("update", "finish"))
        while windows < self.max_batch:
            try:
                nxt = self._jobs.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self._jobs.put(None)
                break
            batch.append(nxt)
            windows += int(nxt.kind in ("update", "finish"))
        return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._run_batch(batch)
            except Exception:  # the worker must survive anything
                log.exception("stream worker batch failed")

    def _run_batch(self, batch: list[_Job]) -> None:
        scored = [j for j in batch if not j.dropped and j.row is not None and j.window is not None]
        results: dict[int, Update] = {}
        failure: ServingError | None = None
        if scored:
            try:
                updates = score_updates(
                    self.head,
                    [j.window for j in scored],
                    [j.row for j in scored],
                    self.encode_video,
                    self.encode_audio,
                )
                results = {id(j): u for j, u in zip(scored, updates, strict=True)}
                self.stats.batches += 1
                self.stats.batched_windows += len(scored)
            except ServingError as exc:
                failure = exc
            except Exception as exc:
                log.exception("stream encoders failed")
                failure = ServingError(ErrorKind.INTERNAL, "stream", f"encoders failed ({type(exc).__name__})")
        for job in batch:
            self._deliver(job, results.get(id(job)), failure)

    def _deliver(self, job: _Job, update: Update | None, failure: ServingError | None) -> None:
        live = job.stream
        with self._lock:
            if job in live.pending:
                live.pending.remove(job)
            if job.dropped or live.final_sent:
                return
            if failure is not None and job.kind in ("update", "finish") and job.window is not None:
                job = _Job(live, "error", error=failure)
                self._streams.pop(live.sid, None)
                live.closed = True
            live.final_sent = job.kind != "update"
        try:
            if job.kind == "update":
                assert update is not None
                live.sink.update(update)
                self.stats.updates_sent += 1
            elif job.kind == "finish":
                live.sink.finish(update)
                self.stats.updates_sent += int(update is not None)
            elif job.kind == "error":
                assert job.error is not None
                live.sink.error(job.error)
            else:
                live.sink.abort()
        except Exception:  # a sender that fails (client gone) ends only its stream
            log.info("stream %d: sending failed; dropping it", live.sid, exc_info=True)
            with self._lock:
                if not live.closed:
                    self._drop(live, _Job(live, "abort"))
        live.last_sent = self.clock()

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        """Stop the threads; open streams get an error (the server is going away)."""
        with self._lock:
            for live in list(self._streams.values()):
                self._drop(
                    live,
                    _Job(live, "error", error=ServingError(ErrorKind.OVERLOADED, "stream", "server shutting down")),
                )
        self._stop.set()
        self._jobs.put(None)
        self._worker.join(timeout=10)
        self._sweeper.join(timeout=2)
