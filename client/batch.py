"""``fusion-emotion batch``: tag a library of media files, one JSONL line per file, through one route.

Each file goes through one of the ``predict`` routes (``--url``, ``--triton``, ``--sagemaker-endpoint``,
``--local``) as one request. The pieces: ``batch_inputs`` (what INPUT names, one source's record),
``results`` (the resumable JSONL), ``batch_runner`` (threads, progress, a clean stop). ``--transform-job``
hands the whole prefix to SageMaker Batch Transform instead (``fusion_emotion.deploy.transform_cli``, which
registers the command with these routes and its own).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import tritonclient.grpc as grpcclient
from botocore.config import Config
from fusion_emotion.client.batch_inputs import InputStats, Predict, SourceReader, describe_error, iter_sources, process
from fusion_emotion.client.batch_runner import print_summary, run_batch, stop_on_signals, update_search_index
from fusion_emotion.client.http import invoke_endpoint_raw, post_raw
from fusion_emotion.client.progress import Progress
from fusion_emotion.client.results import ResultsFile, write_segments_csv
from fusion_emotion.client.triton import infer_grpc, timeline_grpc

from fusion_emotion import aws
from fusion_emotion import contract as C
from fusion_emotion.core.calls import CallOptions, add_call_arguments, call_from_args
from fusion_emotion.core.calls import pairs as call_pairs
from fusion_emotion.core.result import result_dict
from fusion_emotion.core.windows import window_params
from fusion_emotion.errors import ServingError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- routes
@dataclass(frozen=True)
class RequestOptions:
    timeline: bool = False
    window_s: float | None = None
    hop_s: float | None = None
    timeout_s: float = 600.0
    call: CallOptions = field(default_factory=CallOptions)

    def pairs(self) -> dict[str, str]:
        """As the front end's query parameters / custom attributes."""
        if not self.timeline:
            return {}
        out = {"timeline": "true"}
        if self.window_s is not None:
            out["window_s"] = f"{self.window_s:g}"
        if self.hop_s is not None:
            out["hop_s"] = f"{self.hop_s:g}"
        return {**out, **call_pairs(self.call)}

    def attributes(self) -> str:
        """``timeline=true,window_s=4`` (SageMaker's X-Amzn-SageMaker-Custom-Attributes syntax)."""
        return ",".join(f"{k}={v}" for k, v in self.pairs().items())


def _split(data: bytes, kind: str) -> tuple[bytes | None, bytes | None]:
    return (data, None) if kind == C.IN_VIDEO.name else (None, data)


def _local_predictor(repository: Path, options: RequestOptions) -> tuple[Predict, Callable[[], None]]:
    from fusion_emotion.core.pipeline import ReferencePipeline  # optional: [models]
    from fusion_emotion.core.timeline import timeline_local  # optional: [models]

    pipeline = ReferencePipeline(repository)

    def predict_local(data: bytes, kind: str, content_type: str) -> dict[str, Any]:
        if options.timeline:
            return timeline_local(pipeline, *_split(data, kind), options.window_s, options.hop_s, call=options.call)
        return result_dict(*pipeline.predict(*_split(data, kind)))

    return predict_local, lambda: None


def _triton_predictor(url: str, options: RequestOptions) -> tuple[Predict, Callable[[], None]]:
    local = threading.local()
    clients: list[Any] = []
    lock = threading.Lock()

    def client() -> Any:
        if not hasattr(local, "client"):
            local.client = grpcclient.InferenceServerClient(url)
            with lock:
                clients.append(local.client)
        return local.client

    def predict_triton(data: bytes, kind: str, content_type: str) -> dict[str, Any]:
        video, audio = _split(data, kind)
        if options.timeline:
            return timeline_grpc(
                url,
                video,
                audio,
                options.window_s,
                options.hop_s,
                options.timeout_s,
                client=client(),
                call=options.call,
            )
        return result_dict(*infer_grpc(url, video, audio, timeout_s=options.timeout_s, client=client()))

    def close_triton() -> None:
        for c in clients:
            c.close()

    return predict_triton, close_triton


def _url_predictor(url: str, concurrency: int, options: RequestOptions) -> tuple[Predict, Callable[[], None]]:
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
    http = httpx.Client(timeout=options.timeout_s, limits=limits)
    params = options.pairs() or None

    def predict_url(data: bytes, kind: str, content_type: str) -> dict[str, Any]:
        return post_raw(url, data, content_type, params=params, timeout=options.timeout_s, client=http)

    return predict_url, http.close


