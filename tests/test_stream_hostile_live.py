"""``/stream`` under attack, through the real front end and the real tritonserver (127.0.0.1 only).

The stream model is reloaded with room for 16 streams (max_batch_size 24 sequence slots, so a leaked slot
shows as a START that cannot start); the front end runs in this process with small keepalive and send
timeouts, so its stream counts and sessions can be read. Numbers printed here (run with ``-s``) are recorded in
docs/reliability.md ("Live streams").
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import psutil
import pytest
from helpers import serve_app
from test_stream_integration import _load, _model_config

from fusion_emotion.core.stream import stream_config
from fusion_emotion.frontend.app import create_app
from fusion_emotion.frontend.settings import Settings
from fusion_emotion.frontend.stream import StreamSettings
from fusion_emotion.server import procs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

STREAMS = 16
SETTINGS = StreamSettings(max_streams=STREAMS, ping_interval_s=2.0, ping_timeout_s=2.0, send_timeout_s=3.0)
# A client that stops reading: keepalive (2 + 2 s), then one silent keepalive round, or a blocked write (3 s);
# the rest is slack for a loaded 2-core host. A hang guard, not a speed test.
NOT_READING_BOUND_S = 2 * (SETTINGS.ping_interval_s + SETTINGS.ping_timeout_s) + 6.0
FLOOD_S = 5.0
FRONT_GROWTH_BOUND_MB = 96.0  # this process (front end + the test's clients) over one flood
TRITON_GROWTH_BOUND_MB = 96.0  # tritonserver and its stubs over one flood
DRAIN_BOUND_S = 30.0  # from END after a flood to the close
LATENCY_FACTOR = 4.0  # a normal stream's median latency beside an abusive one, over its median alone
LATENCY_SLACK_MS = 1500.0
CONFIG = json.dumps({"sample_rate": 16_000, "encoding": "pcm_s16le"})
SECOND = np.zeros(16_000, "<i2").tobytes()


@pytest.fixture(scope="module")
def room_for_16(triton) -> Iterator[None]:
    original = _model_config(triton)
    config = json.loads(json.dumps(original))
    config["max_batch_size"] = 24
    config["parameters"]["max_streams"] = {"string_value": str(STREAMS)}
    _load(triton, config)
    try:
        yield
    finally:
        _load(triton, original)


@pytest.fixture(scope="module")
def front(triton, room_for_16) -> Iterator[tuple[str, Any]]:
    app = create_app(Settings(triton_url=triton.grpc_url), SETTINGS)
    with serve_app(app) as base:
        yield base.replace("http://", "ws://") + "/stream", app


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
    import websockets

    ws = await _open(url)
    received: list[dict[str, Any]] = []
    for m in messages:
        try:
            await ws.send(m)
        except websockets.ConnectionClosed:
            break

    async def read() -> None:
        async for raw in ws:
            received.append(json.loads(raw))

    try:
        await asyncio.wait_for(read(), wait_s)
    except websockets.ConnectionClosed:
        pass
    return received, ws.close_code


async def _one_update(url: str) -> tuple[float, int]:
    """A short normal stream: 1 s of audio, its update, END; (its update's t_end, close code)."""
    received, code = await _session(url, [SECOND, json.dumps({"end": True})])
    assert not [m for m in received if "error" in m], received
    return received[0]["t_end"], code


def _many_start_at_once(url: str, n: int) -> None:
    async def run() -> list[tuple[float, int]]:
        return await asyncio.gather(*(_one_update(url) for _ in range(n)))

    assert asyncio.run(run()) == [(1.0, 1000)] * n


class RawClient:
    """A WebSocket client on a bare socket: it sends what it is told and reads nothing after the handshake."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("ws://").split("/")[0].split(":")
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills soon when not read
        self.sock.connect((host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /stream HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)  # the handshake only, byte by byte: nothing past it is read
        assert head.startswith(b"HTTP/1.1 101"), head

    def send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
        else:
            head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        data = np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)
        self.sock.sendall(head + mask + data.tobytes())

    def read_all(self, timeout_s: float = 10.0) -> bytes:
        self.sock.settimeout(timeout_s)
        out = b""
        try:
            while chunk := self.sock.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return out

    def close(self) -> None:
        self.sock.close()


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
    raw = RawClient(url)
    try:
        raw.send(0x1, CONFIG.encode())
        raw.send(0x1, b'{"end": \xff\xfe}')
        data = raw.read_all()
    finally:
        raw.close()
    assert b"\x88\x02\x03\xef" in data  # a close frame with code 1007
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


# --------------------------------------------------------------------------- clients that do not read


@pytest.mark.parametrize("ping_flood", [False, True], ids=["silent", "ping-flood"])
def test_non_reading_client_is_closed_in_time_and_frees_its_slot(front, ping_flood: bool) -> None:
    url, app = front
    raw = RawClient(url)
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


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


async def _flood(url: str, message: Callable[[int], Any], seconds: float) -> tuple[int, float, int]:
    """Send ``message(i)`` as fast as the server takes them for ``seconds``, then END:
    (messages sent, seconds from END to the close, close code)."""
    ws = await _open(url)
    n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        await ws.send(message(n))
        n += 1
    await ws.send(json.dumps({"end": True}))
    t_end = time.monotonic()
    async for _ in ws:
        pass
    return n, time.monotonic() - t_end, ws.close_code


FLOODS: dict[str, Callable[[int], Any]] = {
    "2-byte audio": lambda i: b"\x01\x00",
    "1-byte audio": lambda i: b"\x01",
    "2x2 RGB frames": lambda i: json.dumps({"frame_rgb_b64": "AAAAAAAAAAAAAAAA", "width": 2, "height": 2, "t": 0}),
    "far-ahead frames": lambda i: json.dumps({"frame_jpeg_b64": "", "t": 100 + i}),
}


@pytest.mark.parametrize("kind", list(FLOODS))
def test_message_floods_keep_memory_bounded_and_drain(front, triton, kind: str) -> None:
    url, app = front
    front_pids = [os.getpid()]
    triton_pids = [triton.proc.pid, *procs.stubs(triton.proc.pid)]
    before = (_rss_mb(front_pids), _rss_mb(triton_pids))
    peak = list(before)
    done = threading.Event()
    outstanding = [0]

    def sample() -> None:
        while not done.is_set():
            peak[0], peak[1] = max(peak[0], _rss_mb(front_pids)), max(peak[1], _rss_mb(triton_pids))
            for session in list(app.state.stream_sessions):
                outstanding[0] = max(outstanding[0], session.seq.peak_outstanding)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        sent, drain_s, code = asyncio.run(_flood(url, FLOODS[kind], FLOOD_S))
    finally:
        done.set()
        sampler.join(5)
    growth = (peak[0] - before[0], peak[1] - before[1])
    print(f"\nflood {kind}: {sent} messages in {FLOOD_S:g} s, drained in {drain_s:.1f} s, close {code}, "
          f"growth front end {growth[0]:.0f} MB, tritonserver {growth[1]:.0f} MB, "
          f"peak outstanding {outstanding[0]}")  # fmt: skip
    assert code == 1000 and drain_s < DRAIN_BOUND_S
    assert outstanding[0] <= SETTINGS.max_outstanding
    assert growth[0] < FRONT_GROWTH_BOUND_MB and growth[1] < TRITON_GROWTH_BOUND_MB, growth


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


def test_a_normal_stream_beside_an_abusive_one_keeps_its_latency(front) -> None:
    url, app = front

    async def beside() -> tuple[list[float], int]:
        stop = asyncio.Event()

        async def abuse() -> int:
            ws, n = await _open(url), 0
            while not stop.is_set():
                await ws.send(b"\x01" if n % 2 else FLOODS["2x2 RGB frames"](n))
                n += 1
            await ws.close()
            return n

        abuser = asyncio.ensure_future(abuse())
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
