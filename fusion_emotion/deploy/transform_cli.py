"""``fusion-emotion batch``: the command, with the client's routes and SageMaker Batch Transform's.

``--url``/``--triton``/``--sagemaker-endpoint``/``--local`` run the library through the client
(``fusion_emotion.client.batch``); ``--transform-job`` submits it as a SageMaker Batch Transform job and
``--attach JOB`` follows one and gathers its results (``fusion_emotion.deploy.transform``). This module sits
above both, so neither imports the other's command line.
"""

# ruff: noqa: T201 - the job's summary goes to the terminal by design

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path

from fusion_emotion import aws
from fusion_emotion.arguments import env_pair
from fusion_emotion.client import batch
from fusion_emotion.client.batch import RequestOptions
from fusion_emotion.client.batch_runner import print_summary, stop_on_signals, update_search_index
from fusion_emotion.core.windows import window_params
from fusion_emotion.deploy import config as dc
from fusion_emotion.deploy import transform as T
from fusion_emotion.errors import ServingError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p, route = batch.add_parser(sub)
    route.add_argument(
        "--transform-job", action="store_true", help="run as a SageMaker Batch Transform job (INPUT: s3:// prefix)"
    )
    route.add_argument("--attach", metavar="JOB", help="follow an existing transform job and gather its results")
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.transform_job or args.attach:
        return run_cli(args)
    return batch.run(args)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--transform-job`` options of ``fusion-emotion batch``."""
    g = p.add_argument_group("SageMaker Batch Transform (--transform-job, --attach)")
    g.add_argument("--image-uri", help="serving image in ECR (docker/build-and-push.sh)")
    g.add_argument("--model-data", help="model.tar.gz file or s3:// URI")
    g.add_argument("--s3-prefix", help="s3://bucket/prefix to upload a local --model-data to")
    g.add_argument("--role-arn", help="SageMaker execution role ARN")
    g.add_argument("--instance-type", default="ml.g4dn.xlarge", help="default ml.g4dn.xlarge")
    g.add_argument("--instance-count", type=int, default=1, help="default 1")
    g.add_argument("--profile", default="gpu", help="model config profile: gpu (default), cpu or gpu_fp16")
    g.add_argument("--content-type", help="override the content type taken from the objects' extensions")
    g.add_argument("--max-concurrent-transforms", type=int, help="requests in flight per instance (default: sized)")
    g.add_argument("--max-payload-mb", type=int, default=T.MAX_PAYLOAD_MB, help="per-object limit (default 100)")
    g.add_argument(
        "--invocation-timeout", type=int, default=T.DEFAULT_INVOCATION_TIMEOUT_S, help="seconds per object (600)"
    )
    g.add_argument("--job-name", help="base name of the job and its model (a UTC timestamp is appended)")
    g.add_argument("--env", action="append", type=env_pair, default=[], metavar="KEY=VALUE")
    g.add_argument("--wait", action="store_true", help="follow the job, then gather its outputs into --results")
    g.add_argument("--results", type=Path, default=Path("results.jsonl"), help="gathered JSONL (default results.jsonl)")
    g.add_argument("--poll", type=float, default=T.DEFAULT_POLL_S, help="seconds between status checks (default 60)")


def config_from_args(args: argparse.Namespace) -> T.TransformConfig:
    options = RequestOptions(args.timeline, args.window, args.hop, call=batch.batch_call(args)).attributes()
    model = dc.DeployConfig(
        model_data=args.model_data or "",
        image_uri=args.image_uri or "",
        role_arn=args.role_arn or "",
        endpoint_name=args.job_name or "fusion-emotion-batch",
        s3_prefix=args.s3_prefix,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        profile=args.profile,
        environment=dict(args.env),
    )
    return T.TransformConfig(
        input=args.input or "",
        output=args.output or "",
        model=model,
        content_type=args.content_type,
        options=options,
        timeline=args.timeline,
        max_payload_mb=args.max_payload_mb,
        max_concurrent=args.max_concurrent_transforms,
        invocation_timeout_s=args.invocation_timeout,
    )


def run_cli(args: argparse.Namespace) -> int:
    """``batch --transform-job`` / ``batch --attach JOB``: exit 0 only when every input has a result."""
    session = aws.session(args.region)
    if args.attach:
        job_name, total = args.attach, None
    else:
        try:
            cfg = config_from_args(args)
            T.validate(cfg)
            if args.timeline:
                window_params(args.window, args.hop)
        except (dc.ArgumentError, ValueError, ServingError) as exc:
            log.error("%s", exc)
            return 2
        try:
            submitted = T.submit(cfg, session)
        except (T.TransformError, dc.DeployError) as exc:
            log.error("%s", exc)
            return 1
        job_name, total = submitted.job_name, submitted.plan.count
        print(f"transform job {job_name}: {submitted.plan.count} objects ({submitted.plan.content_type})")
        print(f"  model {submitted.model_name}; outputs under {cfg.output}")
        if submitted.plan.skipped:
            print(f"  {submitted.plan.skipped} objects not sent (not media, or over the payload limit)")
        if not args.wait:
            print(f"follow and gather later: fusion-emotion batch --attach {job_name} --results {args.results}")
            return 0
    try:
        desc = T.follow(session, job_name, total, args.poll)
    except KeyboardInterrupt:
        print(f"\nthe job keeps running; follow it again: fusion-emotion batch --attach {job_name}")
        return 130
    except Exception as exc:  # DescribeTransformJob refused: a wrong name, no permission
        log.error("following %s failed: %s", job_name, exc)
        return 1
    stop = threading.Event()
    restore = stop_on_signals(stop)
    try:
        summary = T.gather(session, desc, args.results, stop=stop)
    finally:
        restore()
    if not args.no_index:
        update_search_index(args.results)
    print_summary(summary, str(args.results), retry_hint=False)
    if summary.interrupted:
        return 130
    return 0 if summary.all_ok and desc["TransformJobStatus"] == "Completed" else 1
