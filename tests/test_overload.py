"""Overload and hostile requests against the real front end: admission limit, one deadline, small fixes.

The tests here need no Triton (a hung or absent one stands in for a slow one); the corpus, flood and
cancellation tests against the real tritonserver live in tests/test_hostile_live.py.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from test_frontend import assert_error, dead_triton_url, hung_triton_url, multipart, run_frontend  # noqa: F401

from fusion_emotion.aws import DownloadStopped, S3Fetcher
from fusion_emotion.errors import ApiError
from fusion_emotion.frontend.request import parse_json_request, request_s3_uri
from fusion_emotion.frontend.settings import Settings
from fusion_emotion.frontend.triton import TritonGateway
from fusion_emotion.s3uri import S3Uri
from fusion_emotion.testmedia import hostile


# --------------------------------------------------------------------------- admission
def _status_before_the_body(base: str, length: int) -> tuple[bytes, socket.socket]:
    """Send a request's headers only and read the status line the server answers before any body byte."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\n"
        + f"Content-Length: {length}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    return head, sock


def test_in_flight_limit_refuses_at_once_with_retry_after(hung_triton_url: str) -> None:  # noqa: F811
    """Two requests hang in a silent Triton; a third is refused (503 + Retry-After) before a byte of its
    body is sent (so no timing is needed to tell a refusal from a queued request), its large body is then
    drained (its client reads a complete answer, no reset), and a slot frees when the held requests reach
    their deadline."""
    settings = Settings(triton_url=hung_triton_url, max_in_flight=2, request_timeout_s=4.0)
    size = 2 * 1024 * 1024
    body = multipart(video_file=("v.mp4", b"\0" * size))
    with run_frontend(settings) as base, ThreadPoolExecutor(2) as pool:
        held = [pool.submit(httpx.post, base + "/invocations", timeout=30, **body) for _ in range(2)]
        time.sleep(1.0)  # both admitted and waiting on Triton
        for _ in range(2):
            head, sock = _status_before_the_body(base, size)
            with sock:
                assert head.startswith(b"HTTP/1.1 503 ") and b"\r\nretry-after: 1\r\n" in head.lower(), head
                sock.sendall(b"\0" * size)  # the upload it would have sent anyway is read and dropped
                answer = head
                while not answer.rstrip().endswith(b"}"):  # the JSON error body (Content-Length framed)
                    chunk = sock.recv(65536)
                    assert chunk, answer
                    answer += chunk
                assert b"busy" in answer
        resp = httpx.post(base + "/invocations", timeout=30, **body)  # a client that sends all at once
        assert_error(resp, 503, "busy")
        assert resp.headers["retry-after"] == "1"
        # /ping is not an inference route: never refused by the limit
        assert httpx.get(base + "/ping", timeout=5).status_code == 503  # (Triton hung: 503 from the check)
        for future in held:
            assert_error(future.result(), 504, "within 4 s")
        assert httpx.post(base + "/invocations", timeout=30, **body).status_code == 504  # admitted again


def test_one_deadline_covers_a_slow_body(hung_triton_url: str) -> None:  # noqa: F811
    """A client that sends its headers and then trickles the body holds its slot only until the deadline."""
    settings = Settings(triton_url=hung_triton_url, max_in_flight=1, request_timeout_s=1.5)
    with run_frontend(settings) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\nContent-Length: 100000\r\n\r\n"
                + b"\0" * 1000
            )
            start = time.monotonic()
            answer = sock.recv(4096)
            assert b" 504 " in answer.split(b"\r\n", 1)[0], answer[:200]
            assert time.monotonic() - start < 1.5 + 1.0
        # the slot is free again
        assert httpx.post(base + "/invocations", content=b"x", headers={"content-type": "video/mp4"}).status_code == 504


# --------------------------------------------------------------------------- S3
@pytest.mark.parametrize("key", ["a/../b.mp4", "../b.mp4", "a/./b.mp4", ".", "a/..", "x/./"])
def test_s3_keys_with_dot_segments_are_refused(key: str) -> None:
    with pytest.raises(ApiError) as info:
        request_s3_uri(f"s3://my-bucket/{key}", "s3_video_uri")
    assert info.value.status == 400 and "s3_video_uri" in info.value.message and "'..'" in info.value.message