def _sagemaker_predictor(args: argparse.Namespace, options: RequestOptions) -> tuple[Predict, Callable[[], None]]:
    runtime = aws.session(args.region).client(
        "sagemaker-runtime",
        config=Config(max_pool_connections=args.concurrency + 4, read_timeout=options.timeout_s),
    )
    attributes = options.attributes() or None

    def predict_sagemaker(data: bytes, kind: str, content_type: str) -> dict[str, Any]:
        return invoke_endpoint_raw(
            args.sagemaker_endpoint, data, content_type, custom_attributes=attributes, client=runtime
        )

    return predict_sagemaker, lambda: None


def make_predictor(args: argparse.Namespace, options: RequestOptions) -> tuple[Predict, Callable[[], None]]:
    """``(predict, close)`` for the chosen route; ``predict`` is safe to call from several threads."""
    if args.local:
        return _local_predictor(args.local, options)
    if args.triton:
        return _triton_predictor(args.triton, options)
    if args.url:
        return _url_predictor(args.url, args.concurrency, options)
    return _sagemaker_predictor(args, options)


# --------------------------------------------------------------------------- CLI
def add_parser(sub: argparse._SubParsersAction) -> tuple[argparse.ArgumentParser, argparse._MutuallyExclusiveGroup]:
    """The ``batch`` parser and its group of routes (one of them is chosen per run).

    ``fusion_emotion.deploy.transform_cli`` registers the command: these routes plus SageMaker Batch Transform's.
    """
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
    p.add_argument("--timeline", action="store_true", help="add per-window segments to every line")
    p.add_argument("--window", type=float, help="timeline window in s (default 4)")
    p.add_argument("--hop", type=float, help="timeline hop in s (default: the window)")
    add_call_arguments(p)
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
    return p, route


def _check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments of a run through one route, or None."""
    if not (args.url or args.triton or args.sagemaker_endpoint or args.local):
        return "choose a route: --url, --triton, --sagemaker-endpoint, --local or --transform-job"
    if not args.input or not args.output:
        return "INPUT and --output results.jsonl are required"
    if args.output.startswith("s3://"):
        return "--output is a local JSONL file (an s3:// output prefix is for --transform-job)"
    if args.concurrency < 1:
        return "--concurrency must be >= 1"
    if (args.window is not None or args.hop is not None) and not args.timeline:
        return "--window and --hop need --timeline"
    if not args.timeline and (args.speakers or args.speaker_names or args.vad is not None or args.summary):
        return "--speakers, --speaker-names, --vad and --summary need --timeline"
    if args.timeline:
        try:
            window_params(args.window, args.hop)
            call_from_args(args)
        except ServingError as exc:
            return str(exc)
    return None


def batch_call(args: argparse.Namespace) -> CallOptions:
    """The call options of a --timeline run (none without it)."""
    return call_from_args(args) if args.timeline else CallOptions()


def _leave_now() -> None:
    """Requests still running in worker threads (onnxruntime, HTTP) would abort or hold up a normal
    interpreter exit; everything finished is written and synced, so leave now."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(130)


def run(args: argparse.Namespace) -> int:
    """One run through a route: every source answered into ``--output``; exit 0 only when every one is ok."""
    problem = _check_args(args)
    if problem:
        log.error("%s", problem)
        return 2
    # The S3 fetcher logs every object at INFO; per-file lines are noise over a library.
    logging.getLogger("fusion_emotion.aws").setLevel(logging.WARNING)
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
    predict, close = make_predictor(
        args, RequestOptions(args.timeline, args.window, args.hop, args.timeout, batch_call(args))
    )
    progress = Progress("batch", interval_s=args.progress_interval)

    def count() -> None:
        try:
            progress.total = sum(1 for _ in iter_sources(args.input, InputStats(), reader.s3_client))
        except Exception as exc:  # the count only feeds the ETA
            log.debug("counting inputs failed: %s", exc)

    threading.Thread(target=count, name="batch-count", daemon=True).start()
    stop = threading.Event()
    restore = stop_on_signals(stop)

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
    print_summary(summary, str(output), retry_hint=not args.retry_failed)
    if summary.interrupted and summary.abandoned:
        _leave_now()
    if summary.interrupted:
        return 130
    return 0 if summary.all_ok else 1
