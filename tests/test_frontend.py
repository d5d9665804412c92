"""The HTTP front end over real HTTP: uvicorn in a thread, httpx, moto's S3 server, real tritonserver.

Tests without the ``integration`` marker need no Triton: they cover validation,
limits, S3 errors, /ping when Triton is absent or hung, OpenAPI and privacy.
The integration tests use the session fixtures ``triton``, ``demo_repository``
and ``media`` from conftest.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fusion_emotion.client import sagemaker_triton
from fusion_emotion.client.http import FrontendError, encode_multipart, predict_url
from helpers import serve_app

from fusion_emotion import contract as C
from fusion_emotion.frontend.app import create_app
from fusion_emotion.frontend.settings import SAGEMAKER_MAX_PAYLOAD_BYTES, Settings
from fusion_emotion.server.procs import free_port

RESULT_KEYS = {*C.LABELS, "qa_flags", "dominant_emotion"}
RAW_TYPES = sorted(C.RAW_VIDEO_TYPES | C.RAW_AUDIO_TYPES | {C.RAW_SNIFF_TYPE})
# What SageMaker Batch Transform sends with each record (TransformInput.ContentType, TransformOutput.Accept).
BT_HEADERS = {"Accept": "application/json"}
ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
PLANTED_NAME = "holiday-secret-clip-7f3a.mp4"
PLANTED_KEY = "private/patient-42-secret-key-9c1e.wav"
BUCKET = "fe-test-bucket"


def test_untrained_attribute_is_warned_about_only_when_present(caplog: pytest.LogCaptureFixture) -> None:
    from fusion_emotion.client.http import warn_if_untrained

    with caplog.at_level(logging.WARNING, logger="fusion_emotion.client.http"):
        for attrs in (None, "", "timeline=true", "weights=trained"):
            warn_if_untrained(attrs)
        assert not caplog.records
        warn_if_untrained("timeline=true, weights=untrained")
    assert len(caplog.records) == 1 and "UNTRAINED" in caplog.text


# --------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def run_frontend(settings: Settings) -> Iterator[str]:
    """Serve ``create_app(settings)`` on a free port in a thread; yields the base URL."""
    with serve_app(create_app(settings)) as base:
        yield base


def multipart(**files: tuple[str, bytes]) -> dict[str, Any]:
    return {"files": {k: (name, data, "application/octet-stream") for k, (name, data) in files.items()}}


def assert_result(body: dict[str, Any]) -> None:
    assert set(body) == RESULT_KEYS
    assert set(body["qa_flags"]) == set(C.QA_FLAG_NAMES)
    probs = np.array([body[k] for k in C.LABELS])
    assert np.all(probs >= 0) and abs(probs.sum() - 1.0) < 1e-4
    assert body["dominant_emotion"] == C.LABELS[int(np.argmax(probs))]
    for value in body["qa_flags"].values():
        assert value is None or np.isfinite(value)


def app_logs(caplog: pytest.LogCaptureFixture) -> str:
    """Everything logged in-process except the fake S3 server's own access log (moto/werkzeug)."""
    return "\n".join(
        f"{r.name} {r.getMessage()}" for r in caplog.records if not r.name.startswith(("werkzeug", "moto"))
    )


