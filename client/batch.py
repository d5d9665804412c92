"""``fusion-emotion batch``: tag a library of media files, one JSONL line per file.

INPUT is a folder (searched recursively for media extensions), a glob, an
``s3://bucket/prefix/`` or a manifest file (one path or S3 URI per line). Each
file goes through one of the ``predict`` routes (``--url``, ``--triton``,
``--sagemaker-endpoint``, ``--local``) as one request; ``--transform-job``
hands the whole prefix to SageMaker Batch Transform instead
(``fusion_emotion.deploy.transform``).

- Streaming: inputs are enumerated lazily (a second, counting pass runs in the
  background for the progress bar's total and ETA) and at most
  ``2 x concurrency`` files are in memory, so a 100,000-file manifest costs what
  its in-flight files cost, plus 16 bytes per source already answered.
- Resumable: lines are written whole, in completion order, by one thread; a rerun
  with the same ``--output`` skips every source it already holds a line for,
  and cuts off a half-written last line left by a crash. Ctrl-C or SIGTERM stop
  the feeding, write what has finished, and exit 130; a second Ctrl-C exits at once.
"""

# ruff: noqa: T201 - the CLI part prints its summary to the terminal by design

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import io
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusion_emotion import contract as C
from fusion_emotion.handoff import put_until_stopped

log = logging.getLogger(__name__)

GLOB_CHARS = frozenset("*?[")
# Result JSON for one file: the product's flat JSON, plus "segments" with --timeline.
Predict = Callable[[bytes, str, str], dict[str, Any]]


class InputError(ValueError):
    """INPUT cannot be enumerated or one source cannot be read; the message says which and why."""


# --------------------------------------------------------------------------- inputs
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
    from fusion_emotion.deploy.sagemaker import parse_s3_uri

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


# --------------------------------------------------------------------------- one file
def media_duration(data: bytes) -> float | None:
    """Duration in seconds from the container header (no decoding); None if it does not say."""
    import av

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
    from fusion_emotion.client.http import FrontendError

    from fusion_emotion.errors import ServingError
    from fusion_emotion.frontend.errors import ApiError

    message_fn = getattr(exc, "message", None)
    if isinstance(exc, FrontendError | ServingError | InputError):
        text = str(exc)
    elif isinstance(exc, ApiError):
        text = f"{exc.message}"
    elif callable(message_fn):  # tritonclient's InferenceServerException
        text = f"{type(exc).__name__}: {message_fn()}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:500] or type(exc).__name__


class SourceReader:
    """Reads local files and S3 objects (through the front end's fetcher: one client, a size limit)."""

    def __init__(self, max_bytes: int = C.MAX_INPUT_BYTES) -> None:
        from fusion_emotion.frontend.s3 import S3Fetcher

        self.max_bytes = max_bytes
        self.fetcher = S3Fetcher(max_object_bytes=max_bytes)

    def s3_client(self) -> Any:
        return self.fetcher._get_client()

    def read(self, source: str) -> bytes:
        if source.startswith("s3://"):
            from fusion_emotion.frontend.s3 import parse_s3_uri

            return self.fetcher.fetch_sync(parse_s3_uri(source, "source"))
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


# --------------------------------------------------------------------------- results file
def _digest(source: str) -> bytes:
    return hashlib.blake2b(source.encode("utf-8", "surrogateescape"), digest_size=16).digest()


