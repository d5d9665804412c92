"""``fusion-emotion batch``'s inputs: what INPUT names, read one source at a time, and one source's record.

INPUT is a folder (searched recursively for media extensions), a glob, an ``s3://bucket/prefix/`` or a
manifest file (one path or S3 URI per line). Sources are enumerated lazily, so a 100,000-file manifest costs
what its files in flight cost.
"""

from __future__ import annotations

import glob
import io
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusion_emotion.client.http import FrontendError

from fusion_emotion import contract as C
from fusion_emotion.aws import S3Fetcher
from fusion_emotion.errors import ApiError, ServingError
from fusion_emotion.s3uri import S3UriError, parse_s3_uri

GLOB_CHARS = frozenset("*?[")
# Result JSON for one file: the product's flat JSON, plus "segments" with --timeline.
Predict = Callable[[bytes, str, str], dict[str, Any]]


class InputError(ValueError):
    """INPUT cannot be enumerated or one source cannot be read; the message says which and why."""


@dataclass
class InputStats:
    """What enumeration passed over: files that are not media (by extension) are ignored, and counted."""

    ignored: int = 0


def _media_files(paths: Iterable[str], stats: InputStats) -> Iterator[str]:
    for name in paths:
        if C.media_type_for(name):
            yield name
        else:
            stats.ignored += 1


def _walk(root: Path) -> Iterator[str]:
    """Files under ``root`` in a stable order (sorted per directory: bounded by one directory's size)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield str(Path(dirpath, name).resolve())


def _s3_keys(uri: str, s3: Any) -> Iterator[str]:
    prefix = parse_s3_uri(uri, "INPUT")
    key = prefix.key + "/" if prefix.key and uri.endswith("/") else prefix.key
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=prefix.bucket, Prefix=key):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):
                yield f"s3://{prefix.bucket}/{obj['Key']}"


def _manifest(path: Path) -> Iterator[str]:
    """One path or S3 URI per line; blank lines and ``#`` comments skipped; relative paths from the manifest's folder."""
    base = path.resolve().parent
    with path.open(encoding="utf-8") as fh:
        for raw in fh:
            entry = raw.strip()
            if not entry or entry.startswith("#"):
                continue
            yield entry if entry.startswith("s3://") else str((base / entry).resolve())


def iter_sources(spec: str, stats: InputStats | None = None, s3: Callable[[], Any] | None = None) -> Iterator[str]:
    """Every source INPUT names, lazily: absolute local paths and ``s3://bucket/key`` URIs.

    ``s3`` returns a boto3 S3 client (only called for S3 input). Manifest entries are taken
    as listed (the file's own bytes decide what it is); folders, globs and prefixes keep
    media extensions only.
    """
    stats = stats if stats is not None else InputStats()
    if spec.startswith("s3://"):
        if s3 is None:
            raise InputError("S3 input needs an S3 client")
        yield from _media_files(_s3_keys(spec, s3()), stats)
        return
    path = Path(spec)
    if path.is_dir():
        yield from _media_files(_walk(path), stats)
    elif path.is_file():
        if C.media_type_for(path.name):
            yield str(path.resolve())
        else:
            yield from _manifest(path)
    elif GLOB_CHARS & set(spec):
        matches = (str(Path(p).resolve()) for p in glob.iglob(spec, recursive=True) if Path(p).is_file())
        yield from _media_files(matches, stats)
    else:
        raise InputError(f"INPUT {spec!r} is not a folder, file, glob or s3:// prefix")


def media_duration(data: bytes) -> float | None:
    """Duration in seconds from the container header (no decoding); None if it does not say."""
    import av  # optional: [models] (durations from the container header)

    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if container.duration is not None:
                return round(container.duration / av.time_base, 3)
            for stream in container.streams:
                if stream.duration is not None and stream.time_base is not None:
                    return round(float(stream.duration * stream.time_base), 3)
    except (av.error.FFmpegError, ValueError, OSError):
        return None
    return None


def describe_error(exc: BaseException) -> str:
    """One line a user can act on: the server's message when there is one, else the exception."""
    message_fn = getattr(exc, "message", None)
    if isinstance(exc, FrontendError | ServingError | InputError | S3UriError):  # MediaError is a ServingError
        text = str(exc)
    elif isinstance(exc, ApiError):
        text = f"{exc.message}"
    elif callable(message_fn):  # tritonclient's InferenceServerException
        text = f"{type(exc).__name__}: {message_fn()}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:500] or type(exc).__name__


class SourceReader:
    """Reads local files and S3 objects (through the fetcher the front end uses too: one client, a size limit)."""

    def __init__(self, max_bytes: int = C.MAX_INPUT_BYTES) -> None:
        self.max_bytes = max_bytes
        self.fetcher = S3Fetcher(max_object_bytes=max_bytes)

    def s3_client(self) -> Any:
        return self.fetcher.client()

    def read(self, source: str) -> bytes:
        if source.startswith("s3://"):
            return self.fetcher.fetch_sync(parse_s3_uri(source, "source", object_key=True))
        path = Path(source)
        try:
            size = path.stat().st_size
            if size > self.max_bytes:
                raise InputError(f"{size} bytes, over the {self.max_bytes}-byte limit")
            return path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read the file ({exc.strerror or type(exc).__name__})") from None


def process(source: str, read: Callable[[str], bytes], predict: Predict) -> dict[str, Any]:
    """One source -> its JSONL record (never raises: a failure is an error record)."""
    start = time.monotonic()
    record: dict[str, Any] = {"source": source}
    try:
        data = read(source)
        content_type = C.media_type_for(source) or C.RAW_SNIFF_TYPE
        kind = C.raw_input(content_type, data)
        result = predict(data, kind, content_type)
        segments = result.pop("segments", None)
        duration = media_duration(data)
        if duration is None and segments:
            duration = segments[-1]["end"]
        record.update(status="ok", media=kind, duration_s=duration, result=result)
        if segments is not None:
            record["segments"] = segments
    except Exception as exc:  # one file's failure is its own line; the batch goes on
        record.update(status="error", error=describe_error(exc))
    record["seconds"] = round(time.monotonic() - start, 3)
    return record
