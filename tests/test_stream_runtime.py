"""Many streams in one process (core.stream_runtime), without Triton: batching, order, limits, the sweeper."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from test_timeline import _FakeEncoder, _head

from fusion_emotion import contract as C
from fusion_emotion.core.stream import StreamLimits, Update, stream_config
from fusion_emotion.core.stream_runtime import StreamRuntime
from fusion_emotion.errors import ErrorKind, ServingError


class _Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.done = threading.Event()
        self.gone = False
        self.acks = 0

    def ack(self) -> None:
        self.acks += 1

    def accepted(self) -> None:
        self.events.append(("accepted", None))

    def update(self, update: Update) -> None:
        self.events.append(("update", update))

    def finish(self, update: Update | None) -> None:
        self.events.append(("finish", update))
        self.done.set()

    def error(self, error: ServingError) -> None:
        self.events.append(("error", error))
        self.done.set()

    def abort(self) -> None:
        self.events.append(("abort", None))
        self.done.set()

    def cancelled(self) -> bool:
        return self.gone

    def ends(self) -> list[float]:
        return [e[1].t_end for e in self.events if e[0] in ("update", "finish") and e[1] is not None]


class _SlowEncoder(_FakeEncoder):
    """Holds every call until released, so updates of several streams queue up meanwhile."""

    def __init__(self, dim: int, seed: int) -> None:
        super().__init__(dim, seed)
        self.release = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.release.wait(10)
        return super().__call__(batch)


def _runtime(limits: StreamLimits | None = None, audio=None, **kw) -> StreamRuntime:
    return StreamRuntime(
        limits or StreamLimits(),
        _head(),
        _FakeEncoder(C.VIDEO_EMBED_DIM, 1),
        audio or _FakeEncoder(C.AUDIO_EMBED_DIM, 2),
        sweep_period_s=0.05,
        **kw,
    )


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_updates_in_order_batched_across_streams_then_end_flushes() -> None:
    slow = _SlowEncoder(C.AUDIO_EMBED_DIM, 2)
    rt = _runtime(audio=slow)
    sinks = [_Sink() for _ in range(3)]
    try:
        for sid, sink in enumerate(sinks, 1):
            rt.start(sid, stream_config(), sink)
            assert sink.events == [("accepted", None)]
        for _ in range(3):  # 3 x 1 s per stream while the encoder is held: the updates queue up
            for sid in (1, 2, 3):
                rt.chunk(sid, audio=_tone(1.0))
        for sid in (1, 2, 3):
            rt.chunk(sid, audio=_tone(0.5), end=True)
        slow.release.set()
        for sink in sinks:
            assert sink.done.wait(20)
        for sink in sinks:
            assert sink.ends() == [1.0, 2.0, 3.0, 3.5] and sink.events[-1][0] == "finish"
        # what queued while the encoder was busy went in one call: windows of the three streams together
        # (the first call takes whatever had queued when the worker woke, the second all the rest)
        assert len(slow.batches) <= 2 and sum(slow.batches) == 12, slow.batches
        assert rt.active == 0 and rt.stats.updates_sent == 12
    finally:
        rt.close()


def test_end_on_a_hop_boundary_finishes_without_update_and_abort_sends_nothing() -> None:
    rt = _runtime()
    a, b = _Sink(), _Sink()
    try:
        rt.start(1, stream_config(), a)
        rt.chunk(1, audio=_tone(2.0), end=True)
        rt.start(2, stream_config(), b)
        rt.chunk(2, audio=_tone(0.7))
        rt.chunk(2, abort=True)
        assert a.done.wait(20) and b.done.wait(20)
        assert a.ends() == [1.0, 2.0] and a.events[-1] == ("finish", None)
        assert [e[0] for e in b.events] == ["accepted", "abort"]
        with pytest.raises(ServingError, match="not streaming"):
            rt.chunk(2, audio=_tone(0.1))
    finally:
        rt.close()


def test_stream_limit_duplicate_and_bad_input_end_only_that_stream() -> None:
    rt = _runtime(StreamLimits(max_streams=2))
    a, b, c = _Sink(), _Sink(), _Sink()
    try:
        rt.start(1, stream_config(), a)
        with pytest.raises(ServingError, match="already streaming"):
            rt.start(1, stream_config(), c)
        rt.start(2, stream_config(), b)
        with pytest.raises(ServingError) as err:
            rt.start(3, stream_config(), c)
        assert err.value.kind is ErrorKind.OVERLOADED and c.events == []
        rt.chunk(1, jpegs=[b"not a jpeg"], times=np.array([0.0]))  # ends stream 1 with its error...
        assert a.done.wait(20)
        assert a.events[-1][0] == "error" and a.events[-1][1].kind is ErrorKind.INVALID_MEDIA
        rt.chunk(2, audio=_tone(1.0), end=True)  # ... stream 2 goes on
        assert b.done.wait(20) and b.ends() == [1.0]
        rt.start(3, stream_config(), c)  # and the slots are free again
        assert rt.active == 1
    finally:
        rt.close()


def test_sweeper_drops_idle_cancelled_and_over_duration_streams() -> None:
    rt = _runtime(StreamLimits(idle_timeout_s=0.3, max_duration_s=0.6))
    idle, gone, long = _Sink(), _Sink(), _Sink()
    try:
        rt.start(1, stream_config(), idle)
        rt.start(2, stream_config(), gone)
        rt.start(3, stream_config(), long)
        gone.gone = True
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not long.done.is_set():
            try:
                rt.chunk(3, audio=_tone(0.05))  # keeps stream 3 busy, never idle
            except ServingError:
                break  # dropped already; its sink hears about it next
            time.sleep(0.05)
        for sink in (idle, gone, long):
            assert sink.done.wait(10)
        assert idle.events[-1][0] == "error" and idle.events[-1][1].kind is ErrorKind.DEADLINE
        assert gone.events[-1][0] == "abort"
        assert long.events[-1][0] == "error" and "duration limit" in long.events[-1][1].reason
        assert rt.active == 0
    finally:
        rt.close()


def test_pending_updates_are_bounded_when_a_caller_does_not_pace() -> None:
    slow = _SlowEncoder(C.AUDIO_EMBED_DIM, 2)
    rt = _runtime(StreamLimits(max_pending_updates=2), audio=slow)
    sink = _Sink()
    try:
        rt.start(1, stream_config(), sink)
        rt.chunk(1, audio=_tone(6.0))  # six updates due at once
        rt.chunk(1, end=True)
        slow.release.set()
        assert sink.done.wait(20)
        ends = sink.ends()
        assert rt.stats.dropped_updates >= 3 and ends[-1] == 6.0 and ends == sorted(ends) and len(ends) <= 3
    finally:
        rt.close()


def test_encoder_failure_ends_the_streams_in_the_batch() -> None:
    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("encoder down")

    rt = StreamRuntime(StreamLimits(), _head(), broken, broken, sweep_period_s=0.05)
    sink = _Sink()
    try:
        rt.start(1, stream_config(), sink)
        rt.chunk(1, audio=_tone(1.0))
        assert sink.done.wait(20)
        assert sink.events[-1][0] == "error" and sink.events[-1][1].kind is ErrorKind.INTERNAL
        assert rt.active == 0
    finally:
        rt.close()


def test_every_chunk_taken_is_acknowledged() -> None:
    rt, sink = _runtime(), _Sink()
    try:
        rt.start(1, stream_config(), sink)
        for _ in range(3):
            rt.chunk(1, audio=_tone(0.1))
        rt.chunk(1, audio=_tone(0.1), end=True)  # the END gets the final response, not an ack
        assert sink.done.wait(20)
        assert sink.acks == 3
    finally:
        rt.close()


def test_an_input_error_goes_out_at_once_ahead_of_queued_updates() -> None:
    """A chunk arriving after the failing one gets "not streaming"; the stream's own error must already be out."""
    slow = _SlowEncoder(C.AUDIO_EMBED_DIM, 2)
    rt, sink = _runtime(audio=slow), _Sink()
    try:
        rt.start(1, stream_config(), sink)
        rt.chunk(1, audio=_tone(3.0))  # three updates wait for the held encoder
        rt.chunk(1, audio=np.array([np.nan], np.float32))
        assert sink.events[-1][0] == "error" and sink.events[-1][1].kind is ErrorKind.INVALID_MEDIA
        with pytest.raises(ServingError, match="not streaming"):
            rt.chunk(1, audio=_tone(0.1))
        slow.release.set()
        time.sleep(0.3)
        assert [e[0] for e in sink.events] == ["accepted", "error"]  # the queued updates were dropped
    finally:
        slow.release.set()
        rt.close()
