"""``/stream`` under attack, through the real front end and the real tritonserver (127.0.0.1 only).

The stream model is reloaded with room for 16 streams (max_batch_size 24 sequence slots, so a leaked slot
shows as a START that cannot start); the front end runs in this process with small keepalive and send
timeouts, so its stream counts and sessions can be read. Numbers printed here (run with ``-s``) are recorded in
docs/reliability.md ("Live streams").
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import RawWebSocket, exchange, rss_mb, serve_app, start_triton

from fusion_emotion import contract as C
from fusion_emotion.core.stream import stream_config
from fusion_emotion.frontend.app import create_app
from fusion_emotion.frontend.settings import Settings
from fusion_emotion.frontend.stream import StreamSettings
from fusion_emotion.server import procs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

STREAMS = 16
SETTINGS = StreamSettings(
    max_streams=STREAMS, ping_interval_s=2.0, ping_timeout_s=2.0, send_timeout_s=3.0,
    max_unconfigured=STREAMS, first_message_timeout_s=2.0,
)  # fmt: skip
# A client that stops reading: keepalive (2 + 2 s), then one silent keepalive round, or a blocked write (3 s);
# the rest is slack for a loaded 2-core host. A hang guard, not a speed test.
NOT_READING_BOUND_S = 2 * (SETTINGS.ping_interval_s + SETTINGS.ping_timeout_s) + 6.0
FLOOD_SETTINGS = StreamSettings(max_streams=STREAMS, max_messages_per_s=500.0)
FLOOD_S = 5.0
FRONT_GROWTH_BOUND_MB = 96.0  # this process (front end + the test's clients) over one flood
TRITON_GROWTH_BOUND_MB = 96.0  # tritonserver and its stubs over one flood
DRAIN_BOUND_S = 30.0  # from END after a paced flood to the close (a hang guard)
LATENCY_FACTOR = 4.0  # a normal stream's median latency beside an abusive one, over its median alone
LATENCY_SLACK_MS = 1500.0
CONFIG = json.dumps({"sample_rate": 16_000, "encoding": "pcm_s16le"})
SECOND = np.zeros(16_000, "<i2").tobytes()


@pytest.fixture(scope="module")
def triton16(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A tritonserver of its own whose stream model has room for 16 streams in 24 sequence slots (a config
    override through the load API would be undone by the watchdog's reload from disk)."""
    repo = tmp_path_factory.mktemp("repo16") / "model_repository"
    repo.mkdir()
    for model in demo_repository.iterdir():
        if model.name != C.STREAM_MODEL:
            (repo / model.name).symlink_to(model.resolve())
    shutil.copytree(demo_repository / C.STREAM_MODEL, repo / C.STREAM_MODEL)
    config = repo / C.STREAM_MODEL / "config.pbtxt"
    text = config.read_text()
    text = text.replace("max_batch_size: 16", "max_batch_size: 24")
    text = text.replace(
        'key: "max_streams" value: { string_value: "8" }', f'key: "max_streams" value: {{ string_value: "{STREAMS}" }}'
    )
    assert "max_batch_size: 24" in text and f'string_value: "{STREAMS}"' in text
    config.write_text(text)
    handle = start_triton(repo, tmp_path_factory.mktemp("triton16") / "tritonserver.log")
    yield handle
    handle.stop()


@contextlib.contextmanager
def _front_end(triton: Any, settings: StreamSettings) -> Iterator[tuple[str, Any]]:
    app = create_app(Settings(triton_url=triton.grpc_url), settings)
    with serve_app(app) as base:
        yield base.replace("http://", "ws://") + "/stream", app


@pytest.fixture(scope="module")
def front(triton16) -> Iterator[tuple[str, Any]]:
    """Keepalive and send timeouts of a few seconds: the non-reading tests wait for them."""
    with _front_end(triton16, SETTINGS) as out:
        yield out


