"""``fusion-emotion stream FILE``: play a WAV or a video file into the front end's ``/stream`` WebSocket.

Prints every update as it arrives (one JSON object per line, or CSV rows with ``--csv``); with
``--realtime`` the file is sent at the pace it would be spoken, else as fast as the server takes it.
With ``--sagemaker-endpoint NAME`` the same protocol goes through SageMaker's bidirectional streaming
(``InvokeEndpointWithBidirectionalStream``; extra ``[sagemaker-stream]``, Python >= 3.12; docs/deploy/streaming.md).
Exit status: 0 after a normal close, 1 when the server closed the stream with an error, 2 when the SageMaker
client is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from fusion_emotion.client.stream import media_source, play, stream_config

from fusion_emotion import contract as C
from fusion_emotion.core.windows import STREAM_DEFAULTS

log = logging.getLogger(__name__)

CSV_COLUMNS = ("t_start", "t_end", *C.LABELS, "dominant_emotion", "latency_ms")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stream", help="stream a WAV or a video file to the front end and print live updates")
    p.add_argument("file", type=Path, help="WAV, or a video (MP4/FLV/AVI/MKV/WebM): its audio track and frames")
    p.add_argument("--url", default="ws://127.0.0.1:8080/stream", help="front end WebSocket (default %(default)s)")
    p.add_argument("--realtime", action="store_true", help="send at real-time pace (default: as fast as served)")
    p.add_argument("--hop", type=float, help=f"seconds between updates (default {STREAM_DEFAULTS.hop_s:g})")
    p.add_argument("--window", type=float, help=f"analysis window in seconds (default {STREAM_DEFAULTS.window_s:g})")
    p.add_argument("--fps", type=float, default=5.0, help="video frames sent per second (default 5)")
    p.add_argument("--no-video", action="store_true", help="send only the audio of a video file")
    p.add_argument("--chunk", type=float, default=0.1, help="seconds of audio per message (default 0.1)")
    p.add_argument("--csv", action="store_true", help="print CSV rows instead of JSON lines")
    p.add_argument(
        "--alerts",
        type=_alert_rules,
        metavar="JSON",
        help='alert rules, e.g. \'[{"emotion": "angry", "min_p": 0.6, "for_s": 5}]\' (docs/streaming.md)',
    )
    sm = p.add_argument_group("through SageMaker (InvokeEndpointWithBidirectionalStream; needs [sagemaker-stream])")
    sm.add_argument("--sagemaker-endpoint", metavar="NAME", help="stream to this SageMaker endpoint instead of --url")
    sm.add_argument("--region", help="its AWS region (default: AWS_REGION, AWS_DEFAULT_REGION)")
    sm.add_argument("--endpoint-url", help="SageMaker Runtime HTTP/2 URL (default https://runtime.sagemaker.REGION"
                    ".amazonaws.com:8443)")  # fmt: skip
    sm.add_argument("--ca-bundle", help="PEM CA bundle to trust for --endpoint-url (e.g. the local stand-in's)")
    sm.add_argument("--settings-in-query", action="store_true",
                    help="send the stream settings as ModelQueryString instead of a first message")  # fmt: skip
    p.set_defaults(func=run)


def _out(line: str, stream: Any = None) -> None:
    stream = stream or sys.stdout
    stream.write(line + "\n")
    stream.flush()


def _alert_rules(text: str) -> list[dict[str, Any]]:
    """``--alerts``: a JSON list of rules (the server checks each and names a bad one)."""
    try:
        rules = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError("--alerts takes a JSON list of rules") from None
    if not isinstance(rules, list):
        raise argparse.ArgumentTypeError("--alerts takes a JSON list of rules")
    return rules


def csv_row(update: dict[str, Any]) -> str:
    return ",".join("" if update.get(k) is None else str(update[k]) for k in CSV_COLUMNS)


def run(args: argparse.Namespace) -> int:
    source = media_source(args.file.read_bytes(), fps=args.fps, with_frames=not args.no_video)
    log.info("streaming %.1f s of %d Hz x %d audio and %d frames", source.duration_s, source.sample_rate,
             source.channels, len(source.frames))  # fmt: skip
    if args.csv:
        _out(",".join(CSV_COLUMNS))

    def show(msg: dict[str, Any]) -> None:
        if "t_end" in msg:
            _out(csv_row(msg) if args.csv else json.dumps(msg))
        elif "error" in msg:
            _out(json.dumps(msg), sys.stderr)
        elif "alert" in msg and not args.csv:
            _out(json.dumps(msg))

    options: dict[str, Any] = {}
    if args.sagemaker_endpoint:
        try:
            options = sagemaker_options(args, stream_config(source, args.hop, args.window))
        except ImportError as exc:
            _out(f"--sagemaker-endpoint needs the [sagemaker-stream] extra on Python >= 3.12 ({exc.name} missing)",
                 sys.stderr)  # fmt: skip
            return 2
        except ValueError as exc:
            _out(str(exc), sys.stderr)
            return 2
    result = asyncio.run(
        play(args.url, source, realtime=args.realtime, chunk_s=args.chunk, hop_s=args.hop, window_s=args.window,
             alerts=args.alerts, on_message=show, **options)
    )  # fmt: skip
    log.info("%d updates; closed with code %s", len(result.updates), result.close_code)
    return 0 if result.close_code == 1000 and not result.errors else 1


def sagemaker_options(args: argparse.Namespace, config: dict[str, Any]) -> dict[str, Any]:
    """play()'s ``connect``/``send_config`` for a SageMaker endpoint; ImportError without the extra."""
    import os

    # optional: [sagemaker-stream] (Python >= 3.12)
    from fusion_emotion.client.sagemaker_stream import SageMakerTarget, connect_sagemaker

    region = args.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        raise ValueError("--sagemaker-endpoint needs --region (or AWS_REGION)")
    target = SageMakerTarget(
        args.sagemaker_endpoint, region, endpoint_uri=args.endpoint_url, ca_file=args.ca_bundle,
        query=config if args.settings_in_query else None,
    )  # fmt: skip
    return {"connect": lambda: connect_sagemaker(target), "send_config": not args.settings_in_query}
