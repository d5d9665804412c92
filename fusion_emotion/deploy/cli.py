"""``package``, ``deploy`` and ``undeploy`` subcommands (SageMaker).

``deploy`` and ``undeploy`` import boto3 (through ``fusion_emotion.deploy.sagemaker``) inside their handlers:
``package`` runs on the base install.
"""

# ruff: noqa: T201 - command output goes to the terminal by design

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from fusion_emotion import contract as C
from fusion_emotion.arguments import env_pair, field_args
from fusion_emotion.contract import PROFILES
from fusion_emotion.deploy import config as dc
from fusion_emotion.deploy import execution_env as E
from fusion_emotion.deploy.package import (
    TARGETS,
    PackageError,
    build_model_tarball,
    build_stock_triton_tarball,
    validate_repository,
    validate_stock_profile,
)

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    _add_package(subparsers)
    _add_deploy(subparsers)
    _add_undeploy(subparsers)


def _add_package(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "package",
        help="pack a Triton model repository as a SageMaker model.tar.gz",
        description="Write a deterministic model.tar.gz with the model folders at the top level "
        "(SageMaker extracts it into /opt/ml/model). --target sagemaker (default) is for this project's "
        "image; --target sagemaker-triton is for SageMaker's stock Triton image: the profile's configs "
        "become config.pbtxt and the Python-backend models get a packed Python environment.",
    )
    p.add_argument("--repository", required=True, type=Path, help="exported model repository (`fusion-emotion export`)")
    p.add_argument("--output", default="model.tar.gz", type=Path, help="tarball to write (default: model.tar.gz)")
    p.add_argument("--target", choices=TARGETS, default="sagemaker", help="serving image (default: sagemaker)")
    p.add_argument(
        "--profile",
        choices=C.PROFILES,
        default="gpu",
        help="config profile the tarball must be able to serve; for sagemaker-triton the one written as "
        "each model's config.pbtxt (default gpu)",
    )
    p.add_argument(
        "--image",
        default=E.DEFAULT_IMAGE,
        help=f"sagemaker-triton: the stock image's release or URI, e.g. 24.10 or "
        f"<account>.dkr.ecr.<region>.amazonaws.com/sagemaker-tritonserver:24.10-py3 (default {E.DEFAULT_IMAGE}); "
        "it decides the Python version to pack for",
    )
    p.add_argument("--image-python", metavar="X.Y", help="sagemaker-triton: the image's Python when not known here")
    p.add_argument(
        "--python",
        help="sagemaker-triton: interpreter to pack with; its version must be the image's (default: pythonX.Y on PATH)",
    )
    p.add_argument(
        "--image-python-dir",
        default="/usr/bin",
        help="sagemaker-triton: folder of the image's pythonX.Y, which the environment links to (default /usr/bin)",
    )
    p.add_argument("--lock", type=Path, help="sagemaker-triton: hashed lock (default requirements/models-pyXY.lock)")
    p.add_argument("--rebuild-env", action="store_true", help="sagemaker-triton: do not reuse a cached environment")
    p.set_defaults(func=_package)