def _truncate_partial_line(path: Path) -> int:
    """Cut a last line without its newline (a crash mid-write); returns the bytes removed."""
    with path.open("rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return 0
        pos = size
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            fh.seek(pos)
            chunk = fh.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = pos + nl + 1
                break
        else:
            keep = 0
        fh.truncate(keep)
        return size - keep


class ResultsFile:
    """The JSONL output: which sources are answered already, and whole-line appends."""

    def __init__(self, path: Path, retry_failed: bool = False) -> None:
        self.path = path
        self.retry_failed = retry_failed
        self.ok: set[bytes] = set()
        self.failed: set[bytes] = set()
        self._fh: Any = None

    def load(self) -> None:
        """Read what earlier runs answered (streamed; 16 bytes kept per source)."""
        if not self.path.exists():
            return
        cut = _truncate_partial_line(self.path)
        if cut:
            log.warning("%s: dropped a half-written last line (%d bytes) from an interrupted run", self.path, cut)
        with self.path.open("rb") as fh:
            for number, raw in enumerate(fh, 1):
                try:
                    record = json.loads(raw)
                    key = _digest(record["source"])
                except (ValueError, KeyError, TypeError):
                    log.warning("%s:%d is not a result line; ignored", self.path, number)
                    continue
                if record.get("status") == "ok":
                    self.ok.add(key)
                    self.failed.discard(key)
                elif key not in self.ok:
                    self.failed.add(key)

    def state(self, source: str) -> str | None:
        """``"ok"`` / ``"failed"`` when a line answers ``source`` already (failed: unless retrying), else None."""
        key = _digest(source)
        if key in self.ok:
            return "ok"
        if key in self.failed and not self.retry_failed:
            return "failed"
        return None

    def __enter__(self) -> ResultsFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("ab")
        return self

    def write(self, record: dict[str, Any]) -> None:
        """One whole line, flushed: a crash can lose at most the line being written, never corrupt others."""
        self._fh.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
        self._fh.flush()
        key = _digest(record["source"])
        if record.get("status") == "ok":
            self.ok.add(key)
            self.failed.discard(key)
        elif key not in self.ok:
            self.failed.add(key)

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every parsable line of a results file, streamed."""
    with path.open("rb") as fh:
        for raw in fh:
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict) and "source" in record:
                yield record


def record_segments(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's timeline segments, or the whole clip as one segment ``[0, duration]``."""
    if record.get("segments"):
        return record["segments"]
    result = record["result"]
    return [
        {"start": 0.0, "end": record.get("duration_s"), **{k: result[k] for k in C.LABELS}}
        | {"dominant_emotion": result["dominant_emotion"]}
    ]


def write_segments_csv(results: Path, out: Path) -> int:
    """One row per segment of every ok line (whole clips as one row), written to a temp file then renamed."""
    tmp = out.with_name(out.name + ".tmp")
    rows = 0
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["source", "start", "end", *C.LABELS, "dominant_emotion", "overall_confidence"])
        for record in iter_records(results):
            if record.get("status") != "ok":
                continue
            confidence = record["result"].get("qa_flags", {}).get("overall_confidence")
            for seg in record_segments(record):
                writer.writerow(
                    [
                        record["source"],
                        seg["start"],
                        seg["end"],
                        *(f"{seg[k]:.6f}" for k in C.LABELS),
                        seg["dominant_emotion"],
                        "" if confidence is None else f"{confidence:.6f}",
                    ]
                )
                rows += 1
    tmp.replace(out)
    return rows


# --------------------------------------------------------------------------- runner
@dataclass
class Summary:
    ok: int = 0
    failed: int = 0
    skipped_ok: int = 0
    skipped_failed: int = 0
    media_s: float = 0.0
    seconds: float = 0.0
    interrupted: bool = False
    abandoned: int = 0  # files still in flight when a stopped run returned
    fatal: str | None = None
    failures: list[str] = field(default_factory=list)  # the first few, for the closing summary

    @property
    def inputs(self) -> int:
        return self.ok + self.failed + self.skipped_ok + self.skipped_failed

    @property
    def all_ok(self) -> bool:
        return self.fatal is None and not self.interrupted and self.failed == 0 and self.skipped_failed == 0

    def media_minutes_per_hour(self) -> float:
        return (self.media_s / 60.0) / (self.seconds / 3600.0) if self.seconds > 0 else 0.0


_SENTINEL: Any = object()


