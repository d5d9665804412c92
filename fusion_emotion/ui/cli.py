"""``fusion-emotion ui``: serve the web playground on this machine (docs/playground.md)."""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger(__name__)

DEFAULT_PORT = 8090


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ui",
        help="web playground: a local page for files, timelines and live microphone/camera streams",
        description="Serve a local page (http://HOST:PORT/ui/) that sends files and live audio/video to a "
        "fusion-emotion service and shows its answers.",
    )
    route = p.add_mutually_exclusive_group(required=True)
    route.add_argument("--url", metavar="URL", help="fusion-emotion front end, e.g. http://127.0.0.1:8080")
    route.add_argument("--sagemaker-endpoint", metavar="NAME", help="SageMaker endpoint (boto3 invoke_endpoint)")
    route.add_argument("--triton", metavar="HOST:PORT", help="Triton gRPC endpoint (the front end runs in-process)")
    p.add_argument("--region", help="AWS region of --sagemaker-endpoint (default: boto3's)")
    p.add_argument(
        "--stream-endpoint-url",
        metavar="URL",
        help="with --sagemaker-endpoint: the bidirectional-streaming API's URL when not AWS's (a VPC endpoint, "
        "the local stand-in); default https://runtime.sagemaker.REGION.amazonaws.com:8443",
    )
    p.add_argument("--ca-bundle", metavar="PEM", help="with --sagemaker-endpoint: CA bundle for that URL's TLS")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="bind port (default %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # optional: [serving] (uvicorn, Starlette: `ui --help` needs neither)
    import uvicorn

    from fusion_emotion.frontend.stream import StreamSettings, uvicorn_ws_options
    from fusion_emotion.ui.server import PAGE_PATH, build_app
    from fusion_emotion.ui.targets import Target

    try:
        target = Target(
            url=args.url,
            endpoint=args.sagemaker_endpoint,
            region=args.region,
            triton=args.triton,
            stream_endpoint_url=args.stream_endpoint_url,
            ca_bundle=args.ca_bundle,
        )
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
    sys.stdout.write(f"playground for {target.describe()}: http://{host}:{args.port}{PAGE_PATH}\n")
    sys.stdout.flush()
    try:
        app = build_app(target)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        access_log=False,
        log_config=None,
        **uvicorn_ws_options(StreamSettings.from_env()),  # as `serve`
    )
    return 0
