"""``fusion-emotion serve``: the SageMaker-compatible HTTP front end (uvicorn)."""

from __future__ import annotations

import argparse
import logging

from fusion_emotion.arguments import field_args
from fusion_emotion.frontend.settings import Settings

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the HTTP front end (/ping, /invocations, /predict) in front of Triton",
        description=(
            "Every option also reads an environment variable (FUSION_EMOTION_<NAME>); "
            "SAGEMAKER_BIND_TO_PORT overrides FUSION_EMOTION_PORT, flags override both."
        ),
    )
    p.add_argument("--triton-url", help="Triton gRPC HOST:PORT [env FUSION_EMOTION_TRITON_URL, default 127.0.0.1:8001]")
    p.add_argument("--host", help="bind address [env FUSION_EMOTION_HOST, default 0.0.0.0]")
    p.add_argument(
        "--port", type=int, help="bind port [env SAGEMAKER_BIND_TO_PORT / FUSION_EMOTION_PORT, default 8080]"
    )
    p.add_argument("--model-name", help="Triton model [env FUSION_EMOTION_MODEL_NAME, default fusion_emotion]")
    p.add_argument(
        "--max-body-bytes", type=int, help="request body limit [env FUSION_EMOTION_MAX_BODY_BYTES, default 6 MiB]"
    )
    p.add_argument(
        "--max-s3-object-bytes",
        type=int,
        help="S3 object limit [env FUSION_EMOTION_MAX_S3_OBJECT_BYTES, default 100 MiB]",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        dest="request_timeout_s",
        help="one deadline per request in seconds: body, S3 and Triton (504 past it) "
        "[env FUSION_EMOTION_REQUEST_TIMEOUT_S, default 55]",
    )
    p.add_argument(
        "--max-in-flight",
        type=int,
        help="inference requests served at once; more get 503 + Retry-After "
        "[env FUSION_EMOTION_MAX_IN_FLIGHT, default 16]",
    )
    p.add_argument(
        "--ping-timeout",
        type=float,
        dest="ping_timeout_s",
        help="health-check deadline in seconds [env FUSION_EMOTION_PING_TIMEOUT_S, default 1]",
    )
    p.add_argument(
        "--s3-allowed-buckets", help="comma-separated bucket allow-list [env FUSION_EMOTION_S3_ALLOWED_BUCKETS]"
    )
    p.add_argument(
        "--default-options",
        help="options for requests that give none, e.g. timeline=true,window_s=4 "
        "[env FUSION_EMOTION_DEFAULT_OPTIONS; Batch Transform sets it]",
    )
    p.add_argument(
        "--ui",
        action="store_true",
        default=None,
        help="also serve the web playground at /ui [env FUSION_EMOTION_UI, default off]",
    )
    p.add_argument(
        "--no-metrics",
        action="store_false",
        dest="metrics",
        default=None,
        help="do not serve GET /metrics [env FUSION_EMOTION_METRICS, default on]",
    )
    p.add_argument(
        "--emf-interval",
        type=float,
        dest="emf_interval_s",
        help="seconds between CloudWatch EMF records on stdout, 0 = off "
        "[env FUSION_EMOTION_EMF_INTERVAL_S, default 0; 60 on SageMaker]",
    )
    p.add_argument(
        "--endpoint-name", help="EndpointName dimension of the EMF records [env FUSION_EMOTION_ENDPOINT_NAME]"
    )
    p.add_argument(
        "--triton-metrics-url",
        help="Triton's metrics page, for decodes in the EMF records "
        "[env FUSION_EMOTION_TRITON_METRICS_URL, default http://127.0.0.1:8002/metrics]",
    )
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    # optional: [serving] (FastAPI, uvicorn: `serve --help` needs neither)
    import uvicorn

    from fusion_emotion.frontend.app import create_app
    from fusion_emotion.frontend.stream import StreamSettings, uvicorn_ws_options

    settings = Settings.from_env(**field_args(Settings, args))  # one flag per Settings field
    stream_settings = StreamSettings.from_env()
    log.info("serving on %s:%d, triton at %s", settings.host, settings.port, settings.triton_url)
    # One process, one event loop: the shared gRPC client lives in it. Our middleware
    # writes the access log (with a request id), so uvicorn's is off; log_config=None
    # keeps the CLI's logging setup.
    uvicorn.run(
        create_app(settings, stream_settings),
        host=settings.host,
        port=settings.port,
        access_log=False,
        log_config=None,
        timeout_keep_alive=75,  # above the 60 s idle timeout of SageMaker's / ALB's side
        # GET /stream (WebSocket, via `websockets`): message size, read-ahead and keepalive pings (a client that
        # stops reading or vanishes is closed within ping_interval + ping_timeout; docs/reliability.md)
        **uvicorn_ws_options(stream_settings),
    )
    return 0
