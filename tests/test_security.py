"""Security and privacy checks not covered by test_frontend.py / test_dockerfile.py.

- Only ``s3://bucket/key`` URIs are fetched; nothing else the user sends becomes an
  outbound request (no http(s)/file URLs, no IP-shaped "buckets" such as the
  instance-metadata address).
- Media limits end to end: a decompression bomb (8K frames declared in a small MP4)
  is a 413 from the front end, refused before decoding.
- Triton's own log at default verbosity never sees the client's file names or S3
  keys (the front end sends generic tensor names only).
- The container's runtime user is not root (the last USER of the Dockerfile).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_frontend import PLANTED_KEY, PLANTED_NAME, assert_error, multipart, run_frontend

from fusion_emotion.errors import ApiError, ErrorKind, ServingError
from fusion_emotion.frontend.request import request_s3_uri
from fusion_emotion.frontend.settings import Settings
from fusion_emotion.frontend.triton import MediaRejected, map_triton_error

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "uri",
    [
        "http://example.com/a.mp4",
        "https://bucket.s3.amazonaws.com/key",
        "file:///etc/passwd",
        "s3://169.254.169.254/latest/meta-data",
        "s3://127.0.0.1/key",
        "s3://my..bucket/key",
        "s3://bucket",
        "s3:///key",
        "S3://bucket/key",
        " s3://bucket/key",
    ],
)
def test_only_s3_bucket_key_uris(uri: str) -> None:
    with pytest.raises(ApiError) as info:
        request_s3_uri(uri, "s3_video_uri")
    assert info.value.status == 400


def test_valid_s3_uri_parses() -> None:
    u = request_s3_uri("s3://my-bucket.data/dir/clip.mp4", "s3_video_uri")
    assert (u.bucket, u.key) == ("my-bucket.data", "dir/clip.mp4")


def test_too_large_media_errors_map_to_413() -> None:
    class FakeTritonError(Exception):
        def __init__(self, message: str) -> None:
            self._m = message

        def status(self) -> str:
            return "StatusCode.INVALID_ARGUMENT"

        def message(self) -> str:
            return self._m

    too_large = ServingError(ErrorKind.TOO_LARGE, "video", "frame size 7680x4320 is over the 3840x2160 limit")
    big = map_triton_error(FakeTritonError(f"in ensemble: {too_large.wire()}"))
    assert isinstance(big, MediaRejected) and big.status == 413 and big.too_large
    invalid = ServingError(ErrorKind.INVALID_MEDIA, "video", "not a decodable media file (InvalidDataError)")
    bad = map_triton_error(FakeTritonError(invalid.wire()))
    assert isinstance(bad, MediaRejected) and bad.status == 422 and not bad.too_large
    # the status follows the kind's tag, not the wording: an untagged "over the limit" is no 413
    untagged = map_triton_error(FakeTritonError("video: frame size 7680x4320 is over the 3840x2160 limit"))
    assert not isinstance(untagged, MediaRejected) and untagged.status == 422


def test_dockerfile_runtime_user_is_not_root() -> None:
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert users, "no USER directive: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users


@pytest.mark.integration
def test_bomb_refused_with_413_and_triton_log_has_no_names(triton: Any, media: dict[str, bytes]) -> None:
    from fusion_emotion import testmedia

    bomb = testmedia.mp4(width=7680, height=4320, fps=5, seconds=0.2, audio=None, video_bitrate=500_000)
    with run_frontend(Settings(triton_url=triton.grpc_url, request_timeout_s=120)) as base:
        inv = base + "/invocations"
        body = assert_error(httpx.post(inv, **multipart(video_file=(PLANTED_NAME, bomb)), timeout=120), 413)
        assert "7680x4320" in body["error"] and body["input"] == "video_file"
        ok = httpx.post(
            inv,
            **multipart(video_file=(PLANTED_NAME, media["mp4"]), audio_file=(PLANTED_KEY, media["wav"])),
            timeout=120,
        )
        assert ok.status_code == 200, ok.text
        bad = httpx.post(inv, **multipart(video_file=(PLANTED_NAME, media["garbage"])), timeout=120)
        assert bad.status_code == 422
    text = triton.log_text()
    assert text  # the server did log (startup at least)
    for needle in (PLANTED_NAME, PLANTED_KEY, "holiday-secret", "secret-key"):
        assert needle not in text
