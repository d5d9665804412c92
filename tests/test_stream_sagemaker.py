"""What the front end accepts for SageMaker's bidirectional streaming, without Triton: the settings from a query
string, a config in a binary frame, the default path, POST /ping, admission after the accept. The live streams
through the stand-in of SageMaker's bridge are tests/test_sagemaker_stream.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from test_frontend import run_frontend

from fusion_emotion.errors import ServingError
from fusion_emotion.frontend.settings import Settings
from fusion_emotion.frontend.stream import CLOSE_UNSUPPORTED, StreamClose, parse_config
from fusion_emotion.frontend.stream_sagemaker import BIDI_PATH, config_text, query_config
from fusion_emotion.server.procs import free_port


def test_query_string_settings_read_as_the_config_message() -> None:
    assert query_config({}) is None  # no settings there: the first message carries them
    text = query_config({"sample_rate": "44100", "encoding": "pcm_f32le", "channels": "2", "hop_s": "0.5"})
    assert text is not None
    cfg, enc = parse_config(text)
    assert (cfg.sample_rate, cfg.channels, cfg.hop_s, enc) == (44_100, 2, 0.5, "pcm_f32le")
    with pytest.raises(ServingError) as err:
        query_config({"sample_rate": "16000", "encoding": "pcm_s16le", "gain": "2"})
    assert err.value.subject == "query" and "'gain'" in err.value.reason
    for params, subject, code in (
        ({"sample_rate": "fast", "encoding": "pcm_s16le"}, "sample_rate", 1008),  # not a number
        ({"sample_rate": "96000", "encoding": "pcm_s16le"}, "sample_rate", CLOSE_UNSUPPORTED),
        ({"sample_rate": "16000", "encoding": "opus"}, "encoding", CLOSE_UNSUPPORTED),
        ({"encoding": "pcm_s16le"}, "sample_rate", 1008),
    ):
        with pytest.raises(StreamClose) as closed:
            parse_config(query_config(params) or "")
        assert (closed.value.error.subject, closed.value.code) == (subject, code), params


def test_config_text_from_a_text_or_a_binary_frame() -> None:
    config = '{"sample_rate": 16000, "encoding": "pcm_s16le"}'
    assert config_text({"text": config}) == config
    assert config_text({"bytes": config.encode()}) == config  # SageMaker's default DataType is BINARY
    for data in (b"\x00\x01" * 100, b"\xff\xfe{", b"sample_rate=16000"):
        with pytest.raises(ServingError) as err:
            config_text({"bytes": data})
        assert "DataType=UTF8" in err.value.reason and "ModelQueryString" in err.value.reason


async def _session(url: str, messages: list[str | bytes]) -> tuple[list[dict[str, Any]], int | None, str | None]:
    import websockets

    async with websockets.connect(url, ping_interval=None) as ws:
        for message in messages:
            await ws.send(message)
        received: list[dict[str, Any]] = []
        try:
            async for raw in ws:
                received.append(json.loads(raw))
        except websockets.ConnectionClosedError:
            pass  # an error close ends the iteration with this
        return received, ws.close_code, ws.close_reason


@pytest.fixture(scope="module")
def offline() -> Any:
    with run_frontend(Settings(triton_url=f"127.0.0.1:{free_port()}")) as url:
        yield url


def test_default_path_and_post_ping(offline: str) -> None:
    """SageMaker's default path serves the protocol; its errors come after the accept, with code and reason."""
    ws = offline.replace("http://", "ws://")
    received, code, reason = asyncio.run(_session(ws + BIDI_PATH + "?sample_rate=16000&encoding=pcm_s16le&gain=2", []))
    assert (code, reason) == (1008, "bad_request") and received[-1]["subject"] == "query", received
    received, code, _ = asyncio.run(_session(ws + BIDI_PATH, [b"\x00\x01" * 800]))
    assert code == 1008 and "ModelQueryString" in received[-1]["error"], received
    received, code, _ = asyncio.run(_session(ws + "/stream", [b'{"sample_rate": 96000, "encoding": "pcm_s16le"}']))
    assert code == CLOSE_UNSUPPORTED and received[-1]["subject"] == "sample_rate", received  # binary config was read
    # Triton is absent here: the settings pass, then the stream cannot open (1013, overloaded)
    received, code, _ = asyncio.run(_session(ws + BIDI_PATH + "?sample_rate=16000&encoding=pcm_s16le", []))
    assert code == 1013 and received[-1]["kind"] == "overloaded", received
    for method in ("GET", "POST"):
        resp = httpx.request(method, offline + "/ping", timeout=10)
        assert resp.status_code == 503 and "error" in resp.json(), (method, resp.text)
