"""Live streams through SageMaker's bidirectional streaming, played by the local stand-in of its bridge.

The real tritonserver and front end; between them and the real SDK client (aws-sdk-sagemaker-runtime-http2 on
awscrt, HTTP/2 over TLS, in .venv-py312 made by `make setup`), fusion_emotion/ops/sagemaker_bridge.py, which
opens the WebSocket to the container as AWS documents SageMaker does. Every stream is a few seconds of speech.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fusion_emotion.client.stream import MediaSource, play
from helpers import serve_app
from test_frontend import run_frontend

from fusion_emotion import contract as C
from fusion_emotion import testmedia
from fusion_emotion.frontend.app import create_app
from fusion_emotion.frontend.settings import Settings
from fusion_emotion.frontend.stream import CLOSE_UNSUPPORTED, StreamSettings
from fusion_emotion.server.procs import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
PY312 = ROOT / ".venv-py312" / "bin" / "python"
DRIVER = Path(__file__).with_name("sagemaker_driver.py")
ENV = {"PYTHONPATH": str(ROOT), "AWS_ACCESS_KEY_ID": "AKIDSTANDIN", "AWS_SECRET_ACCESS_KEY": "stand-in-secret",
       "AWS_EC2_METADATA_DISABLED": "true", "PATH": os.environ.get("PATH", "")}  # fmt: skip
RATE = 16_000


def _py312() -> str:
    assert PY312.exists(), f"{PY312} is missing: `make setup` makes it (Python 3.12 + [models,sagemaker-bridge])"
    return str(PY312)


@contextlib.contextmanager
def bridge(container: str, tmp: Path) -> Iterator[dict[str, str]]:
    """The stand-in in a child process (pings every 0.5 s, so a stream of seconds answers several)."""
    port = free_port()
    proc = subprocess.Popen(
        [_py312(), "-m", "fusion_emotion.ops.sagemaker_bridge", "--container", container, "--port", str(port),
         "--cert-dir", str(tmp), "--ping-interval", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=ENV, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert proc.poll() is None and time.monotonic() < deadline, "the stand-in did not start"
            time.sleep(0.1)
        yield info
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _ws(http_url: str) -> str:
    return http_url.replace("http://", "ws://")


@pytest.fixture(scope="module")
def frontend(triton) -> Iterator[str]:
    with run_frontend(Settings(triton_url=triton.grpc_url)) as url:
        yield url


@pytest.fixture(scope="module")
def standin(frontend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with bridge(_ws(frontend), tmp_path_factory.mktemp("bridge")) as info:
        yield info


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """4.5 s of speech: as a WAV (the CLI), as raw int16 PCM (the driver), and as a MediaSource."""
    samples = np.resize(testmedia.speech(rate=RATE).astype(np.float32), int(4.5 * RATE))
    pcm = (samples * 32767).astype("<i2")
    folder = tmp_path_factory.mktemp("speech")
    (folder / "speech.wav").write_bytes(testmedia.wav(samples, RATE, "s16"))
    (folder / "speech.pcm").write_bytes(pcm.tobytes())
    return {"wav": folder / "speech.wav", "pcm": folder / "speech.pcm", "source": MediaSource(pcm[:, None], RATE)}


@pytest.fixture(scope="module")
def direct(frontend: str, speech: dict[str, Any]) -> list[dict[str, Any]]:
    """The same audio over /stream directly: the updates every SageMaker path must reproduce."""
    result = asyncio.run(play(_ws(frontend) + "/stream", speech["source"]))
    assert result.close_code == 1000 and not result.errors and len(result.updates) >= 3, result
    return result.updates


def _same_updates(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [(u["t_start"], u["t_end"]) for u in got] == [(u["t_start"], u["t_end"]) for u in want]
    for g, w in zip(got, want):
        np.testing.assert_allclose([g[k] for k in C.LABELS], [w[k] for k in C.LABELS], atol=1e-4)
        assert g["dominant_emotion"] == w["dominant_emotion"]


def _drive(standin: dict[str, str], speech: dict[str, Any], **spec: Any) -> list[dict[str, Any]]:
    """One stream through the SDK client (tests/sagemaker_driver.py); every JSON line it printed."""
    spec = {"endpoint_url": standin["endpoint_url"], "ca_bundle": standin["ca_bundle"], "pcm": str(speech["pcm"]),
            "sample_rate": RATE, **spec}  # fmt: skip
    out = subprocess.run([_py312(), str(DRIVER), json.dumps(spec)], capture_output=True, text=True, env=ENV,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def _result(lines: list[dict[str, Any]]) -> dict[str, Any]:
    results = [line["result"] for line in lines if "result" in line]
    assert len(results) == 1, lines
    return results[0]


def test_cli_streams_a_wav_through_sagemaker_as_over_stream(standin, speech, direct) -> None:
    """`fusion-emotion stream FILE --sagemaker-endpoint`: config as a UTF8 part, SageMaker's default path."""
    out = subprocess.run(
        [_py312(), "-m", "fusion_emotion.cli", "stream", str(speech["wav"]), "--sagemaker-endpoint", "fusion-emotion",
         "--region", "us-east-1", "--endpoint-url", standin["endpoint_url"], "--ca-bundle", standin["ca_bundle"]],
        capture_output=True, text=True, env=ENV, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    _same_updates([json.loads(line) for line in out.stdout.splitlines()], direct)


def test_settings_in_the_query_string_and_another_path(standin, speech, direct) -> None:
    """ModelQueryString carries the settings (no config message); ModelInvocationPath=stream picks /stream."""
    result = _result(_drive(standin, speech, query=True, path="stream"))
    assert result["close_code"] == 1000 and result["ready"]["sample_rate"] == RATE, result
    _same_updates(result["updates"], direct)


def test_config_as_binary_and_fragmented_messages(standin, speech, direct) -> None:
    """The config in a BINARY part (the SDK's default DataType); every message (config, 0.1 s of audio, end)
    as PARTIAL parts of 50 bytes ending in COMPLETE: one fragmented WebSocket message each (were the parts
    separate messages, the config and {"end": true} would not parse), and the same updates."""
    result = _result(_drive(standin, speech, config_as_binary=True, fragment_bytes=50))
    assert result["close_code"] == 1000 and not result["errors"], result
    _same_updates(result["updates"], direct)


def test_bad_config_reaches_the_client_with_code_and_reason(standin, speech) -> None:
    """An unsupported rate in a binary config: the container's error message (a UTF8 part), then its Close
    (1003, "bad_request") as the ModelStreamError's ErrorCode and Message."""
    result = _result(_drive(standin, speech, config_as_binary=True, sample_rate=1000))
    assert result["close_code"] == CLOSE_UNSUPPORTED and result["close_reason"] == "bad_request", result
    (error,) = result["errors"]
    assert error["close_code"] == CLOSE_UNSUPPORTED and error["subject"] == "sample_rate" and not result["updates"]


def test_bad_invocation_path_and_unreachable_container(standin, speech, tmp_path) -> None:
    """What the SDK raises before any stream: 400 for a path the API refuses, 424 when the socket cannot open."""
    (raised,) = [line["raised"] for line in _drive(standin, speech, path="/stream")]
    assert raised["type"] == "InputValidationError", raised
    with bridge(f"ws://127.0.0.1:{free_port()}", tmp_path) as nowhere:
        (raised,) = [line["raised"] for line in _drive(nowhere, speech)]
    assert raised["type"] == "ModelError" and "WebSocket" in raised["message"], raised


def test_vanished_client_frees_its_stream(triton, speech, tmp_path) -> None:
    """A front end that takes one stream: a second is accepted, then closed 1013 (the client sees the code);
    a client killed mid-stream frees its place, so the next stream is taken."""
    app = create_app(Settings(triton_url=triton.grpc_url), StreamSettings(max_streams=1))
    with serve_app(app) as url, bridge(_ws(url), tmp_path) as info:
        spec = {"endpoint_url": info["endpoint_url"], "ca_bundle": info["ca_bundle"], "pcm": str(speech["pcm"]),
                "sample_rate": RATE, "realtime": True, "seconds": 120}  # fmt: skip
        first = subprocess.Popen([_py312(), str(DRIVER), json.dumps(spec)], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, env=ENV)  # fmt: skip
        try:
            assert first.stdout is not None
            assert "update" in json.loads(first.stdout.readline())  # streaming, one update in
            refused = _result(_drive(info, speech))
            assert refused["close_code"] == 1013 and refused["errors"][0]["kind"] == "overloaded", refused
        finally:
            first.kill()  # no end, no close: the TCP connection just goes
            first.wait(30)
        deadline = time.monotonic() + 60  # hang guard only: the place is freed once the socket closes
        while True:
            result = _result(_drive(info, speech))
            if result["close_code"] == 1000 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert result["close_code"] == 1000 and len(result["updates"]) >= 3, result