def _add_deploy(subparsers: argparse._SubParsersAction) -> None:
    d = subparsers.add_parser(
        "deploy",
        help="create (or update) a SageMaker model, endpoint config and endpoint",
        description="Upload the model tarball (if local) and create a SageMaker endpoint serving the "
        "fusion_emotion ensemble, optionally async and/or autoscaled; an endpoint that exists already is "
        "switched to the new model with UpdateEndpoint (blue/green). AWS credentials, region and "
        "AWS_ENDPOINT_URL come from the standard boto3 configuration.",
    )
    d.add_argument("--model-data", required=True, help="model.tar.gz file or s3:// URI")
    d.add_argument(
        "--s3-prefix", help="s3://bucket/prefix to upload a local tarball to (<prefix>/<endpoint>/model.tar.gz)"
    )
    d.add_argument("--image-uri", required=True, help="serving image in ECR (docker/build-and-push.sh)")
    d.add_argument("--role-arn", required=True, help="SageMaker execution role ARN")
    d.add_argument("--endpoint-name", required=True)
    d.add_argument("--instance-type", default="ml.g4dn.xlarge")
    d.add_argument("--instance-count", type=int, default=1)
    d.add_argument(
        "--profile",
        choices=PROFILES,
        help="model config profile: gpu, gpu_fp16, gpu_dali (GPU instances), cpu, cpu_dali, cpu_int8 (after `fusion-emotion quantize`); "
        "default: gpu on a GPU instance type, cpu otherwise. A GPU profile on a CPU instance is refused.",
    )
    d.add_argument(
        "--autoscaling",
        metavar="MIN:MAX:TARGET",
        help="scale between MIN and MAX instances; TARGET is invocations per instance per minute "
        "(real-time) or queued requests per instance (async, where MIN may be 0)",
    )
    d.add_argument("--async-output", metavar="S3_URI", help="make the endpoint asynchronous; results go here")
    d.add_argument(
        "--async-max-concurrency", type=int, default=4, help="async requests per instance at once (default 4)"
    )
    d.add_argument(
        "--async-invocation-timeout",
        type=int,
        default=900,
        metavar="SECONDS",
        help="async only: the InvocationTimeoutSeconds callers pass to InvokeEndpointAsync (SageMaker's default 900, "
        "max 3600); the front end's Triton deadline is set 5 s under it and its body limit to 201 MiB",
    )
    d.add_argument(
        "--env", action="append", type=env_pair, default=[], metavar="KEY=VALUE", help="extra container environment"
    )
    d.add_argument(
        "--s3-allow-bucket",
        action="append",
        default=[],
        metavar="BUCKET",
        help="a bucket whose objects requests may name as s3:// inputs (repeatable); required unless "
        "--s3-any-bucket. The execution role's own S3 permissions still apply (README, 'S3 inputs').",
    )
    d.add_argument(
        "--s3-any-bucket",
        action="store_true",
        help="let requests name any bucket the execution role can read (no allow-list in the container)",
    )
    d.add_argument(
        "--dashboard",
        action="store_true",
        help="create a CloudWatch dashboard and alarms (5xx rate, p95 latency, low confidence, NVDEC fallbacks); "
        "undeploy deletes them",
    )
    d.add_argument("--alarm-topic", metavar="SNS_ARN", help="with --dashboard: the SNS topic the alarms notify")
    d.add_argument(
        "--capture-outputs",
        metavar="S3_URI",
        help="SageMaker Data Capture of responses only (probabilities, QA flags; never the media) for Model Monitor",
    )
    d.add_argument(
        "--capture-percent", type=int, default=100, help="with --capture-outputs: share of responses kept (1-100)"
    )
    d.add_argument("--region", help="AWS region (default: the boto3 configuration)")
    d.add_argument("--no-wait", action="store_true", help="return once creation has started")
    d.add_argument("--wait-timeout", type=int, default=1800, help="seconds to wait for InService (default 1800)")
    d.set_defaults(func=_deploy)


def _add_undeploy(subparsers: argparse._SubParsersAction) -> None:
    u = subparsers.add_parser(
        "undeploy",
        help="delete a SageMaker endpoint with its config, model and autoscaling",
        description="Delete the autoscaling policies and target, the endpoint, its endpoint config and model. "
        "Pieces that are already gone are reported and skipped.",
    )
    u.add_argument("--endpoint-name", required=True)
    u.add_argument("--region", help="AWS region (default: the boto3 configuration)")
    u.set_defaults(func=_undeploy)