def assert_error(resp: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert isinstance(body.get("error"), str) and body["error"]
    assert "Traceback" not in resp.text
    for needle in needles:
        assert needle in body["error"], body
    return body


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def dead_triton_url() -> str:
    """A port with nothing listening: Triton gone."""
    return f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def hung_triton_url() -> Iterator[str]:
    """Accepts TCP connections and never answers: a hung Triton."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
                held.append(conn)
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    t.join(2)
    for c in held:
        c.close()
    sock.close()


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """boto3 S3 client against moto; the front end sees the same endpoint via AWS_ENDPOINT_URL."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def fresh_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every temp-file API at an empty directory so leftovers are visible."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


@pytest.fixture
def offline(dead_triton_url: str) -> Iterator[tuple[str, Settings]]:
    settings = Settings(triton_url=dead_triton_url, max_body_bytes=64 * 1024)
    with run_frontend(settings) as url:
        yield url, settings


# --------------------------------------------------------------------------- settings / schema
def test_settings_env_and_overrides() -> None:
    env = {
        "FUSION_EMOTION_TRITON_URL": "triton:9001",
        "FUSION_EMOTION_PORT": "9000",
        "SAGEMAKER_BIND_TO_PORT": "8081",
        "FUSION_EMOTION_REQUEST_TIMEOUT_S": "3.5",
        "FUSION_EMOTION_S3_ALLOWED_BUCKETS": "a-bucket, b-bucket",
    }
    s = Settings.from_env(env)
    assert (s.triton_url, s.port, s.request_timeout_s) == ("triton:9001", 8081, 3.5)
    assert s.s3_allowed_buckets == frozenset({"a-bucket", "b-bucket"})
    assert Settings.from_env(env, port=7000, triton_url=None).port == 7000
    d = Settings.from_env({})
    assert (d.port, d.max_body_bytes) == (8080, SAGEMAKER_MAX_PAYLOAD_BYTES == 6291456 and 6291456)
    assert Settings.from_env({"FUSION_EMOTION_PING_TIMEOUT_S": "10"}).ping_timeout_s < 2


def test_openapi_documents_both_request_forms_and_response() -> None:
    schema = create_app(Settings()).openapi()
    for path in ("/invocations", "/predict"):
        op = schema["paths"][path]["post"]
        content = op["requestBody"]["content"]
        assert set(content) == {"multipart/form-data", "application/json", *RAW_TYPES}
        assert content["video/mp4"]["schema"]["format"] == "binary"
        assert "X-Amzn-SageMaker-Custom-Attributes" in {p["name"] for p in op["parameters"]}
        assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("PredictionResponse")
        for code in ("400", "403", "404", "413", "415", "422", "503", "504"):
            assert code in op["responses"]
    comps = schema["components"]["schemas"]
    assert set(comps["MultipartRequest"]["properties"]) == {"video_file", "audio_file"}
    assert set(comps["S3Request"]["properties"]) == {"s3_video_uri", "s3_audio_uri"}
    assert set(comps["PredictionResponse"]["properties"]) == RESULT_KEYS
    assert "/ping" in schema["paths"]


# --------------------------------------------------------------------------- /ping without Triton
@pytest.mark.parametrize("which", ["dead", "hung"])
def test_ping_503_fast_when_triton_absent(which: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue(f"{which}_triton_url")
    with run_frontend(Settings(triton_url=url)) as base:
        for _ in range(2):
            start = time.monotonic()
            resp = httpx.get(base + "/ping", timeout=10)
            assert time.monotonic() - start < 2.0
            assert_error(resp, 503)


# --------------------------------------------------------------------------- 400 / 413 / 415 / 503
def test_bad_requests(offline: tuple[str, Settings]) -> None:
    base, _ = offline
    inv = base + "/invocations"
    empty_body, ctype = b"--xyz--\r\n", "multipart/form-data; boundary=xyz"
    assert_error(httpx.post(inv, content=empty_body, headers={"content-type": ctype}), 400, "no input")
    assert_error(httpx.post(inv, json={}), 400, "no input")
    assert_error(httpx.post(inv, json={"s3_video_uri": None}), 400, "no input")
    assert_error(
        httpx.post(inv, content=b"{not json", headers={"content-type": "application/json"}), 400, "malformed JSON"
    )
    assert_error(httpx.post(inv, json=["s3://b/k"]), 400)
    assert_error(httpx.post(inv, json={"s3_video_uri": "https://x/y.mp4"}), 400, "s3_video_uri", "s3://bucket/key")
    assert_error(httpx.post(inv, json={"s3_audio_uri": "s3://bucket-only"}), 400, "s3_audio_uri")
    assert_error(httpx.post(inv, json={"s3_audio_uri": 5}), 400, "s3_audio_uri")
    assert_error(httpx.post(inv, json={"video": "s3://b/k"}), 400, "unexpected")
    assert_error(httpx.post(inv, **multipart(video=("a.mp4", b"x"))), 400, "unexpected form field")
    assert_error(
        httpx.post(inv, content=b"--xyz\r\ngarbage", headers={"content-type": "multipart/form-data"}), 400, "boundary"
    )
    assert_error(httpx.post(inv, **multipart(video_file=("a.mp4", b""))), 422, "video_file")
    # 415: anything but multipart, JSON or a raw media type, including no content type at all
    assert_error(httpx.post(inv, content=b"abc", headers={"content-type": "text/plain"}), 415, "video/mp4")
    assert_error(httpx.post(inv, content=b"abc", headers={"content-type": "video/quicktime"}), 415)
    assert_error(httpx.post(inv, content=b"abc"), 415)
    # unknown routes and methods are JSON too
    assert_error(httpx.get(inv), 405)
    assert_error(httpx.get(base + "/nope"), 404)


def test_413_declared_and_streamed(offline: tuple[str, Settings]) -> None:
    base, settings = offline
    big = os.urandom(settings.max_body_bytes + 1)
    # Content-Length known up front
    body = assert_error(httpx.post(base + "/invocations", **multipart(video_file=("v.mp4", big))), 413)
    assert body["limit_bytes"] == settings.max_body_bytes
    assert_error(httpx.post(base + "/predict", json={"s3_video_uri": "s3://b/" + "k" * len(big)}), 413)

    # chunked: no Content-Length, the limit is enforced while reading
    payload, ctype = encode_multipart(big, None)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(payload), 8192):
            yield payload[i : i + 8192]

    resp = httpx.post(base + "/invocations", content=chunks(), headers={"content-type": ctype})
    assert "content-length" not in {k.lower() for k in resp.request.headers}
    assert_error(resp, 413)


def test_raw_bodies_accepted_limited_and_options_checked(offline: tuple[str, Settings]) -> None:
    """Raw bodies: every accepted type reaches Triton (503 here: none running); limits and option errors first."""
    base, settings = offline
    inv = base + "/invocations"
    for mime in RAW_TYPES:  # includes video/x-matroska and video/webm: accepted, the decoder decides
        resp = httpx.post(inv, content=b"RIFF....WAVEdata", headers={"Content-Type": mime, **BT_HEADERS})
        assert_error(resp, 503, "unavailable")
    body = assert_error(httpx.post(inv, content=b"", headers={"Content-Type": "video/mp4"}), 422, "body: empty")
    assert body["input"] == "body"
    big = os.urandom(settings.max_body_bytes + 1)
    body = assert_error(httpx.post(inv, content=big, headers={"Content-Type": "audio/wav"}), 413)
    assert body["limit_bytes"] == settings.max_body_bytes

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    assert_error(httpx.post(inv, content=chunks(), headers={"Content-Type": "application/octet-stream"}), 413)
    raw = {"Content-Type": "video/mp4"}
    for attributes, needle in (
        ("timeline=maybe", "timeline must be true or false"),
        ("window_s", "needs a value"),
        ("window_s=4", "need timeline=true"),
        ("timeline=true; window_s=99", "window_s"),
    ):
        assert_error(httpx.post(inv, content=b"x", headers={**raw, ATTRIBUTES: attributes}), 400, needle)
    # Other tools' attributes are ignored; the query string wins over the header.
    resp = httpx.post(inv, content=b"x", headers={**raw, ATTRIBUTES: "trace_id=abc,accept_eula=true"})
    assert_error(resp, 503)
    resp = httpx.post(inv + "?timeline=false", content=b"x", headers={**raw, ATTRIBUTES: "timeline=true,window_s=4"})
    assert_error(resp, 400, "need timeline=true")


def test_default_options_setting() -> None:
    assert Settings.from_env({"FUSION_EMOTION_DEFAULT_OPTIONS": "timeline=true,window_s=4"}).default_options == (
        "timeline=true,window_s=4"
    )
    with pytest.raises(ValueError, match="timeline must be true or false"):
        create_app(Settings(default_options="timeline=sometimes"))
    with pytest.raises(ValueError, match="window_s"):
        create_app(Settings(default_options="timeline=true,window_s=0.1"))


def test_503_when_triton_unavailable(offline: tuple[str, Settings]) -> None:
    base, _ = offline
    for path in ("/invocations", "/predict"):
        resp = httpx.post(base + path, **multipart(video_file=("v.mp4", b"not really a video")))
        assert_error(resp, 503, "unavailable")


def test_client_predict_url_raises_with_status(offline: tuple[str, Settings]) -> None:
    base, _ = offline
    with pytest.raises(FrontendError) as info:
        predict_url(base, b"x", None, timeout=10)
    assert info.value.status == 503


# --------------------------------------------------------------------------- S3 errors (moto)
def test_s3_missing_and_denied(s3: Any, dead_triton_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    s3.put_object(Bucket=BUCKET, Key="big.wav", Body=b"0" * 2048)
    settings = Settings(triton_url=dead_triton_url, max_s3_object_bytes=1024, s3_allowed_buckets=None)
    with run_frontend(settings) as base:
        inv = base + "/invocations"
        uri = f"s3://{BUCKET}/missing/clip.mp4"
        assert_error(httpx.post(inv, json={"s3_video_uri": uri}), 404, uri)
        uri = "s3://no-such-bucket-here/clip.wav"
        assert_error(httpx.post(inv, json={"s3_audio_uri": uri}), 404, uri)
        uri = f"s3://{BUCKET}/big.wav"
        assert_error(httpx.post(inv, json={"s3_audio_uri": uri}), 413, uri)

    with run_frontend(replace(settings, s3_allowed_buckets=frozenset({"other-bucket"}))) as base:
        uri = f"s3://{BUCKET}/big.wav"
        assert_error(httpx.post(base + "/predict", json={"s3_audio_uri": uri}), 403, uri)


def test_s3_access_denied_by_iam(s3: Any, moto_endpoint: str, dead_triton_url: str, monkeypatch) -> None:
    """A real AccessDenied from the S3 endpoint: moto with IAM enforcement on, user without policies."""
    import boto3
    from moto import settings as moto_settings

    s3.put_object(Bucket=BUCKET, Key="denied.wav", Body=b"RIFF")
    iam = boto3.client("iam", endpoint_url=moto_endpoint, region_name="us-east-1")
    user = f"nobody-{os.getpid()}-{time.monotonic_ns()}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    with run_frontend(Settings(triton_url=dead_triton_url)) as base:
        uri = f"s3://{BUCKET}/denied.wav"
        assert_error(httpx.post(base + "/invocations", json={"s3_audio_uri": uri}), 403, uri)


def test_s3_endpoint_unreachable_is_503(monkeypatch: pytest.MonkeyPatch, dead_triton_url: str) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    with run_frontend(Settings(triton_url=dead_triton_url)) as base:
        resp = httpx.post(base + "/invocations", json={"s3_audio_uri": "s3://some-bucket/a.wav"}, timeout=60)
        assert_error(resp, 503, "S3")


# --------------------------------------------------------------------------- privacy (no Triton)
def test_privacy_offline_error_paths(
    s3: Any, dead_triton_url: str, fresh_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s3.put_object(Bucket=BUCKET, Key=PLANTED_KEY, Body=os.urandom(3000))  # the test's own upload may log
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    settings = Settings(triton_url=dead_triton_url, max_body_bytes=2 * 1024 * 1024)
    payload = os.urandom(1536 * 1024)  # above Starlette's 1 MiB spool threshold
    with run_frontend(settings) as base:
        inv = base + "/invocations"
        statuses = [
            httpx.post(inv, **multipart(video_file=(PLANTED_NAME, payload))).status_code,  # 503
            httpx.post(inv, **multipart(video_file=(PLANTED_NAME, payload + payload))).status_code,  # 413
            httpx.post(inv, **multipart(audio_file=(PLANTED_NAME, b""))).status_code,  # 422
            httpx.post(inv, json={"s3_audio_uri": f"s3://{BUCKET}/{PLANTED_KEY}"}).status_code,  # 503 after fetch
            httpx.post(inv, json={"s3_audio_uri": f"s3://{BUCKET}/{PLANTED_KEY}.missing"}).status_code,  # 404
            httpx.post(inv, content=payload, headers={"Content-Type": "video/mp4"}).status_code,  # 503, raw body
        ]
    assert statuses == [503, 413, 422, 503, 404, 503]
    assert list(fresh_tmp.iterdir()) == []
    text = app_logs(caplog)
    assert "request_id=" in text and "request_bytes=" in text
    assert PLANTED_NAME not in text and "holiday-secret" not in text
    assert PLANTED_KEY not in text and "secret-key" not in text
    assert payload[:16].hex() not in text


# --------------------------------------------------------------------------- SageMaker-container helper
def test_sagemaker_binary_json_request_layout() -> None:
    video, audio = b"\x00\x01video", b"RIFFaudio"
    body, headers = sagemaker_triton.build_request(video, audio)
    ctype = headers["Content-Type"]
    assert ctype.startswith("application/vnd.sagemaker-triton.binary+json;json-header-size=")
    size = int(ctype.rsplit("=", 1)[1])
    header = json.loads(body[:size])
    assert [i["name"] for i in header["inputs"]] == ["video", "audio"]
    assert all(i["datatype"] == "BYTES" and i["shape"] == [1, 1] for i in header["inputs"])
    assert [o["parameters"]["binary_data"] for o in header["outputs"]] == [False, False]
    rest = body[size:]
    n = header["inputs"][0]["parameters"]["binary_data_size"]
    assert n == 4 + len(video) and rest[:4] == struct.pack("<I", len(video)) and rest[4:n] == video
    assert rest[n:] == struct.pack("<I", len(audio)) + audio
    only_audio, _ = sagemaker_triton.build_request(None, audio)
    assert b'"video"' not in only_audio

    probs = np.array([0.1, 0.2, 0.3, 0.1, 0.2, 0.1], dtype=np.float32)
    qa = np.array([0.0, 0.5, np.nan, 1.0, 0.2, 0.9], dtype=np.float32)
    resp_header = json.dumps(
        {
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [1, 6], "data": probs.tolist()},
                {"name": "qa_flags", "datatype": "FP32", "shape": [1, 6], "parameters": {"binary_data_size": 24}},
            ]
        }
    ).encode()
    got_p, got_q = sagemaker_triton.parse_prediction(
        resp_header + qa.tobytes(), sagemaker_triton.BINARY_JSON_MIME + str(len(resp_header))
    )
    np.testing.assert_allclose(got_p, probs)
    np.testing.assert_array_equal(np.isnan(got_q), np.isnan(qa))


# =========================================================================== integration