@pytest.fixture(scope="module")
def front_flood(triton16) -> Iterator[tuple[str, Any]]:
    """The shipped settings but a message rate of 500/s, which any Python client flooding exceeds twice."""
    with _front_end(triton16, FLOOD_SETTINGS) as out:
        yield out


def _until(predicate: Callable[[], bool], timeout_s: float) -> float:
    """Seconds until ``predicate()`` holds; fails past ``timeout_s`` (a hang guard)."""
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout_s, "condition not reached in time"
        time.sleep(0.05)
    return time.monotonic() - t0


async def _open(url: str) -> Any:
    import websockets

    ws = await websockets.connect(url, max_size=None, ping_interval=None)
    await ws.send(CONFIG)
    ready = json.loads(await ws.recv())
    assert ready.get("ready"), ready
    return ws


async def _session(url: str, messages: list[Any], wait_s: float = 60.0) -> tuple[list[dict[str, Any]], int]:
    """Open a stream, send these messages, read until the server closes: (messages received, close code)."""
    return await exchange(await _open(url), messages, wait_s)


async def _one_update(url: str) -> tuple[float, int]:
    """A short normal stream: 1 s of audio, its update, END; (its update's t_end, close code)."""
    received, code = await _session(url, [SECOND, json.dumps({"end": True})])
    assert not [m for m in received if "error" in m], received
    return received[0]["t_end"], code


def _many_start_at_once(url: str, n: int) -> None:
    async def run() -> list[tuple[float, int]]:
        return await asyncio.gather(*(_one_update(url) for _ in range(n)))

    assert asyncio.run(run()) == [(1.0, 1000)] * n


# --------------------------------------------------------------------------- slots


def test_abrupt_disconnects_and_rejected_messages_leave_every_slot_free(front, caplog) -> None:
    url, app = front
    import cv2  # opencv-python-headless: a test extra, as in test_stream_integration

    big_jpeg = cv2.imencode(".jpg", np.zeros((3000, 4000, 3), np.uint8))[1].tobytes()  # over 1920x1080
    frame = {"frame_rgb_b64": base64.b64encode(b"\x00" * 12).decode(), "width": 2, "height": 3, "t": 0}
    rejected = [
        ('{"frame_jpeg_b64": "", "t": NaN}', 1008, "message", "finite"),
        ('{"frame_jpeg_b64": "", "t": 1' + "0" * 400 + "}", 1008, "message", "finite"),
        ("[" * 200_000 + "]" * 200_000, 1008, "message", "JSON"),
        ('{"frame_jpeg_b64": "***", "t": 0}', 1007, "frame", "base64"),
        (json.dumps(frame), 1007, "frame", "RGB"),
        (CONFIG, 1008, "message", "unexpected message"),
        (
            b"\x00" * (SETTINGS.audio_message_bytes(stream_config(16_000), "<i2") + 2),
            1009,
            "audio",
            "320000-byte limit",
        ),
        (json.dumps({"frame_jpeg_b64": base64.b64encode(big_jpeg).decode(), "t": 0}), 1009, "frame", "limit"),
        (json.dumps({"volume": 3}), 1008, "message", "unexpected"),
        (json.dumps({"end": False}), 1008, "message", "true"),
    ]

    async def scenario() -> list[tuple[list[dict[str, Any]], int]]:
        for _ in range(20):  # vanish without a close: no END, no close frame
            ws = await _open(url)
            await ws.send(SECOND[:8000])
            ws.transport.abort()
        out = []
        for i in range(20):
            message = rejected[i % len(rejected)][0]
            out.append(await _session(url, [message, SECOND[:3200]]))  # the chunk after races the error
        return out

    outcomes = asyncio.run(scenario())
    for i, (received, code) in enumerate(outcomes):
        _, want, subject, needle = rejected[i % len(rejected)]
        errors = [m for m in received if "error" in m]
        assert code == want and len(errors) == 1, (i, code, received)
        assert errors[0]["subject"] == subject and needle in errors[0]["error"], (i, errors)
    _until(lambda: app.state.stream_counts == {"unconfigured": 0, "streams": 0}, 30)
    t0 = time.monotonic()
    _many_start_at_once(url, STREAMS)  # 40 leaked sequences would leave 24 - 40 slots: none could start
    print(f"\n{STREAMS} streams after 20 disconnects + 20 rejections: all took, {time.monotonic() - t0:.1f} s")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