def run_batch(
    sources: Iterable[str],
    handle: Callable[[str], dict[str, Any]],
    results: ResultsFile,
    *,
    concurrency: int = 4,
    progress: Any = None,
    stop: threading.Event | None = None,
    grace_s: float = 5.0,
) -> Summary:
    """Feed ``sources`` to ``concurrency`` worker threads and write their records as they finish.

    ``handle(source) -> record`` must not raise. Only this (the calling) thread writes,
    so every line is whole. Setting ``stop`` ends feeding and starts nothing new; files
    in flight get ``grace_s`` to finish (their answers are written), the rest are
    abandoned (``Summary.abandoned``; daemon threads) and answered by the next run.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    stop = stop or threading.Event()
    work: queue.Queue[Any] = queue.Queue(maxsize=2 * concurrency)
    done: queue.Queue[tuple[str, Any]] = queue.Queue()
    summary = Summary()
    start = time.monotonic()
    lock = threading.Lock()
    busy = [0]  # files being handled right now

    def put(item: Any) -> bool:
        return put_until_stopped(work, item, stop, 0.2)

    def feed() -> None:
        try:
            for source in sources:
                if stop.is_set():
                    return
                state = results.state(source)
                if state is not None:
                    done.put(("skipped", state))
                elif not put(source):
                    return
        except Exception as exc:  # enumeration failed (e.g. S3 listing denied): the run cannot go on
            done.put(("fatal", describe_error(exc)))
        finally:
            for _ in range(concurrency):
                if not put(_SENTINEL):
                    break

    def work_loop() -> None:
        while not stop.is_set():
            try:
                source = work.get(timeout=0.2)
            except queue.Empty:
                continue
            if source is _SENTINEL:
                done.put(("worker-exit", None))
                return
            with lock:
                if stop.is_set():
                    return
                busy[0] += 1
            record = handle(source)
            with lock:
                done.put(("record", record))
                busy[0] -= 1

    def take(kind: str, payload: Any) -> None:
        if kind == "record":
            results.write(payload)
            ok = payload.get("status") == "ok"
            if ok:
                summary.ok += 1
                summary.media_s += payload.get("duration_s") or 0.0
            else:
                summary.failed += 1
                if len(summary.failures) < 5:
                    summary.failures.append(f"{payload['source']}: {payload.get('error')}")
            if progress is not None:
                progress.update(ok, payload.get("duration_s"))
        elif kind == "skipped":
            if payload == "ok":
                summary.skipped_ok += 1
            else:
                summary.skipped_failed += 1
            if progress is not None:
                progress.skip()
        elif kind == "fatal":
            summary.fatal = payload
            stop.set()

    threading.Thread(target=feed, name="batch-feed", daemon=True).start()
    for i in range(concurrency):
        threading.Thread(target=work_loop, name=f"batch-{i}", daemon=True).start()

    running = concurrency
    while running and not stop.is_set():
        try:
            kind, payload = done.get(timeout=0.2)
        except queue.Empty:
            if progress is not None:
                progress.tick()
            continue
        if kind == "worker-exit":
            running -= 1
        else:
            take(kind, payload)
    if stop.is_set():
        # Files in flight get a moment to finish: each is an answer worth keeping.
        deadline = time.monotonic() + grace_s
        while True:
            try:
                kind, payload = done.get(timeout=0.05)
            except queue.Empty:
                with lock:
                    idle = busy[0] == 0 and done.empty()
                if idle or time.monotonic() > deadline:
                    break
                continue
            if kind not in ("worker-exit", "fatal"):
                take(kind, payload)
        with lock:
            summary.abandoned = busy[0]
        summary.interrupted = summary.fatal is None
    summary.seconds = time.monotonic() - start
    return summary


# --------------------------------------------------------------------------- routes
@dataclass(frozen=True)
class RequestOptions:
    timeline: bool = False
    window_s: float | None = None
    hop_s: float | None = None
    timeout_s: float = 600.0

    def pairs(self) -> dict[str, str]:
        """As the front end's query parameters / custom attributes."""
        if not self.timeline:
            return {}
        out = {"timeline": "true"}
        if self.window_s is not None:
            out["window_s"] = f"{self.window_s:g}"
        if self.hop_s is not None:
            out["hop_s"] = f"{self.hop_s:g}"
        return out

    def attributes(self) -> str:
        """``timeline=true,window_s=4`` (SageMaker's X-Amzn-SageMaker-Custom-Attributes syntax)."""
        return ",".join(f"{k}={v}" for k, v in self.pairs().items())