def _package(args: argparse.Namespace) -> int:
    try:
        if args.target == "sagemaker":
            names = build_model_tarball(args.repository, args.output, profile=args.profile)
        else:
            validate_stock_profile(args.profile)  # refuse before minutes of packing
            validate_repository(args.repository, args.profile)
            if args.image_python and not re.fullmatch(r"3\.\d+", args.image_python):
                raise E.EnvError(f"--image-python takes a version like 3.10, got {args.image_python!r}")
            minor = args.image_python or E.image_python(args.image)
            interp = E.probe(args.python or E.find_interpreter(minor))
            E.check_interpreter(interp, minor)
            lock = args.lock or E.default_lock(minor)
            env = E.cached_env(interp, lock, image_python_dir=args.image_python_dir, rebuild=args.rebuild_env)
            names = build_stock_triton_tarball(args.repository, args.output, profile=args.profile, env_tarball=env)
            print(f"packed environment: Python {minor} ({interp.path}), {lock.name}, {env.stat().st_size / 1e6:.0f} MB")
    except (PackageError, E.EnvError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    models = sorted({n.split("/", 1)[0] for n in names if "/" in n})
    size = args.output.stat().st_size / 1e6
    print(f"wrote {args.output} ({size:.1f} MB): {len(names)} entries, models: {', '.join(models)}")
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from fusion_emotion import aws  # optional: [client] (boto3; `package` runs without it)
    from fusion_emotion.deploy import sagemaker as sm  # optional: [client]

    if bool(args.s3_allow_bucket) == bool(args.s3_any_bucket):
        print(
            "error: choose which buckets requests may read: --s3-allow-bucket BUCKET (repeatable) "
            "or --s3-any-bucket (any bucket the execution role can read), not both",
            file=sys.stderr,
        )
        return 2
    try:
        # Flags named after DeployConfig's fields fill them; these are mapped here (autoscaling: parsed below).
        cfg = dc.DeployConfig(
            **field_args(
                dc.DeployConfig,
                args,
                autoscaling=None,
                async_invocation_timeout_s=args.async_invocation_timeout,
                environment=dict(args.env),
                s3_allowed_buckets=None if args.s3_any_bucket else tuple(args.s3_allow_bucket),
                wait=not args.no_wait,
                wait_timeout_s=args.wait_timeout,
            )
        )
        if args.autoscaling:
            cfg.autoscaling = dc.parse_autoscaling(args.autoscaling, allow_zero_min=args.async_output is not None)
        dc.validate_config(cfg)
    except dc.ArgumentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    session = aws.session(args.region)
    try:
        result = sm.deploy(cfg, session=session)
    except dc.DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    verb = "updated" if result.updated else "created"
    print(f"endpoint {result.endpoint_name} ({verb}): {result.status}")
    print(f"  model {result.model_name} ({result.model_data_url})")
    print(f"  endpoint config {result.endpoint_config_name}")
    for policy in result.scaling_policies:
        print(f"  scaling policy {policy}")
    for item in result.retired:
        print(f"  deleted the previous {item}")
    for item in result.left:
        print(f"  previous {item} left in place (delete it once the update is InService)")
    for item in result.monitoring:
        print(f"  {item}")
    if cfg.async_output is None and not dc.is_stock_triton_image(cfg.image_uri):
        print(stream_hint(result.endpoint_name, session.region_name))
    return 0


def stream_hint(endpoint: str, region: str | None) -> str:
    """How to try a live stream on a real-time endpoint of this project's image (docs/deploy/streaming.md)."""
    return (
        "  try a live stream (SageMaker bidirectional streaming; Python >= 3.12 with fusion-emotion[sagemaker-stream];"
        " the caller needs sagemaker:InvokeEndpointWithBidirectionalStream):\n"
        f"    fusion-emotion stream speech.wav --sagemaker-endpoint {endpoint} --region {region or 'REGION'}"
    )


def _undeploy(args: argparse.Namespace) -> int:
    from fusion_emotion import aws  # optional: [client] (boto3)
    from fusion_emotion.deploy import sagemaker as sm  # optional: [client]

    try:
        result = sm.undeploy(args.endpoint_name, session=aws.session(args.region))
    except dc.ArgumentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except dc.DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for item in result.deleted:
        print(f"deleted {item}")
    for item in result.missing:
        print(f"already gone: {item}")
    if not result.deleted:
        print(f"nothing to delete for endpoint {args.endpoint_name}")
    return 0