def test_invalid_utf8_gets_1007_without_an_error_log(front, caplog) -> None:
    url, _ = front
    raw = RawWebSocket(url)
    try:
        raw.send(0x1, CONFIG.encode())
        raw.send(0x1, b'{"end": \xff\xfe}')
        data = raw.read_all()
    finally:
        raw.close()
    assert b"\x88\x02\x03\xef" in data  # a close frame with code 1007
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


def test_idle_connections_are_counted_apart_and_closed_sooner(front) -> None:
    """Connections without a config take no stream: past ``max_unconfigured`` new ones are refused, and each is
    closed after ``first_message_timeout_s``; streams already taken go on."""
    url, app = front

    async def scenario() -> tuple[tuple[list[dict[str, Any]], int], float, tuple[float, int]]:
        import websockets

        taken = await _open(url)  # a stream taken before the idle sockets come
        idle = [RawWebSocket(url) for _ in range(SETTINGS.max_unconfigured)]
        try:
            await asyncio.sleep(0.3)
            assert app.state.stream_counts == {"unconfigured": SETTINGS.max_unconfigured, "streams": 1}
            async with websockets.connect(url, ping_interval=None) as extra:
                refused = ([json.loads(await extra.recv())], 0)
                with contextlib.suppress(websockets.ConnectionClosed):
                    await extra.recv()
                refused = (refused[0], extra.close_code)
            closed_s = await asyncio.to_thread(
                _until, lambda: app.state.stream_counts["unconfigured"] == 0, 4 * SETTINGS.first_message_timeout_s + 5
            )
        finally:
            for raw in idle:
                raw.close()
        await taken.send(SECOND)
        first = json.loads(await taken.recv())
        await taken.close()
        return refused, closed_s, (first["t_end"], 0)

    (received, code), closed_s, (t_end, _) = asyncio.run(scenario())
    print(f"\n{SETTINGS.max_unconfigured} idle connections closed after {closed_s:.1f} s")
    assert code == 1013 and "waiting to start" in received[0]["error"], received
    assert t_end == 1.0  # the stream taken before them was not disturbed


# --------------------------------------------------------------------------- clients that do not read


@pytest.mark.parametrize("ping_flood", [False, True], ids=["silent", "ping-flood"])
def test_non_reading_client_is_closed_in_time_and_frees_its_slot(front, ping_flood: bool) -> None:
    url, app = front
    raw = RawWebSocket(url)
    stop = threading.Event()

    def feed() -> None:  # real-time audio (and, in one case, a flood of pings whose pongs fill its buffer)
        try:
            while not stop.is_set():
                raw.send(0x2, SECOND[:6400])
                for _ in range(400 if ping_flood else 0):
                    raw.send(0x9, b"p" * 125)
                time.sleep(0.2)
        except OSError:
            pass  # the server closed it

    try:
        raw.send(0x1, CONFIG.encode())
        _until(lambda: app.state.stream_counts["streams"] == 1, 30)
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        closed_s = _until(lambda: app.state.stream_counts["streams"] == 0, NOT_READING_BOUND_S)
    finally:
        stop.set()
        raw.close()
    print(f"\nnon-reading client ({'ping flood' if ping_flood else 'silent'}): stream dropped after {closed_s:.1f} s")
    assert asyncio.run(_one_update(url)) == (1.0, 1000)  # its place is free


# --------------------------------------------------------------------------- floods