def make_predictor(args: argparse.Namespace, options: RequestOptions) -> tuple[Predict, Callable[[], None]]:
    """``(predict, close)`` for the chosen route; ``predict`` is safe to call from several threads."""
    from fusion_emotion.core.result import result_dict

    def split(data: bytes, kind: str) -> tuple[bytes | None, bytes | None]:
        return (data, None) if kind == C.IN_VIDEO.name else (None, data)

    if args.local:
        from fusion_emotion.core.pipeline import ReferencePipeline
        from fusion_emotion.core.timeline import timeline_local

        pipeline = ReferencePipeline(args.local)

        def predict_local(data: bytes, kind: str, content_type: str) -> dict[str, Any]:
            if options.timeline:
                return timeline_local(pipeline, *split(data, kind), options.window_s, options.hop_s)
            return result_dict(*pipeline.predict(*split(data, kind)))

        return predict_local, lambda: None

    if args.triton:
        import tritonclient.grpc as grpcclient
        from fusion_emotion.client.timeline_cli import timeline_grpc
        from fusion_emotion.client.triton import infer_grpc

        local = threading.local()
        clients: list[Any] = []
        lock = threading.Lock()

        def client() -> Any:
            if not hasattr(local, "client"):
                local.client = grpcclient.InferenceServerClient(args.triton)
                with lock:
                    clients.append(local.client)
            return local.client

        def predict_triton(data: bytes, kind: str, content_type: str) -> dict[str, Any]:
            video, audio = split(data, kind)
            if options.timeline:
                return timeline_grpc(
                    args.triton, video, audio, options.window_s, options.hop_s, options.timeout_s, client=client()
                )
            return result_dict(*infer_grpc(args.triton, video, audio, timeout_s=options.timeout_s, client=client()))

        def close_triton() -> None:
            for c in clients:
                c.close()

        return predict_triton, close_triton

    if args.url:
        import httpx
        from fusion_emotion.client.http import post_raw

        limits = httpx.Limits(max_connections=args.concurrency + 2, max_keepalive_connections=args.concurrency + 2)
        http = httpx.Client(timeout=options.timeout_s, limits=limits)
        params = options.pairs() or None

        def predict_url(data: bytes, kind: str, content_type: str) -> dict[str, Any]:
            return post_raw(args.url, data, content_type, params=params, timeout=options.timeout_s, client=http)

        return predict_url, http.close

    from botocore.config import Config
    from fusion_emotion.client.http import invoke_endpoint_raw

    from fusion_emotion.deploy.sagemaker import aws_session

    runtime = aws_session(args.region).client(
        "sagemaker-runtime",
        config=Config(max_pool_connections=args.concurrency + 4, read_timeout=options.timeout_s),
    )
    attributes = options.attributes() or None

    def predict_sagemaker(data: bytes, kind: str, content_type: str) -> dict[str, Any]:
        return invoke_endpoint_raw(
            args.sagemaker_endpoint, data, content_type, custom_attributes=attributes, client=runtime
        )

    return predict_sagemaker, lambda: None


