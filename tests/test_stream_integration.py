"""Real-time streams end to end: the real tritonserver (fusion_emotion_stream), the real front end over a real
WebSocket, 127.0.0.1 only. Every stream here is a few seconds long; the limits tests reload the stream model
with small limits (Triton's model-load API with a config override) and restore it afterwards."""

from __future__ import annotations

import asyncio
import base64
import json
import queue
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fusion_emotion.client.stream import MediaSource, play
from helpers import exchange
from test_frontend import run_frontend

from fusion_emotion import contract as C
from fusion_emotion import testmedia
from fusion_emotion.core import stream as S
from fusion_emotion.core.stream_frames import jpeg_frame
from fusion_emotion.frontend.settings import Settings
from fusion_emotion.tensors import chunk_inputs, parse_update, stream_outputs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def _jpeg(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def speech16() -> np.ndarray:
    return testmedia.speech(rate=16_000).astype(np.float32)


@pytest.fixture(scope="module")
def frontend(triton) -> Iterator[str]:
    with run_frontend(Settings(triton_url=triton.grpc_url)) as url:
        yield url.replace("http://", "ws://") + "/stream"


def _source(speech: np.ndarray, seconds: float, rate: int = 16_000, fps: float = 0.0) -> MediaSource:
    pcm = (np.resize(speech, int(seconds * rate)) * 32767).astype("<i2")[:, None]
    frames = []
    if fps:
        pictures = [_jpeg(f) for f in testmedia.video_frames(320, 240, 1.0, 4.0)]
        frames = [(round(i / fps, 6), pictures[i % len(pictures)]) for i in range(int(seconds * fps))]
    return MediaSource(pcm, rate, frames)


def _reference(reference, source: MediaSource, config: S.StreamConfig) -> list[S.Update]:
    native = (source.pcm.astype(np.float32) / 32768.0).T
    frames = [jpeg_frame(t, data) for t, data in source.frames]
    return S.reference_updates(
        native, source.sample_rate, frames, config,
        encode_video=reference.video_encoder, encode_audio=reference.audio_encoder, head=reference.head,
    )  # fmt: skip


def _assert_matches(updates: list[dict[str, Any]], ref: list[S.Update]) -> None:
    assert [(u["t_start"], u["t_end"]) for u in updates] == [(round(r.t_start, 6), round(r.t_end, 6)) for r in ref]
    for u, r in zip(updates, ref):
        probs = np.array([u[k] for k in C.LABELS])
        np.testing.assert_allclose(probs, r.probabilities, atol=1e-4)
        assert abs(probs.sum() - 1.0) < 1e-5 and u["dominant_emotion"] == C.LABELS[int(np.argmax(probs))]
        flags = np.array([np.nan if u["qa_flags"][k] is None else u["qa_flags"][k] for k in C.QA_FLAG_NAMES])
        np.testing.assert_allclose(flags, r.qa_flags, atol=1e-4, equal_nan=True)


def _ping(frontend_ws: str) -> int:
    url = frontend_ws.replace("ws://", "http://").replace("/stream", "/ping")
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status


# --------------------------------------------------------------------------- updates equal the reference


def test_websocket_audio_video_updates_in_order_equal_reference(frontend, reference, speech16) -> None:
    """5.0 s of speech + 5 fps face frames, hop 1.5 s: updates at 1.5, 3, 4.5, then END flushes [1, 5]."""
    source = _source(speech16, 5.0, fps=5.0)
    result = asyncio.run(play(frontend, source, hop_s=1.5))
    assert result.errors == [] and result.close_code == 1000
    assert result.ready is not None and result.ready["hop_s"] == 1.5 and result.ready["window_s"] == 4.0
    assert [u["t_end"] for u in result.updates] == [1.5, 3.0, 4.5, 5.0]  # in order; the last is the partial hop
    assert all(u["latency_ms"] is not None and u["latency_ms"] >= 0 for u in result.updates)
    assert all(u["qa_flags"]["video_face_detection_confidence"] is not None for u in result.updates)
    _assert_matches(result.updates, _reference(reference, source, S.stream_config(16_000, 1, 1.5)))


def test_triton_stream_48k_stereo_equals_reference(triton, reference, speech16) -> None:
    """tritonclient's own streaming API, 48 kHz stereo in uneven chunks, audio only; the last window waits for
    END (the resampler's reach past 3.0 s never comes)."""
    import tritonclient.grpc as grpcclient

    rate, seconds = 48_000, 3.0
    mono = np.resize(testmedia.speech(rate=rate), int(seconds * rate)).astype(np.float32)
    native = np.stack([mono, 0.5 * mono])
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    sid, outputs = 77_001, stream_outputs(grpcclient)
    try:
        start = chunk_inputs(grpcclient, sample_rate=rate, channels=2, hop_s=1.0)
        client.async_stream_infer(C.STREAM_MODEL, start, sequence_id=sid, sequence_start=True, outputs=outputs)
        pos = 0
        for n in (1000, 47_000, 30_000, 50_000, 16_000):  # 144 000 samples, cut anywhere
            chunk = native[:, pos : pos + n].T.reshape(-1)
            pos += n
            last = pos >= native.shape[1]
            client.async_stream_infer(C.STREAM_MODEL, chunk_inputs(grpcclient, audio=chunk), sequence_id=sid,
                                      sequence_end=last, outputs=outputs)  # fmt: skip
        updates, final = [], False
        while not final:
            result, error = responses.get(timeout=300)
            assert error is None, error
            update, final = parse_update(result)
            if update is not None:
                updates.append(update)
    finally:
        client.stop_stream()
        client.close()
    assert [u["t_end"] for u in updates] == [1.0, 2.0, 3.0]
    ref = S.reference_updates(
        native, rate, [], S.stream_config(rate, 2, 1.0),
        encode_video=reference.video_encoder, encode_audio=reference.audio_encoder, head=reference.head,
    )  # fmt: skip
    _assert_matches(updates, ref)
    assert all(u["qa_flags"]["video_blur_level"] is None for u in updates)  # audio only


# --------------------------------------------------------------------------- bad input


async def _raw_session(url: str, messages: list[Any], wait_s: float = 120.0) -> tuple[list[dict[str, Any]], int]:
    """Send these messages (str = text, bytes = binary), then read until the server closes."""
    import websockets

    async with websockets.connect(url, max_size=None, ping_interval=None) as ws:
        return await exchange(ws, messages, wait_s)


CONFIG = json.dumps({"sample_rate": 16_000, "encoding": "pcm_s16le"})


def test_bad_messages_get_their_error_and_leave_a_concurrent_stream_unharmed(frontend, speech16) -> None:
    good = _source(speech16, 4.0)
    frame = {"frame_jpeg_b64": base64.b64encode(b"\xff\xd8 not a jpeg").decode(), "t": 0.1}
    cases = [
        ([json.dumps({"sample_rate": 16_000, "encoding": "mp3"})], 1003, "encoding", "unknown encoding"),
        ([json.dumps({"sample_rate": 4_000, "encoding": "pcm_s16le"})], 1003, "sample_rate", "outside"),
        ([json.dumps({"sample_rate": 16_000, "encoding": "pcm_s16le", "hop_s": 9})], 1008, "hop_s", "outside"),
        ([CONFIG, "{not json"], 1008, "message", "JSON"),
        ([CONFIG, json.dumps({"volume": 3})], 1008, "message", "unexpected message"),
        ([CONFIG, b"\x00" * 320_002], 1009, "audio", "over the 320000-byte limit"),  # 10 s at 16 kHz s16 mono
        ([CONFIG, b"\x00" * 3200, json.dumps(frame)], 1007, "frame", "not a decodable JPEG"),
        ([CONFIG, json.dumps({"frame_jpeg_b64": "***", "t": 0})], 1007, "frame", "base64"),
    ]

    async def scenario() -> tuple[Any, list[Any]]:
        good_task = asyncio.ensure_future(play(frontend, good, realtime=True, chunk_s=0.25))
        await asyncio.sleep(0.5)
        outcomes = [await _raw_session(frontend, msgs) for msgs, *_ in cases]
        return await good_task, outcomes

    good_result, outcomes = asyncio.run(scenario())
    for (msgs, code, subject, needle), (received, close) in zip(cases, outcomes):
        errors = [m for m in received if "error" in m]
        assert close == code, (msgs[-1][:40], received)
        assert len(errors) == 1 and errors[0]["subject"] == subject and needle in errors[0]["error"], errors
        assert errors[0]["close_code"] == code
    assert good_result.errors == [] and good_result.close_code == 1000
    assert [u["t_end"] for u in good_result.updates] == [1.0, 2.0, 3.0, 4.0]
    assert _ping(frontend) == 200


# --------------------------------------------------------------------------- limits (model reloaded with small ones)


def _model_config(triton) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{triton.http_url}/v2/models/{C.STREAM_MODEL}/config", timeout=30) as r:
        return json.loads(r.read())


def _load(triton, config: dict[str, Any]) -> None:
    body = json.dumps({"parameters": {"config": json.dumps(config)}}).encode()
    req = urllib.request.Request(
        f"http://{triton.http_url}/v2/repository/models/{C.STREAM_MODEL}/load", data=body, method="POST"
    )
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=300) as r:
        assert r.status == 200