@contextlib.contextmanager
def _watch(triton: Any, app: Any) -> Iterator[dict[str, float]]:
    """Peak RSS growth of this process (front end + clients) and of tritonserver + its stubs, and the peak of
    any session's unacknowledged requests, while the block runs."""
    front_pids, triton_pids = [os.getpid()], [triton.proc.pid, *procs.stubs(triton.proc.pid)]
    before = (rss_mb(front_pids), rss_mb(triton_pids))
    out = {"front_mb": 0.0, "triton_mb": 0.0, "outstanding": 0, "frames_dropped": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            out["front_mb"] = max(out["front_mb"], rss_mb(front_pids) - before[0])
            out["triton_mb"] = max(out["triton_mb"], rss_mb(triton_pids) - before[1])
            for session in list(app.state.stream_sessions):
                out["outstanding"] = max(out["outstanding"], session.seq.peak_outstanding)
                out["frames_dropped"] = max(out["frames_dropped"], session.frames_dropped)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield out
    finally:
        done.set()
        sampler.join(5)


FLOODS: dict[str, Callable[[int], Any]] = {
    "2-byte audio": lambda i: b"\x01\x00",
    "1-byte audio": lambda i: b"\x01",
    "2x2 RGB frames": lambda i: json.dumps({"frame_rgb_b64": "AAAAAAAAAAAAAAAA", "width": 2, "height": 2, "t": 0}),
    "far-ahead frames": lambda i: json.dumps({"frame_jpeg_b64": "", "t": 100 + i}),
}
FLOOD_MAX_MESSAGES = 200_000
FLOOD_GUARD_S = 30.0


async def _flood(
    url: str, message: Callable[[int], Any], seconds: float
) -> tuple[int, float, int, list[dict[str, Any]]]:
    """Send ``message(i)`` as fast as possible until the server refuses the stream, or for ``seconds`` and then
    END: (messages sent, seconds to the close, close code, messages received). Every 64 messages it lets the
    other clients of this event loop send too (a send into a buffer with room never yields)."""
    import websockets

    ws = await _open(url)
    received: list[dict[str, Any]] = []

    async def read() -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                received.append(json.loads(raw))

    reader = asyncio.ensure_future(read())
    n, t0 = 0, time.monotonic()
    with contextlib.suppress(websockets.ConnectionClosed):
        while n < FLOOD_MAX_MESSAGES and time.monotonic() - t0 < seconds:
            await ws.send(message(n))
            n += 1
            if n % 64 == 0:
                await asyncio.sleep(0)
        await ws.send(json.dumps({"end": True}))
    await asyncio.wait_for(reader, FLOOD_GUARD_S)
    return n, time.monotonic() - t0, ws.close_code, received


@pytest.mark.parametrize(("kind", "streams"), [(k, 1) for k in FLOODS] + [("2-byte audio", STREAMS)])
def test_message_floods_are_refused_with_memory_bounded(front_flood, triton16, kind: str, streams: int) -> None:
    url, app = front_flood

    async def run() -> list[tuple[int, float, int, list[dict[str, Any]]]]:
        seconds = FLOOD_GUARD_S if streams == 1 else FLOOD_S
        return await asyncio.gather(*(_flood(url, FLOODS[kind], seconds) for _ in range(streams)))

    with _watch(triton16, app) as peak:
        outcomes = asyncio.run(run())
    codes = [code for _, _, code, _ in outcomes]
    print(f"\nflood {kind} x{streams}: {sum(o[0] for o in outcomes)} messages, closed after "
          f"{max(o[1] for o in outcomes):.1f} s, codes {sorted(codes)}; growth front end {peak['front_mb']:.0f} MB, "
          f"tritonserver {peak['triton_mb']:.0f} MB")  # fmt: skip
    for code, (_, _, _, received) in zip(codes, outcomes, strict=True):
        if code == 1008 or streams == 1:
            assert code == 1008 and "messages per second" in received[-1]["error"], (code, received[-1:])
        else:  # at the stream cap the front end reads each of 16 streams more slowly: under twice the rate,
            assert code == 1000  # such a stream is not a flood; it ended normally at its END
    assert peak["front_mb"] < FRONT_GROWTH_BOUND_MB and peak["triton_mb"] < TRITON_GROWTH_BOUND_MB, peak
    _until(lambda: app.state.stream_counts["streams"] == 0, 30)


async def _abuse(url: str, stop: asyncio.Event, per_s: float) -> int:
    """Just under the message rate: 1-byte audio messages and 2x2 frames at t = 0, alternately."""
    ws, n, t0 = await _open(url), 0, time.monotonic()
    while not stop.is_set():
        await ws.send(b"\x01" if n % 2 else FLOODS["2x2 RGB frames"](n))
        n += 1
        await asyncio.sleep(max(0.0, t0 + n / per_s - time.monotonic()))
    await ws.send(json.dumps({"end": True}))
    async for _ in ws:
        pass
    assert ws.close_code == 1000
    return n


def test_a_paced_flood_stays_bounded_and_drains(front_flood, triton16) -> None:
    url, app = front_flood

    async def run() -> tuple[int, float]:
        stop = asyncio.Event()
        task = asyncio.ensure_future(_abuse(url, stop, 0.8 * FLOOD_SETTINGS.max_messages_per_s))
        await asyncio.sleep(FLOOD_S)
        stop.set()
        t0 = time.monotonic()
        return await task, time.monotonic() - t0

    with _watch(triton16, app) as peak:
        sent, drain_s = asyncio.run(run())
    print(f"\npaced flood: {sent} messages in {FLOOD_S:g} s, drained in {drain_s:.1f} s; peak outstanding "
          f"{peak['outstanding']}, frames dropped {peak['frames_dropped']}, growth front end "
          f"{peak['front_mb']:.0f} MB, tritonserver {peak['triton_mb']:.0f} MB")  # fmt: skip
    assert 0 < peak["outstanding"] <= FLOOD_SETTINGS.max_outstanding
    assert peak["frames_dropped"] > 0  # over the frame rate: dropped before decoding
    assert drain_s < DRAIN_BOUND_S
    assert peak["front_mb"] < FRONT_GROWTH_BOUND_MB and peak["triton_mb"] < TRITON_GROWTH_BOUND_MB, peak


# --------------------------------------------------------------------------- fairness


async def _realtime_latencies(url: str, seconds: float) -> list[float]:
    """A normal real-time stream (0.25 s messages): its updates' latency_ms."""
    ws = await _open(url)
    updates: list[dict[str, Any]] = []

    async def read() -> None:
        async for raw in ws:
            msg = json.loads(raw)
            assert "error" not in msg, msg
            updates.append(msg)

    reader = asyncio.ensure_future(read())
    t0 = time.monotonic()
    for i in range(int(seconds * 4)):
        await ws.send(SECOND[:8000])
        await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.25 - time.monotonic()))
    await ws.send(json.dumps({"end": True}))
    await asyncio.wait_for(reader, 120)
    return [u["latency_ms"] for u in updates[:-1] if u["latency_ms"] is not None]


def test_a_normal_stream_beside_an_abusive_one_keeps_its_latency(front_flood) -> None:
    url, _ = front_flood

    async def beside() -> tuple[list[float], int]:
        stop = asyncio.Event()
        abuser = asyncio.ensure_future(_abuse(url, stop, 0.8 * FLOOD_SETTINGS.max_messages_per_s))
        await asyncio.sleep(1.0)
        latencies = await _realtime_latencies(url, 6.0)
        stop.set()
        return latencies, await abuser

    alone = asyncio.run(_realtime_latencies(url, 6.0))
    with_abuse, abusive_messages = asyncio.run(beside())
    a, b = statistics.median(alone), statistics.median(with_abuse)
    print(f"\nupdate latency median alone {a:.0f} ms, beside an abusive stream ({abusive_messages} messages) {b:.0f} ms"
          f" (max {max(with_abuse):.0f} ms)")  # fmt: skip
    assert len(alone) >= 4 and len(with_abuse) >= 4
    assert b <= LATENCY_FACTOR * a + LATENCY_SLACK_MS, (alone, with_abuse)
