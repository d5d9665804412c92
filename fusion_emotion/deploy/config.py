"""What a SageMaker deployment is made of, checked before any AWS call: the configuration, its validation,
and the environment our container gets (``deploy``, ``undeploy`` and Batch Transform jobs share it).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from fusion_emotion.contract import AUDIO_ENCODER, ENSEMBLE, MAX_INPUT_BYTES, PROFILES, VIDEO_ENCODER
from fusion_emotion.s3uri import S3Uri, S3UriError, parse_s3_uri
from fusion_emotion.server.shm import SHM_DEFAULT_DEV_SHM_BYTES, shm_input_limit, shm_needed_bytes

log = logging.getLogger(__name__)

# Environment the container reads (docker/serve and the stock SageMaker Triton image).
ENV_DEFAULT_MODEL = "SAGEMAKER_TRITON_DEFAULT_MODEL_NAME"
ENV_PROFILE = "FUSION_EMOTION_PROFILE"
# Front-end settings (fusion_emotion.frontend.settings) that other deployment forms change.
ENV_MAX_BODY_BYTES = "FUSION_EMOTION_MAX_BODY_BYTES"
ENV_REQUEST_TIMEOUT_S = "FUSION_EMOTION_REQUEST_TIMEOUT_S"
ENV_DEFAULT_OPTIONS = "FUSION_EMOTION_DEFAULT_OPTIONS"
ENV_S3_ALLOWED_BUCKETS = "FUSION_EMOTION_S3_ALLOWED_BUCKETS"
ENV_STARTUP_TIMEOUT_S = "FUSION_EMOTION_STARTUP_TIMEOUT"
# The front end's CloudWatch EMF records (docs/observability/index.md): every minute, named by endpoint.
ENV_EMF_INTERVAL_S = "FUSION_EMOTION_EMF_INTERVAL_S"
ENV_ENDPOINT_NAME = "FUSION_EMOTION_ENDPOINT_NAME"
SAGEMAKER_EMF_INTERVAL_S = 60
# How long a fresh instance may take from container start to a 200 on /ping: the container's supervisor
# waits this long for Triton before it gives up, and deploy tells SageMaker the same
# (ContainerStartupHealthCheckTimeoutInSeconds): one budget, so neither gives up first. gpu_fp16 builds its
# TensorRT engines on the first load (an estimate: not run on a GPU yet); the others load and warm up.
STARTUP_BUDGET_S = 900
TRT_STARTUP_BUDGET_S = 1800


# SageMaker's stock Triton image (`docker/sagemaker/serve`): `--model-control-mode=explicit
# --load-model=$SAGEMAKER_TRITON_DEFAULT_MODEL_NAME` loads the ensemble and its steps, not the encoders the
# preprocess model calls through BLS, which would then load (CUDA start, warm-up, a whole TensorRT build for
# gpu_fp16) inside the first request, past SageMaker's 60 s invocation limit. The script appends
# SAGEMAKER_TRITON_ADDITIONAL_ARGS to the server's arguments: they name the callees, so everything loads
# before /ping answers. It also turns verbose logging on unless SAGEMAKER_TRITON_LOG_VERBOSE says otherwise.
STOCK_IMAGE_MARK = "sagemaker-tritonserver"
STOCK_PRELOAD = (VIDEO_ENCODER, AUDIO_ENCODER)


def is_stock_triton_image(image_uri: str) -> bool:
    """SageMaker's own Triton image (``…/sagemaker-tritonserver:<release>-py3``), not this project's."""
    return STOCK_IMAGE_MARK in image_uri.rsplit("/", 1)[-1]


def stock_image_environment() -> dict[str, str]:
    """What the stock image's `serve` needs from deploy: the BLS callees loaded at start, quiet logs."""
    return {
        "SAGEMAKER_TRITON_ADDITIONAL_ARGS": " ".join(f"--load-model={m}" for m in STOCK_PRELOAD),
        "SAGEMAKER_TRITON_LOG_VERBOSE": "false",
    }


def startup_budget_s(profile: str) -> int:
    """Seconds from container start to ready for ``profile`` (the supervisor's and SageMaker's limit)."""
    return TRT_STARTUP_BUDGET_S if profile == "gpu_fp16" else STARTUP_BUDGET_S