@pytest.mark.parametrize("key", ["a..b/c.mp4", "a/.hidden.mp4", "a/b.../c", "..a/b"])
def test_s3_keys_with_dots_inside_names_pass(key: str) -> None:
    assert request_s3_uri(f"s3://my-bucket/{key}", "s3_video_uri").key == key


class _SlowFetcher(S3Fetcher):
    """The real fetch_all over a download that fails (``bad``) or reads chunks until stopped."""

    def __init__(self) -> None:
        super().__init__(max_object_bytes=1 << 20, max_workers=4)
        self.stopped_at: dict[str, float] = {}

    def fetch_sync(self, uri: S3Uri, stop: Any = None, deadline: float | None = None) -> bytes:
        if uri.key == "bad":
            time.sleep(0.2)
            raise ApiError(404, f"{uri} does not exist")
        for _ in range(600):  # 60 s of "chunks" unless stopped
            if stop.is_set() or (deadline is not None and time.monotonic() > deadline):
                self.stopped_at[uri.key] = time.monotonic()
                raise DownloadStopped
            time.sleep(0.1)
        return b"data"


def _fetch_fails(second_key: str, deadline_s: float) -> tuple[_SlowFetcher, ApiError, float]:
    """fetch_all of ``slow`` and ``second_key`` under one deadline, which must fail: (fetcher, error, start)."""
    fetcher = _SlowFetcher()
    uris = [request_s3_uri("s3://my-bucket/slow", "v"), request_s3_uri(f"s3://my-bucket/{second_key}", "a")]
    start = time.monotonic()
    with pytest.raises(ApiError) as info:
        asyncio.run(fetcher.fetch_all(uris, start + deadline_s))
    return fetcher, info.value, start


def test_s3_sibling_stops_when_one_download_fails() -> None:
    fetcher, error, start = _fetch_fails("bad", 30)
    assert error.status == 404
    deadline = time.monotonic() + 2
    while "slow" not in fetcher.stopped_at and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fetcher.stopped_at["slow"] - start < 1.0  # stopped at its next chunk, not after 60 s
    fetcher.close()


def test_s3_download_has_one_deadline() -> None:
    fetcher, error, start = _fetch_fails("slow2", 0.5)
    assert error.status == 504 and time.monotonic() - start < 1.5
    time.sleep(0.5)
    assert set(fetcher.stopped_at) == {"slow", "slow2"}
    fetcher.close()


# --------------------------------------------------------------------------- small ones
def test_deeply_nested_json_is_400() -> None:
    with pytest.raises(ApiError) as info:
        parse_json_request(hostile.nested_json())
    assert info.value.status == 400 and "nested" in info.value.message


def test_nested_json_and_forged_log_lines_over_http(
    dead_triton_url: str,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fusion_emotion.frontend")
    with run_frontend(Settings(triton_url=dead_triton_url)) as base:
        resp = httpx.post(
            base + "/invocations", content=hostile.nested_json(), headers={"content-type": "application/json"}
        )
        assert_error(resp, 400, "nested")
        with httpx.Client() as client:
            # a raw path whose decoded form holds a newline and a fake access-log line
            forged = "/ping%0Arequest_id=forged method=GET route=/invocations status=200"
            assert client.get(base + forged).status_code == 404
    lines = [
        r.getMessage() for r in caplog.records if r.name == "fusion_emotion.frontend" and "status=" in r.getMessage()
    ]
    assert any("route=/invocations status=400" in line for line in lines), lines
    assert any("route=- status=404" in line for line in lines), lines
    assert not any("forged" in line or "\n" in line for line in lines), lines


def test_ping_has_one_overall_bound(hung_triton_url: str) -> None:  # noqa: F811
    """Both calls of the check share one bound (Python 3.10 has no asyncio.timeout)."""

    async def check() -> tuple[float, tuple[bool, str]]:
        gateway = TritonGateway(hung_triton_url)
        await gateway.start()
        try:
            start = time.monotonic()
            result = await gateway.ready(0.5)
            return time.monotonic() - start, result
        finally:
            await gateway.close()

    elapsed, (ok, reason) = asyncio.run(check())
    assert not ok and elapsed < 0.9, (elapsed, reason)


def test_settings_max_in_flight_env() -> None:
    assert Settings.from_env({}).max_in_flight == 16
    assert Settings.from_env({"FUSION_EMOTION_MAX_IN_FLIGHT": "3"}).max_in_flight == 3
    with pytest.raises(ValueError):
        Settings.from_env({"FUSION_EMOTION_MAX_IN_FLIGHT": "0"})