# --------------------------------------------------------------------------- CLI
def register(sub: argparse._SubParsersAction) -> None:
    from fusion_emotion.deploy import transform

    p = sub.add_parser(
        "batch",
        help="tag a folder, glob, S3 prefix or manifest of media files (JSONL, resumable)",
        description="Predict every media file INPUT names, one JSONL line each (completion order). "
        "A rerun with the same --output skips what is answered already.",
    )
    p.add_argument("input", nargs="?", help="folder, glob (quoted), s3://bucket/prefix/, or manifest file")
    p.add_argument("--output", help="results JSONL (with --transform-job: the s3:// output prefix)")
    route = p.add_mutually_exclusive_group()
    route.add_argument("--url", metavar="URL", help="fusion-emotion front end, e.g. http://127.0.0.1:8080")
    route.add_argument("--triton", metavar="HOST:PORT", help="Triton gRPC endpoint")
    route.add_argument("--sagemaker-endpoint", metavar="NAME", help="SageMaker endpoint running the front end")
    route.add_argument("--local", metavar="DIR", type=Path, help="in-process reference on a model repository")
    route.add_argument(
        "--transform-job", action="store_true", help="run as a SageMaker Batch Transform job (INPUT: s3:// prefix)"
    )
    route.add_argument("--attach", metavar="JOB", help="follow an existing transform job and gather its results")
    p.add_argument("--timeline", action="store_true", help="add per-window segments to every line")
    p.add_argument("--window", type=float, help="timeline window in s (default 4)")
    p.add_argument("--hop", type=float, help="timeline hop in s (default: the window)")
    p.add_argument("--concurrency", type=int, default=4, help="files in flight (default 4)")
    p.add_argument("--csv", type=Path, metavar="CSV", help="also write one row per segment (whole clips: one row)")
    p.add_argument("--retry-failed", action="store_true", help="on a rerun, try inputs with an error line again")
    p.add_argument(
        "--no-index", action="store_true", help="do not update the search index (OUTPUT.index.sqlite) at the end"
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per file (default 600)")
    p.add_argument("--region", help="AWS region (default: the boto3 configuration)")
    p.add_argument(
        "--progress-interval", type=float, default=30.0, help="seconds between progress lines off a terminal"
    )
    transform.add_arguments(p)
    p.set_defaults(func=run)


def _print_summary(summary: Summary, output: str, retry_hint: bool) -> None:
    media_h = summary.media_s / 3600.0
    print(
        f"batch: {summary.ok} ok, {summary.failed} failed"
        + (
            f"; answered before: {summary.skipped_ok} ok, {summary.skipped_failed} failed"
            if summary.skipped_ok or summary.skipped_failed
            else ""
        )
    )
    rate = (summary.ok + summary.failed) / summary.seconds if summary.seconds > 0 else 0.0
    print(
        f"media: {media_h:.3f} h in {summary.seconds:.1f} s -> {summary.media_minutes_per_hour():.0f} media minutes "
        f"per hour, {rate * 60:.1f} files/min"
    )
    for line in summary.failures:
        print(f"  failed: {line}")
    if summary.interrupted:
        print(f"interrupted: every finished file is in {output}; run the same command again to continue")
    elif retry_hint and (summary.failed or summary.skipped_failed):
        print(f"failed files have error lines in {output}; rerun with --retry-failed to try them again")


def run(args: argparse.Namespace) -> int:
    from fusion_emotion.core.timeline import window_params
    from fusion_emotion.errors import ServingError

    if args.transform_job or args.attach:
        from fusion_emotion.deploy import transform

        return transform.run_cli(args)
    if not (args.url or args.triton or args.sagemaker_endpoint or args.local):
        log.error("choose a route: --url, --triton, --sagemaker-endpoint, --local or --transform-job")
        return 2
    if not args.input or not args.output:
        log.error("INPUT and --output results.jsonl are required")
        return 2
    if args.output.startswith("s3://"):
        log.error("--output is a local JSONL file (an s3:// output prefix is for --transform-job)")
        return 2
    if args.concurrency < 1:
        log.error("--concurrency must be >= 1")
        return 2
    if (args.window is not None or args.hop is not None) and not args.timeline:
        log.error("--window and --hop need --timeline")
        return 2
    try:
        if args.timeline:
            window_params(args.window, args.hop)
    except ServingError as exc:
        log.error("%s", exc)
        return 2
    # The S3 fetcher logs every object at INFO; per-file lines are noise over a library.
    logging.getLogger("fusion_emotion.frontend.s3").setLevel(logging.WARNING)

    options = RequestOptions(args.timeline, args.window, args.hop, args.timeout)
    output = Path(args.output)
    results = ResultsFile(output, retry_failed=args.retry_failed)
    reader = SourceReader()
    stats = InputStats()
    try:
        results.load()
        sources = iter_sources(args.input, stats, reader.s3_client)
        first = next(sources, None)
    except Exception as exc:  # a missing folder, an unreadable manifest, a denied S3 listing
        log.error("cannot read INPUT: %s", describe_error(exc))
        return 2
    if first is None:
        log.error("no media files in %s (ignored %d other files)", args.input, stats.ignored)
        return 2
    predict, close = make_predictor(args, options)

    progress = _progress(args)

    def count() -> None:
        try:
            progress.total = sum(1 for _ in iter_sources(args.input, InputStats(), reader.s3_client))
        except Exception as exc:  # the count only feeds the ETA
            log.debug("counting inputs failed: %s", exc)

    threading.Thread(target=count, name="batch-count", daemon=True).start()
    stop = threading.Event()
    restore = _stop_on_signals(stop)

    def chained() -> Iterator[str]:
        yield first
        yield from sources

    try:
        with results:
            summary = run_batch(
                chained(),
                lambda source: process(source, reader.read, predict),
                results,
                concurrency=args.concurrency,
                progress=progress,
                stop=stop,
            )
    finally:
        restore()
        close()
        progress.close()
    if args.csv:
        rows = write_segments_csv(output, args.csv)
        log.info("wrote %d segment rows to %s", rows, args.csv)
    if not args.no_index:
        update_search_index(output)
    if stats.ignored:
        log.info("ignored %d files without a media extension", stats.ignored)
    if summary.fatal:
        log.error("batch stopped: %s", summary.fatal)
    _print_summary(summary, str(output), retry_hint=not args.retry_failed)
    if summary.interrupted and summary.abandoned:
        # Requests still running in worker threads (onnxruntime, HTTP) would abort or hold up a normal
        # interpreter exit; everything finished is written and synced, so leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(130)
    if summary.interrupted:
        return 130
    return 0 if summary.all_ok else 1


def update_search_index(results: Path) -> None:
    """Bring ``fusion-emotion search``'s index up to date now, so the first search answers at once."""
    from fusion_emotion.client.search import SegmentIndex

    if not results.exists():
        return
    start = time.monotonic()
    with SegmentIndex(results) as index:
        added = index.refresh()
    log.info("search index %s: +%d clips in %.1f s", index.path, added, time.monotonic() - start)


def _progress(args: argparse.Namespace) -> Any:
    from fusion_emotion.client.progress import Progress

    return Progress("batch", interval_s=args.progress_interval)


def _stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """First SIGINT/SIGTERM: stop cleanly (finish writing what is done); a second SIGINT: now."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not stop.is_set():
            sys.stderr.write("\nstopping: writing finished files; Ctrl-C again to quit at once\n")
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