# Async: how many queued requests one instance pulls at once. Triton batches
# dynamically and preprocess decodes media on CPU; 4 keeps a g4dn.xlarge's
# 4 vCPUs busy without piling requests into Triton's queue.
DEFAULT_ASYNC_CONCURRENCY = 4
DEFAULT_WAIT_TIMEOUT_S = 1800
# Async endpoints take request bodies up to 1 GB from S3 and give the container up to
# InvocationTimeoutSeconds (default 900 s, at most 3600 s; an InvokeEndpointAsync
# parameter) per request, instead of real-time's 6 MiB and 60 s. The front end's own
# limits follow: the largest body the service can use (each input is refused past
# contract.MAX_INPUT_BYTES anyway, plus multipart framing) and a Triton deadline just
# under the invocation timeout, so the client gets our 504 rather than an expiry.
ASYNC_INVOCATION_TIMEOUT_S = 900
ASYNC_MAX_INVOCATION_TIMEOUT_S = 3600
ASYNC_MAX_BODY_BYTES = 2 * MAX_INPUT_BYTES + 1024 * 1024
# What one decoder carries in a 64 MiB /dev/shm with the CPU profile's 9 stubs and 4 decoders (the worst case).
SHM_64_INPUT_LIMIT = shm_input_limit(SHM_DEFAULT_DEV_SHM_BYTES, 9, 4)
ASYNC_DEADLINE_MARGIN_S = 5
# Instance families with NVIDIA GPUs are ml.g* and ml.p* (g4dn, g5, g6, g6e, p3, p4d, p5, ...);
# g4ad has AMD GPUs (no CUDA). inf*/trn* are Inferentia/Trainium accelerators, not GPUs.
_GPU_FAMILY = re.compile(r"^[gp]\d")
_NON_CUDA_FAMILIES = frozenset({"g4ad"})