@pytest.fixture
def small_limits(triton) -> Iterator[None]:
    """The stream model with max_streams 2 and a 2 s idle timeout, for this test only."""
    original = _model_config(triton)
    config = json.loads(json.dumps(original))
    config["parameters"]["max_streams"] = {"string_value": "2"}
    config["parameters"]["idle_timeout_s"] = {"string_value": "2"}
    _load(triton, config)
    try:
        yield
    finally:
        _load(triton, original)


def test_stream_limit_idle_timeout_and_vanished_clients(triton, small_limits, speech16) -> None:
    with run_frontend(Settings(triton_url=triton.grpc_url)) as http_url:
        url = http_url.replace("http://", "ws://") + "/stream"
        asyncio.run(_limits_scenario(url, speech16))


async def _limits_scenario(url: str, speech16: np.ndarray) -> None:
    import websockets

    chunk = (np.resize(speech16, 8000) * 32767).astype("<i2").tobytes()

    async def open_stream() -> Any:
        ws = await websockets.connect(url, max_size=None, ping_interval=None)
        await ws.send(CONFIG)
        assert json.loads(await ws.recv())["ready"]
        await ws.send(chunk)
        return ws

    # two streams fill the model's limit; a third is refused with 1013 and a reason
    a, b = await open_stream(), await open_stream()
    received, code = await _raw_session(url, [CONFIG, chunk], wait_s=60)
    assert code == 1013 and received[-1]["kind"] == "overloaded" and "limit" in received[-1]["error"]
    # clients that vanish (no END, no close handshake) free their streams at once
    for ws in (a, b):
        ws.transport.abort()
    await asyncio.sleep(1.0)
    a, b = await open_stream(), await open_stream()  # "ready" comes only once the model took the stream
    for ws in (a, b):  # and they work: 1 s of audio gives the first update (sent together: 2 s idle timeout)
        await ws.send(chunk)
    for ws in (a, b):
        assert json.loads(await ws.recv())["t_end"] == 1.0
        await ws.close()
    await asyncio.sleep(1.0)
    # a silent stream is dropped after the idle timeout, with its reason and close code 4408
    t0 = time.monotonic()
    received, code = await _raw_session(url, [CONFIG, chunk], wait_s=60)
    waited = time.monotonic() - t0
    assert code == 4408 and received[-1]["kind"] == "deadline" and "idle" in received[-1]["error"], received
    assert 2.0 <= waited < 30, waited


