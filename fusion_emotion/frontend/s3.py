"""Fetch request media from S3 (or any S3-compatible endpoint) without touching disk.

boto3 resolves credentials through the standard chain (env, profile, container
and instance roles: what SageMaker provides) and honours ``AWS_ENDPOINT_URL`` /
``AWS_ENDPOINT_URL_S3`` itself; the region comes from ``AWS_REGION`` or
``AWS_DEFAULT_REGION``. Calls are blocking, so they run in a worker thread.
Logs never name the bucket or key: only sizes and durations.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from fusion_emotion.frontend.errors import ApiError

log = logging.getLogger(__name__)

# Bucket names per S3 rules (3-63 chars, lowercase, digits, dots, hyphens); keys any non-empty string.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
# S3 forbids IP-address-shaped bucket names and adjacent dots; refusing them keeps a URI
# from ever naming a host (e.g. 169.254.169.254) instead of a bucket.
_IP_LIKE_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")

_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "NotFound", "404"}
_DENIED_CODES = {
    "AccessDenied",
    "Forbidden",
    "403",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccountProblem",
    "InvalidObjectState",
}


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str
    raw: str


def parse_s3_uri(raw: Any, field_name: str) -> S3Uri:
    """``s3://bucket/key`` or a 400 that says what was expected."""
    if not isinstance(raw, str):
        raise ApiError(400, f"{field_name} must be a string of the form s3://bucket/key")
    if not raw.startswith("s3://"):
        raise ApiError(400, f"{field_name} is not of the form s3://bucket/key: {raw!r}")
    bucket, sep, key = raw[len("s3://") :].partition("/")
    if not sep or not key or not _BUCKET_RE.match(bucket) or _IP_LIKE_RE.match(bucket) or ".." in bucket:
        raise ApiError(400, f"{field_name} is not of the form s3://bucket/key: {raw!r}")
    return S3Uri(bucket=bucket, key=key, raw=raw)


class S3Fetcher:
    """One boto3 client (thread-safe) shared by all requests, created on first use."""

    def __init__(self, *, max_object_bytes: int, allowed_buckets: frozenset[str] | None = None) -> None:
        self.max_object_bytes = max_object_bytes
        self.allowed_buckets = allowed_buckets
        self._client: Any = None
        self._lock = threading.Lock()

    def _get_client(self) -> Any:
        # Lazy: a front end that only ever sees multipart never needs boto3 or credentials.
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
                config = Config(
                    connect_timeout=5,
                    read_timeout=30,
                    retries={"mode": "standard", "max_attempts": 3},
                )
                self._client = boto3.session.Session().client("s3", region_name=region, config=config)
            return self._client

    def check_allowed(self, uri: S3Uri) -> None:
        if self.allowed_buckets is not None and uri.bucket not in self.allowed_buckets:
            raise ApiError(403, f"access to {uri.raw} is not allowed: bucket is not in this endpoint's allow-list")

    def fetch_sync(self, uri: S3Uri) -> bytes:
        """Read one object fully into memory, refusing objects over the size limit."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        self.check_allowed(uri)
        start = time.perf_counter()
        try:
            client = self._get_client()
            resp = client.get_object(Bucket=uri.bucket, Key=uri.key)
            body = resp["Body"]
            try:
                declared = int(resp.get("ContentLength") or 0)
                if declared > self.max_object_bytes:
                    raise ApiError(413, f"{uri.raw} is {declared} bytes, over the {self.max_object_bytes}-byte limit")
                data = body.read(self.max_object_bytes + 1)
            finally:
                body.close()
        except ApiError:
            raise
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            http = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            log.info("s3 get_object failed: code=%s http=%s", code, http)
            if code in _NOT_FOUND_CODES or http == "404":
                raise ApiError(404, f"{uri.raw} does not exist") from None
            if code in _DENIED_CODES or http == "403":
                raise ApiError(403, f"access to {uri.raw} was denied") from None
            raise ApiError(502, f"S3 refused to read {uri.raw} ({code or http or 'error'})") from None
        except NoCredentialsError:
            log.error("s3 get_object failed: no AWS credentials configured")
            raise ApiError(503, "S3 is unavailable: this endpoint has no AWS credentials") from None
        except BotoCoreError as exc:
            log.warning("s3 get_object failed: %s", type(exc).__name__)
            raise ApiError(503, f"S3 is unavailable ({type(exc).__name__})") from None
        if len(data) > self.max_object_bytes:
            raise ApiError(413, f"{uri.raw} is over the {self.max_object_bytes}-byte limit")
        log.info("s3 object fetched: bytes=%d ms=%.1f", len(data), (time.perf_counter() - start) * 1000)
        return data

    async def fetch(self, uri: S3Uri) -> bytes:
        return await asyncio.to_thread(self.fetch_sync, uri)