_ROLE_ARN = re.compile(r"^arn:aws[a-z\-]*:iam::\d{12}:role/[\w+=,.@\-/]{1,512}$")
_ENDPOINT_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_INSTANCE_TYPE = re.compile(r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
_SNS_ARN = re.compile(r"^arn:aws[a-z\-]*:sns:[a-z0-9\-]+:\d{12}:[\w\-]{1,256}$")


class DeployError(RuntimeError):
    """A deployment step failed; the message says which and why."""


class ArgumentError(ValueError):
    """An argument is malformed; raised before any AWS call."""


@dataclass(frozen=True)
class Autoscaling:
    min_capacity: int
    max_capacity: int
    target: float  # invocations per instance per minute (real-time) or backlog per instance (async)


@dataclass
class DeployConfig:
    model_data: str  # local file or s3:// URI
    image_uri: str
    role_arn: str
    endpoint_name: str
    s3_prefix: str | None = None
    instance_type: str = "ml.g4dn.xlarge"
    instance_count: int = 1
    profile: str | None = None  # None: gpu on a GPU instance, cpu otherwise
    autoscaling: Autoscaling | None = None
    async_output: str | None = None
    async_max_concurrency: int = DEFAULT_ASYNC_CONCURRENCY
    async_invocation_timeout_s: int = ASYNC_INVOCATION_TIMEOUT_S
    environment: dict[str, str] = field(default_factory=dict)
    # Buckets a request's s3:// URIs may name (FUSION_EMOTION_S3_ALLOWED_BUCKETS); None = any bucket the
    # execution role can read. The CLI makes the caller choose one or the other explicitly.
    s3_allowed_buckets: tuple[str, ...] | None = None
    wait: bool = True
    wait_timeout_s: int = DEFAULT_WAIT_TIMEOUT_S
    # A CloudWatch dashboard and alarms for the endpoint (deploy/cloudwatch.py); alarm_topic: SNS topic ARN.
    dashboard: bool = False
    alarm_topic: str | None = None
    # SageMaker Data Capture of the responses only (probabilities and QA flags, never the media) to this S3 URI.
    capture_outputs: str | None = None
    capture_percent: int = 100


@dataclass
class DeployResult:
    endpoint_name: str
    model_name: str
    endpoint_config_name: str
    model_data_url: str
    status: str
    scaling_policies: list[str] = field(default_factory=list)
    updated: bool = False  # the endpoint existed and was switched to the new config
    retired: list[str] = field(default_factory=list)  # the previous config and model, deleted after the switch
    left: list[str] = field(default_factory=list)  # the previous config and model, still there (--no-wait)
    monitoring: list[str] = field(default_factory=list)  # the dashboard and alarms created (--dashboard)


@dataclass
class UndeployResult:
    deleted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def s3_argument(uri: str, what: str = "S3 URI") -> S3Uri:
    """``s3://bucket[/prefix]`` given as an argument -> S3Uri; a malformed one is an ArgumentError naming ``what``."""
    try:
        return parse_s3_uri(uri, what)
    except S3UriError as exc:
        raise ArgumentError(str(exc)) from None


def parse_autoscaling(spec: str, *, allow_zero_min: bool = False) -> Autoscaling:
    """``MIN:MAX:TARGET`` -> Autoscaling. Only async endpoints may scale to zero."""
    parts = (spec or "").split(":")
    if len(parts) != 3:
        raise ArgumentError(f"--autoscaling must be MIN:MAX:TARGET (e.g. 1:4:100), got {spec!r}")
    try:
        lo, hi, target = int(parts[0]), int(parts[1]), float(parts[2])
    except ValueError:
        raise ArgumentError(
            f"--autoscaling must be MIN:MAX:TARGET with integer MIN/MAX and numeric TARGET, got {spec!r}"
        ) from None
    floor = 0 if allow_zero_min else 1
    if lo < floor:
        hint = "" if allow_zero_min else " (only async endpoints, --async-output, can scale to 0)"
        raise ArgumentError(f"--autoscaling MIN must be >= {floor}{hint}, got {lo}")
    if hi < max(lo, 1):
        raise ArgumentError(f"--autoscaling MAX must be >= MIN and >= 1, got {lo}:{hi}")
    if not target > 0:
        raise ArgumentError(f"--autoscaling TARGET must be > 0, got {parts[2]}")
    return Autoscaling(lo, hi, target)


def validate_role_arn(arn: str) -> str:
    if not _ROLE_ARN.match(arn or ""):
        raise ArgumentError(f"--role-arn must be an IAM role ARN (arn:aws:iam::123456789012:role/Name), got {arn!r}")
    return arn


def validate_endpoint_name(name: str) -> str:
    if not _ENDPOINT_NAME.match(name or ""):
        raise ArgumentError(
            f"--endpoint-name must be 1-63 characters of letters, digits and hyphens, "
            f"starting and ending with a letter or digit, got {name!r}"
        )
    return name


def instance_has_gpu(instance_type: str) -> bool:
    """True for SageMaker instance types with an NVIDIA GPU (ml.g4dn.xlarge, ml.p4d.24xlarge, ...)."""
    parts = instance_type.split(".")
    family = parts[1] if len(parts) == 3 else ""
    return bool(_GPU_FAMILY.match(family)) and family not in _NON_CUDA_FAMILIES


def profile_needs_gpu(profile: str) -> bool:
    """Profiles named cpu* run on CPU only; every other profile (gpu, gpu_fp16) needs CUDA."""
    return not profile.startswith("cpu")


def effective_profile(cfg: DeployConfig) -> str:
    """The profile asked for, or the one that matches the instance type."""
    if cfg.profile is not None:
        return cfg.profile
    return "gpu" if instance_has_gpu(cfg.instance_type) else "cpu"


def validate_config(cfg: DeployConfig) -> None:
    """Check everything that can be checked offline, so a typo never leaves half a deployment."""
    validate_endpoint_name(cfg.endpoint_name)
    validate_model_args(cfg)
    if cfg.async_output is not None:
        s3_argument(cfg.async_output, "--async-output")
        if cfg.async_max_concurrency < 1:
            raise ArgumentError("--async-max-concurrency must be >= 1")
        if not ASYNC_DEADLINE_MARGIN_S < cfg.async_invocation_timeout_s <= ASYNC_MAX_INVOCATION_TIMEOUT_S:
            raise ArgumentError(
                f"--async-invocation-timeout must be {ASYNC_DEADLINE_MARGIN_S + 1}..{ASYNC_MAX_INVOCATION_TIMEOUT_S} "
                f"seconds (SageMaker's InvocationTimeoutSeconds range), got {cfg.async_invocation_timeout_s}"
            )
    if cfg.autoscaling is not None:
        if cfg.autoscaling.min_capacity == 0 and cfg.async_output is None:
            raise ArgumentError("--autoscaling MIN 0 needs an async endpoint (--async-output)")
        if not cfg.wait:
            raise ArgumentError(
                "--autoscaling needs the endpoint InService before the scalable target can be registered; drop --no-wait"
            )
    if not cfg.wait_timeout_s > 0:
        raise ArgumentError("--wait-timeout must be > 0")
    for bucket in cfg.s3_allowed_buckets or ():
        s3_argument(f"s3://{bucket}", "--s3-allow-bucket")
    validate_monitoring(cfg)


def validate_monitoring(cfg: DeployConfig) -> None:
    """--capture-outputs, --capture-percent, --alarm-topic."""
    if cfg.capture_outputs is not None:
        s3_argument(cfg.capture_outputs, "--capture-outputs")
        if cfg.async_output is not None:
            raise ArgumentError(
                "--capture-outputs is for real-time endpoints: an async endpoint writes every response to "
                "--async-output already, where Model Monitor can read it"
            )
    if not 1 <= cfg.capture_percent <= 100:
        raise ArgumentError(f"--capture-percent must be 1..100, got {cfg.capture_percent}")
    if cfg.alarm_topic is not None:
        if not cfg.dashboard:
            raise ArgumentError("--alarm-topic names where the --dashboard alarms notify: add --dashboard")
        if not _SNS_ARN.match(cfg.alarm_topic):
            raise ArgumentError(f"--alarm-topic must be an SNS topic ARN, got {cfg.alarm_topic!r}")


def validate_model_args(cfg: DeployConfig) -> None:
    """What creating the model and its instances needs (shared by deploy and transform jobs)."""
    validate_role_arn(cfg.role_arn)
    if not cfg.image_uri or any(c.isspace() for c in cfg.image_uri):
        raise ArgumentError(f"--image-uri must be a container image URI, got {cfg.image_uri!r}")
    if not _INSTANCE_TYPE.match(cfg.instance_type):
        raise ArgumentError(
            f"--instance-type must be a SageMaker instance type like ml.g4dn.xlarge, got {cfg.instance_type!r}"
        )
    if cfg.instance_count < 1:
        raise ArgumentError(f"--instance-count must be >= 1, got {cfg.instance_count}")
    if cfg.profile is not None and cfg.profile not in PROFILES:
        raise ArgumentError(f"--profile must be one of {', '.join(PROFILES)}, got {cfg.profile!r}")
    profile = effective_profile(cfg)
    if profile_needs_gpu(profile) and not instance_has_gpu(cfg.instance_type):
        cpu_profiles = ", ".join(p for p in PROFILES if not profile_needs_gpu(p))
        raise ArgumentError(
            f"--profile {profile} needs an NVIDIA GPU, and {cfg.instance_type} has none: use --profile cpu "
            f"(CPU profiles: {cpu_profiles}) or a GPU instance type (ml.g4dn, ml.g5, ml.g6, ml.g6e, ml.p3, ml.p4d, ml.p5)"
        )
    if cfg.model_data.startswith("s3://"):
        s3_argument(cfg.model_data, "--model-data")
    else:
        if not Path(cfg.model_data).is_file():
            raise ArgumentError(f"--model-data {cfg.model_data!r} is neither an s3:// URI nor an existing file")
        if cfg.s3_prefix is None:
            raise ArgumentError("--s3-prefix is required to upload a local --model-data file")
    if cfg.s3_prefix is not None:
        s3_argument(cfg.s3_prefix, "--s3-prefix")


def container_environment(cfg: DeployConfig) -> dict[str, str]:
    """The container's variables: model name, profile, async-sized front-end limits; --env wins."""
    profile = effective_profile(cfg)
    env = {ENV_DEFAULT_MODEL: ENSEMBLE, ENV_PROFILE: profile, ENV_STARTUP_TIMEOUT_S: str(startup_budget_s(profile))}
    if cfg.async_output is not None:
        env[ENV_MAX_BODY_BYTES] = str(ASYNC_MAX_BODY_BYTES)
        env[ENV_REQUEST_TIMEOUT_S] = str(cfg.async_invocation_timeout_s - ASYNC_DEADLINE_MARGIN_S)
        # Inputs reach Triton's Python backend through /dev/shm (docs/reliability.md "Shared memory").
        log.warning(
            "async endpoint: inputs over ~%.1f MiB need a /dev/shm larger than %d MiB (about %d MiB for "
            "%d MiB inputs); on a smaller one they are refused (S3: 413) or answered 503",
            SHM_64_INPUT_LIMIT / 2**20,
            SHM_DEFAULT_DEV_SHM_BYTES // 2**20,
            shm_needed_bytes(9, 4, MAX_INPUT_BYTES) // 2**20,
            MAX_INPUT_BYTES // 2**20,
        )
    if cfg.s3_allowed_buckets:
        env[ENV_S3_ALLOWED_BUCKETS] = ",".join(cfg.s3_allowed_buckets)
    if is_stock_triton_image(cfg.image_uri):
        env.update(stock_image_environment())
    else:  # our front end: EMF records on stdout, which SageMaker ships to CloudWatch Logs
        env[ENV_EMF_INTERVAL_S] = str(SAGEMAKER_EMF_INTERVAL_S)
        env[ENV_ENDPOINT_NAME] = cfg.endpoint_name
    env.update(cfg.environment)
    return env