def test_frontend_stream_limit(triton, monkeypatch) -> None:
    """The front end's own limit (FUSION_EMOTION_MAX_STREAMS) refuses before any Triton work."""
    monkeypatch.setenv("FUSION_EMOTION_MAX_STREAMS", "1")
    with run_frontend(Settings(triton_url=triton.grpc_url)) as http_url:
        url = http_url.replace("http://", "ws://") + "/stream"

        async def scenario() -> tuple[Any, int]:
            import websockets

            async with websockets.connect(url, ping_interval=None) as first:
                await first.send(CONFIG)
                assert json.loads(await first.recv())["ready"]
                received, code = await _raw_session(url, [CONFIG])
                await first.send(json.dumps({"end": True}))
                async for _ in first:
                    pass
                return received, code

        received, code = asyncio.run(scenario())
    assert code == 1013 and received[0]["kind"] == "overloaded"


def test_stream_cli_prints_csv(frontend, tmp_path: Path, speech16, capsys) -> None:
    from fusion_emotion.cli import main

    wav = tmp_path / "speech.wav"
    wav.write_bytes(testmedia.wav(np.resize(speech16, 40_000), 16_000))
    assert main(["stream", str(wav), "--url", frontend, "--csv", "--hop", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("t_start,t_end,angry") and len(lines) == 1 + 3  # 1 s, 2 s, then the partial 2.5 s
    assert [line.split(",")[1] for line in lines[1:]] == ["1.0", "2.0", "2.5"]


def test_bench_stream_phase_measures_a_live_stream(triton, frontend) -> None:
    """`fusion-emotion bench-stream`'s phase against the live front end: updates, latency and server CPU."""
    import os

    from fusion_emotion.ops import stream_bench

    source = stream_bench.speech_source(3.0, video=False, fps=5.0)
    doc = stream_bench.run_phase(
        frontend, 1, source, hop_s=1.0, chunk_s=0.1, aligned=True, server_pids=[triton.proc.pid, os.getpid()]
    )
    assert doc["updates_expected"] == stream_bench.expected_updates(3.0, 1.0) >= 3
    assert doc["updates_lost"] == 0 and not doc["errors"], doc
    assert doc["server_latency_ms"]["p50"] is not None and doc["server_cpu_s"] > 0
    assert stream_bench.report_line(doc).startswith("N= 1 A")
