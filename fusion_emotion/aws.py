"""boto3 in one place: the session every AWS call starts from, and the S3 fetcher for media.

boto3 resolves credentials through the standard chain (env, profile, container and instance roles: what
SageMaker provides), and honours ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_<SERVICE>`` itself (the tests point
them at a local moto server). The fetcher reads media objects into memory without touching disk, for the front
end (request inputs named by ``s3://`` URIs) and ``fusion-emotion batch`` (an S3 library): one client, one size
limit, one way of saying what failed. Its region comes from ``AWS_REGION`` or ``AWS_DEFAULT_REGION``; calls
are blocking, so the async ones run on the fetcher's own threads. Logs never name the bucket or key: only
sizes and durations.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from fusion_emotion.errors import ApiError
from fusion_emotion.s3uri import S3Uri

log = logging.getLogger(__name__)


def session(region: str | None = None) -> Any:
    """One boto3 Session: credential chain, profile, region and endpoint env vars all apply."""
    return boto3.session.Session(region_name=region) if region else boto3.session.Session()


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


# Bytes per read from the object body: the stop flag and the deadline are checked between reads.
READ_CHUNK_BYTES = 1024 * 1024


class DownloadStopped(Exception):
    """A download ended early: its sibling failed or the request's deadline passed."""


class S3Fetcher:
    """One boto3 client (thread-safe) shared by all requests, created on first use.

    Downloads run on this fetcher's own bounded thread pool (never the event loop's default one), read
    in chunks, and stop between chunks when the request's deadline passes or a sibling download failed.
    """

    def __init__(
        self, *, max_object_bytes: int, allowed_buckets: frozenset[str] | None = None, max_workers: int = 32
    ) -> None:
        self.max_object_bytes = max_object_bytes
        self.allowed_buckets = allowed_buckets
        self._client: Any = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers, "s3")

    def client(self) -> Any:
        """The shared boto3 S3 client, made on first use: a front end that only sees multipart needs no credentials."""
        with self._lock:
            if self._client is None:
                region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
                # Per-call bounds; the request's own deadline (fetch_all) bounds the whole download.
                config = Config(
                    connect_timeout=5,
                    read_timeout=10,
                    retries={"mode": "standard", "max_attempts": 2},
                )
                self._client = session().client("s3", region_name=region, config=config)
            return self._client

    def check_allowed(self, uri: S3Uri) -> None:
        if self.allowed_buckets is not None and uri.bucket not in self.allowed_buckets:
            raise ApiError(403, f"access to {uri} is not allowed: bucket is not in this endpoint's allow-list")

    def fetch_sync(self, uri: S3Uri, stop: threading.Event | None = None, deadline: float | None = None) -> bytes:
        """Read one object fully into memory, refusing objects over the size limit.

        ``stop`` (set by a failed sibling or an expired deadline) and ``deadline`` (time.monotonic())
        end the download between two chunk reads.
        """

        def check() -> None:
            if (stop is not None and stop.is_set()) or (deadline is not None and time.monotonic() > deadline):
                raise DownloadStopped

        self.check_allowed(uri)
        start = time.perf_counter()
        try:
            check()
            client = self.client()
            resp = client.get_object(Bucket=uri.bucket, Key=uri.key)
            body = resp["Body"]
            try:
                declared = int(resp.get("ContentLength") or 0)
                if declared > self.max_object_bytes:
                    raise ApiError(413, f"{uri} is {declared} bytes, over the {self.max_object_bytes}-byte limit")
                chunks: list[bytes] = []
                total = 0
                while total <= self.max_object_bytes:
                    check()
                    chunk = body.read(min(READ_CHUNK_BYTES, self.max_object_bytes + 1 - total))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    total += len(chunk)
                data = b"".join(chunks)
                del chunks
            finally:
                body.close()
        except (ApiError, DownloadStopped):
            raise
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            http = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            log.info("s3 get_object failed: code=%s http=%s", code, http)
            if code in _NOT_FOUND_CODES or http == "404":
                raise ApiError(404, f"{uri} does not exist") from None
            if code in _DENIED_CODES or http == "403":
                raise ApiError(403, f"access to {uri} was denied") from None
            raise ApiError(502, f"S3 refused to read {uri} ({code or http or 'error'})") from None
        except NoCredentialsError:
            log.error("s3 get_object failed: no AWS credentials configured")
            raise ApiError(503, "S3 is unavailable: this endpoint has no AWS credentials") from None
        except BotoCoreError as exc:
            log.warning("s3 get_object failed: %s", type(exc).__name__)
            raise ApiError(503, f"S3 is unavailable ({type(exc).__name__})") from None
        if len(data) > self.max_object_bytes:
            raise ApiError(413, f"{uri} is over the {self.max_object_bytes}-byte limit")
        log.info("s3 object fetched: bytes=%d ms=%.1f", len(data), (time.perf_counter() - start) * 1000)
        return data

    async def fetch(self, uri: S3Uri) -> bytes:
        return (await self.fetch_all([uri], None))[0]

    async def fetch_all(self, uris: list[S3Uri], deadline: float | None) -> list[bytes]:
        """Download ``uris`` concurrently under one deadline; the first failure stops the others.

        Past the deadline: 504 at once (the threads notice at their next chunk or read timeout).
        """
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        futures = [loop.run_in_executor(self._pool, self.fetch_sync, uri, stop, deadline) for uri in uris]
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            done, pending = await asyncio.wait(futures, timeout=remaining, return_when=asyncio.FIRST_EXCEPTION)
        except asyncio.CancelledError:
            stop.set()
            raise
        failed = [f for f in done if f.exception() is not None]
        if failed or pending:
            stop.set()
            for f in pending:  # nobody waits for them; keep their late errors out of the loop's log
                f.add_done_callback(lambda f: f.cancelled() or f.exception())
            first = next((f.exception() for f in failed if not isinstance(f.exception(), DownloadStopped)), None)
            if isinstance(first, ApiError):
                raise first
            if first is not None:
                raise first
            log.info("s3 download stopped at the request deadline")
            raise ApiError(504, "S3 download did not finish within the request deadline")
        return [f.result() for f in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
