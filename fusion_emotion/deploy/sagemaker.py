"""Create and delete the SageMaker endpoint that serves the fusion_emotion ensemble.

Every client comes from one ``boto3.session.Session`` so the standard credential
chain, region resolution and ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_<SERVICE>``
overrides apply (the tests point them at a local moto server).

Resource names: model and endpoint config are ``<endpoint>-<UTC timestamp>`` so a
redeploy never collides with the resources still used by a live endpoint;
undeploy finds them through DescribeEndpoint / DescribeEndpointConfig.

A deploy to an endpoint that exists already is an update: a new model and
endpoint config, then UpdateEndpoint (SageMaker's blue/green switch: the old
fleet serves until the new one is InService; a failed update rolls back to it).
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from fusion_emotion import aws
from fusion_emotion.contract import ENSEMBLE, MAX_INPUT_BYTES, PROFILES
from fusion_emotion.s3uri import S3Uri, S3UriError, parse_s3_uri
from fusion_emotion.server.shm import SHM_DEFAULT_DEV_SHM_BYTES, shm_input_limit, shm_needed_bytes

log = logging.getLogger(__name__)

VARIANT_NAME = "AllTraffic"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
SERVICE_NAMESPACE = "sagemaker"
# Environment the container reads (docker/serve and the stock SageMaker Triton image).
ENV_DEFAULT_MODEL = "SAGEMAKER_TRITON_DEFAULT_MODEL_NAME"
ENV_PROFILE = "FUSION_EMOTION_PROFILE"
# Front-end settings (fusion_emotion.frontend.settings) that other deployment forms change.
ENV_MAX_BODY_BYTES = "FUSION_EMOTION_MAX_BODY_BYTES"
ENV_REQUEST_TIMEOUT_S = "FUSION_EMOTION_REQUEST_TIMEOUT_S"
ENV_DEFAULT_OPTIONS = "FUSION_EMOTION_DEFAULT_OPTIONS"
ENV_S3_ALLOWED_BUCKETS = "FUSION_EMOTION_S3_ALLOWED_BUCKETS"
# Async: how many queued requests one instance pulls at once. Triton batches
# dynamically and preprocess decodes media on CPU; 4 keeps a g4dn.xlarge's
# 4 vCPUs busy without piling requests into Triton's queue.
DEFAULT_ASYNC_CONCURRENCY = 4
# Cooldowns: scale out fast, scale in slowly (an instance takes ~5-10 min to start).
REALTIME_SCALE_OUT_COOLDOWN = 60
REALTIME_SCALE_IN_COOLDOWN = 300
ASYNC_SCALE_OUT_COOLDOWN = 300
ASYNC_SCALE_IN_COOLDOWN = 600
DEFAULT_WAIT_TIMEOUT_S = 1800
WAITER_DELAY_S = 30
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
ENV_MAX_BODY_BYTES = "FUSION_EMOTION_MAX_BODY_BYTES"
ENV_REQUEST_TIMEOUT_S = "FUSION_EMOTION_REQUEST_TIMEOUT_S"
# Instance families with NVIDIA GPUs are ml.g* and ml.p* (g4dn, g5, g6, g6e, p3, p4d, p5, ...);
# g4ad has AMD GPUs (no CUDA). inf*/trn* are Inferentia/Trainium accelerators, not GPUs.
_GPU_FAMILY = re.compile(r"^[gp]\d")
_NON_CUDA_FAMILIES = frozenset({"g4ad"})

_ROLE_ARN = re.compile(r"^arn:aws[a-z\-]*:iam::\d{12}:role/[\w+=,.@\-/]{1,512}$")
_ENDPOINT_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_INSTANCE_TYPE = re.compile(r"^ml\.[a-z0-9]+\.[a-z0-9]+$")


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


@dataclass
class UndeployResult:
    deleted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


# --- validation -------------------------------------------------------------------


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


# --- AWS plumbing ------------------------------------------------------------------


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _is_not_found(exc: Exception) -> bool:
    """SageMaker reports missing resources as ValidationException 'Could not find ...'."""
    code = _error_code(exc)
    message = str(getattr(exc, "response", {}).get("Error", {}).get("Message", ""))
    return code in {"ResourceNotFound", "ResourceNotFoundException", "ObjectNotFoundException", "NoSuchKey"} or (
        code in {"ValidationException", "ValidationError"}
        and ("Could not find" in message or "not found" in message.lower())
    )


def resource_names(endpoint_name: str, now: float | None = None) -> tuple[str, str]:
    """(model name, endpoint config name), unique per deployment (to the millisecond) and within 63 chars."""
    ms = round((time.time() if now is None else now) * 1000)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(ms // 1000)) + f"{ms % 1000:03d}"
    base = f"{endpoint_name[: 63 - len(stamp) - 1].rstrip('-')}-{stamp}"
    return base, base


def scaling_resource_id(endpoint_name: str) -> str:
    return f"endpoint/{endpoint_name}/variant/{VARIANT_NAME}"


def backlog_alarm_name(endpoint_name: str) -> str:
    return f"{endpoint_name}-has-backlog-without-capacity"


def upload_model_data(session: Any, path: str, prefix: S3Uri, endpoint_name: str) -> str:
    """Upload a local tarball to <prefix>/<endpoint>/model.tar.gz and return its URI."""
    dest = prefix.join(endpoint_name, "model.tar.gz")
    size = os.path.getsize(path)
    log.info("uploading %s (%d bytes) to %s", path, size, dest)
    session.client("s3").upload_file(path, dest.bucket, dest.key)
    return str(dest)


def container_environment(cfg: DeployConfig) -> dict[str, str]:
    """The container's variables: model name, profile, async-sized front-end limits; --env wins."""
    env = {ENV_DEFAULT_MODEL: ENSEMBLE, ENV_PROFILE: effective_profile(cfg)}
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
    env.update(cfg.environment)
    return env


def resolve_model_data(session: Any, cfg: DeployConfig) -> str:
    """The model tarball's S3 URI, uploading a local file to ``<s3-prefix>/<name>/model.tar.gz`` first."""
    if cfg.model_data.startswith("s3://"):
        return str(s3_argument(cfg.model_data, "--model-data"))
    assert cfg.s3_prefix is not None
    return upload_model_data(session, cfg.model_data, s3_argument(cfg.s3_prefix), cfg.endpoint_name)


def create_model(sagemaker: Any, cfg: DeployConfig, model_name: str, model_data_url: str) -> None:
    """CreateModel for our container (image, tarball, environment), as every deployment form needs it."""
    log.info("creating model %s (image %s, data %s)", model_name, cfg.image_uri, model_data_url)
    sagemaker.create_model(
        ModelName=model_name,
        ExecutionRoleArn=cfg.role_arn,
        PrimaryContainer={
            "Image": cfg.image_uri,
            "ModelDataUrl": model_data_url,
            "Environment": container_environment(cfg),
        },
    )


# gpu_fp16's first load builds TensorRT engines (estimate: minutes for HuBERT; not measured, no GPU run yet).
TRT_STARTUP_TIMEOUT_S = 1800


def endpoint_config_request(cfg: DeployConfig, model_name: str, config_name: str) -> dict[str, Any]:
    """The CreateEndpointConfig request: one variant, plus AsyncInferenceConfig for async endpoints."""
    request: dict[str, Any] = {
        "EndpointConfigName": config_name,
        "ProductionVariants": [
            {
                "VariantName": VARIANT_NAME,
                "ModelName": model_name,
                "InstanceType": cfg.instance_type,
                "InitialInstanceCount": cfg.instance_count,
                "InitialVariantWeight": 1.0,
            }
        ],
    }
    if effective_profile(cfg) == "gpu_fp16":
        # TensorRT engines are built while the encoders load (model_warmup), before /ping answers 200:
        # give the container time for that on a fresh instance (README "TensorRT engines").
        request["ProductionVariants"][0]["ContainerStartupHealthCheckTimeoutInSeconds"] = TRT_STARTUP_TIMEOUT_S
    if cfg.async_output is not None:
        request["AsyncInferenceConfig"] = {
            "OutputConfig": {"S3OutputPath": str(s3_argument(cfg.async_output))},
            "ClientConfig": {"MaxConcurrentInvocationsPerInstance": cfg.async_max_concurrency},
        }
    return request


def wait_in_service(sagemaker: Any, endpoint_name: str, timeout_s: int) -> str:
    """Bounded wait with the boto3 waiter; on failure report DescribeEndpoint's FailureReason."""
    attempts = max(1, -(-timeout_s // WAITER_DELAY_S))
    delay = min(WAITER_DELAY_S, timeout_s)
    log.info("waiting up to %ss for endpoint %s to be InService", timeout_s, endpoint_name)
    try:
        sagemaker.get_waiter("endpoint_in_service").wait(
            EndpointName=endpoint_name, WaiterConfig={"Delay": delay, "MaxAttempts": attempts}
        )
    except WaiterError as exc:
        try:
            desc = sagemaker.describe_endpoint(EndpointName=endpoint_name)
            status = desc.get("EndpointStatus", "unknown")
            reason = desc.get("FailureReason") or "no FailureReason given"
        except Exception as describe_exc:  # report the original failure either way
            status, reason = "unknown", f"DescribeEndpoint failed: {describe_exc}"
        if "Max attempts exceeded" in str(exc):
            raise DeployError(
                f"endpoint {endpoint_name} not InService after {timeout_s}s (status {status}): {reason}"
            ) from exc
        raise DeployError(f"endpoint {endpoint_name} failed (status {status}): {reason}") from exc
    return "InService"


def configure_autoscaling(session: Any, cfg: DeployConfig) -> list[str]:
    """Register the variant as a scalable target and attach the scaling policies; return policy names."""
    assert cfg.autoscaling is not None
    scaling = cfg.autoscaling
    aas = session.client("application-autoscaling")
    resource_id = scaling_resource_id(cfg.endpoint_name)
    aas.register_scalable_target(
        ServiceNamespace=SERVICE_NAMESPACE,
        ResourceId=resource_id,
        ScalableDimension=SCALABLE_DIMENSION,
        MinCapacity=scaling.min_capacity,
        MaxCapacity=scaling.max_capacity,
    )
    common = {"ServiceNamespace": SERVICE_NAMESPACE, "ResourceId": resource_id, "ScalableDimension": SCALABLE_DIMENSION}
    if cfg.async_output is None:
        suffix = "invocations-per-instance"
        scale_out, scale_in = REALTIME_SCALE_OUT_COOLDOWN, REALTIME_SCALE_IN_COOLDOWN
        metric: dict[str, Any] = {
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}
        }
    else:
        # Async: track the queue per instance (SageMaker's documented metric for async endpoints).
        suffix = "backlog-per-instance"
        scale_out, scale_in = ASYNC_SCALE_OUT_COOLDOWN, ASYNC_SCALE_IN_COOLDOWN
        metric = {
            "CustomizedMetricSpecification": {
                "MetricName": "ApproximateBacklogSizePerInstance",
                "Namespace": "AWS/SageMaker",
                "Dimensions": [{"Name": "EndpointName", "Value": cfg.endpoint_name}],
                "Statistic": "Average",
            }
        }
    name = f"{cfg.endpoint_name}-{suffix}"
    aas.put_scaling_policy(
        PolicyName=name,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": scaling.target,
            **metric,
            "ScaleOutCooldown": scale_out,
            "ScaleInCooldown": scale_in,
        },
        **common,
    )
    policies = [name]
    if cfg.async_output is not None and scaling.min_capacity == 0:
        # At zero instances ApproximateBacklogSizePerInstance is undefined, so target tracking
        # alone would wait for the backlog to exceed the target; the documented fix is a step
        # policy driven by an alarm on HasBacklogWithoutCapacity.
        step_name = f"{cfg.endpoint_name}-scale-from-zero"
        response = aas.put_scaling_policy(
            PolicyName=step_name,
            PolicyType="StepScaling",
            StepScalingPolicyConfiguration={
                "AdjustmentType": "ChangeInCapacity",
                "MetricAggregationType": "Average",
                "Cooldown": ASYNC_SCALE_OUT_COOLDOWN,
                "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}],
            },
            **common,
        )
        policies.append(step_name)
        session.client("cloudwatch").put_metric_alarm(
            AlarmName=backlog_alarm_name(cfg.endpoint_name),
            MetricName="HasBacklogWithoutCapacity",
            Namespace="AWS/SageMaker",
            Statistic="Average",
            EvaluationPeriods=2,
            DatapointsToAlarm=2,
            Threshold=1,
            ComparisonOperator="GreaterThanOrEqualToThreshold",
            TreatMissingData="missing",
            Dimensions=[{"Name": "EndpointName", "Value": cfg.endpoint_name}],
            Period=60,
            AlarmActions=[response["PolicyARN"]],
        )
    log.info(
        "autoscaling %s: %d..%d instances, policies %s",
        resource_id,
        scaling.min_capacity,
        scaling.max_capacity,
        policies,
    )
    return policies


def current_deployment(sagemaker: Any, endpoint_name: str) -> tuple[str, list[str]] | None:
    """(endpoint config name, its model names) of an existing endpoint; None when there is no such endpoint."""
    try:
        config_name = sagemaker.describe_endpoint(EndpointName=endpoint_name)["EndpointConfigName"]
    except ClientError as exc:
        if _is_not_found(exc):
            return None
        raise DeployError(f"DescribeEndpoint {endpoint_name} failed: {exc}") from exc
    try:
        desc = sagemaker.describe_endpoint_config(EndpointConfigName=config_name)
    except ClientError as exc:
        if _is_not_found(exc):
            return config_name, []
        raise DeployError(f"DescribeEndpointConfig {config_name} failed: {exc}") from exc
    return config_name, [v["ModelName"] for v in desc.get("ProductionVariants", []) if v.get("ModelName")]


def _has_scalable_target(session: Any, endpoint_name: str) -> bool:
    aas = session.client("application-autoscaling")
    return bool(
        aas.describe_scalable_targets(
            ServiceNamespace=SERVICE_NAMESPACE,
            ResourceIds=[scaling_resource_id(endpoint_name)],
            ScalableDimension=SCALABLE_DIMENSION,
        ).get("ScalableTargets")
    )


def deploy(cfg: DeployConfig, session: Any | None = None) -> DeployResult:
    """Upload (if local), create model and endpoint config, then create the endpoint or update the existing one.

    An existing endpoint is switched with UpdateEndpoint (blue/green): SageMaker
    refuses CreateEndpoint for a name in use. Application Auto Scaling refuses an
    update that changes an autoscaled variant's instance type, so a registered
    scalable target is removed first and ``cfg.autoscaling`` applied again once the
    endpoint is InService. After a successful switch the previous endpoint config
    and model are deleted (with ``wait``; otherwise they are reported as left).
    """
    validate_config(cfg)
    session = session or aws.session()
    sagemaker = session.client("sagemaker")
    profile = effective_profile(cfg)
    if not profile_needs_gpu(profile) and instance_has_gpu(cfg.instance_type):
        log.warning("profile %s on %s leaves its GPU unused", profile, cfg.instance_type)
    previous = current_deployment(sagemaker, cfg.endpoint_name)

    model_data_url = resolve_model_data(session, cfg)

    model_name, config_name = resource_names(cfg.endpoint_name)
    created: list[tuple[str, Any, dict[str, str]]] = []
    try:
        create_model(sagemaker, cfg, model_name, model_data_url)
        created.append((f"model {model_name}", sagemaker.delete_model, {"ModelName": model_name}))
        log.info("creating endpoint config %s (%s x %d)", config_name, cfg.instance_type, cfg.instance_count)
        sagemaker.create_endpoint_config(**endpoint_config_request(cfg, model_name, config_name))
        created.append(
            (f"endpoint config {config_name}", sagemaker.delete_endpoint_config, {"EndpointConfigName": config_name})
        )
        if previous is None:
            log.info("creating endpoint %s", cfg.endpoint_name)
            sagemaker.create_endpoint(EndpointName=cfg.endpoint_name, EndpointConfigName=config_name)
        else:
            if _has_scalable_target(session, cfg.endpoint_name):
                log.info("removing autoscaling of %s for the update", cfg.endpoint_name)
                remove_autoscaling(session, cfg.endpoint_name, UndeployResult())
            log.info("updating endpoint %s: %s -> %s", cfg.endpoint_name, previous[0], config_name)
            sagemaker.update_endpoint(EndpointName=cfg.endpoint_name, EndpointConfigName=config_name)
    except ClientError as exc:
        # Roll back what this run created so a retry starts clean (the endpoint did not change).
        _roll_back(created)
        raise DeployError(f"{exc.operation_name} failed: {exc}") from exc

    result = DeployResult(
        cfg.endpoint_name,
        model_name,
        config_name,
        model_data_url,
        status="Creating" if previous is None else "Updating",
        updated=previous is not None,
    )
    old = [] if previous is None else [(f"endpoint config {previous[0]}", previous[0], previous[1])]
    if not cfg.wait:
        result.left = [what for what, _, _ in old] + [f"model {m}" for _, _, models in old for m in models]
        return result
    result.status = wait_in_service(sagemaker, cfg.endpoint_name, cfg.wait_timeout_s)
    if previous is not None:
        # A failed update rolls back: the endpoint is InService again, on the old config.
        now = sagemaker.describe_endpoint(EndpointName=cfg.endpoint_name)
        if now.get("EndpointConfigName") != config_name:
            _roll_back(created)
            reason = now.get("FailureReason") or "no FailureReason given"
            raise DeployError(
                f"update of {cfg.endpoint_name} did not take effect (still on {now.get('EndpointConfigName')}): {reason}"
            )
        for what, old_config, old_models in old:
            if old_config != config_name:
                _delete_quietly(result, what, sagemaker.delete_endpoint_config, EndpointConfigName=old_config)
            for m in dict.fromkeys(old_models):
                if m != model_name:
                    _delete_quietly(result, f"model {m}", sagemaker.delete_model, ModelName=m)
    if cfg.autoscaling is not None:
        result.scaling_policies = configure_autoscaling(session, cfg)
    return result


def _roll_back(created: list[tuple[str, Any, dict[str, str]]]) -> None:
    for what, call, kwargs in reversed(created):
        try:
            call(**kwargs)
            log.info("rolled back %s", what)
        except ClientError as cleanup_exc:
            log.warning("could not roll back %s: %s", what, cleanup_exc)


def _delete_quietly(result: DeployResult, what: str, call: Any, **kwargs: Any) -> None:
    """Retire a previous deployment's piece; failure to delete it is reported, not fatal (the update worked)."""
    try:
        call(**kwargs)
        result.retired.append(what)
        log.info("deleted the previous %s", what)
    except ClientError as exc:
        if not _is_not_found(exc):
            log.warning("could not delete the previous %s: %s", what, exc)
            result.left.append(what)


def remove_autoscaling(session: Any, endpoint_name: str, result: UndeployResult) -> None:
    """Delete scaling policies, the scale-from-zero alarm and the scalable target, if any."""
    aas = session.client("application-autoscaling")
    resource_id = scaling_resource_id(endpoint_name)
    policies = aas.describe_scaling_policies(
        ServiceNamespace=SERVICE_NAMESPACE, ResourceId=resource_id, ScalableDimension=SCALABLE_DIMENSION
    ).get("ScalingPolicies", [])
    for policy in policies:
        if policy.get("ResourceId") != resource_id:
            continue
        aas.delete_scaling_policy(
            PolicyName=policy["PolicyName"],
            ServiceNamespace=SERVICE_NAMESPACE,
            ResourceId=resource_id,
            ScalableDimension=SCALABLE_DIMENSION,
        )
        result.deleted.append(f"scaling policy {policy['PolicyName']}")
    # Alarms of target-tracking policies go with the policy; ours (step policy) must be deleted.
    cloudwatch = session.client("cloudwatch")
    alarm = backlog_alarm_name(endpoint_name)
    if cloudwatch.describe_alarms(AlarmNames=[alarm]).get("MetricAlarms"):
        cloudwatch.delete_alarms(AlarmNames=[alarm])
        result.deleted.append(f"alarm {alarm}")
    targets = aas.describe_scalable_targets(
        ServiceNamespace=SERVICE_NAMESPACE, ResourceIds=[resource_id], ScalableDimension=SCALABLE_DIMENSION
    ).get("ScalableTargets", [])
    if targets:
        aas.deregister_scalable_target(
            ServiceNamespace=SERVICE_NAMESPACE, ResourceId=resource_id, ScalableDimension=SCALABLE_DIMENSION
        )
        result.deleted.append(f"scalable target {resource_id}")
    else:
        result.missing.append(f"scalable target {resource_id}")


def _delete(result: UndeployResult, what: str, call: Any, **kwargs: Any) -> None:
    try:
        call(**kwargs)
    except ClientError as exc:
        if not _is_not_found(exc):
            raise DeployError(f"deleting {what} failed: {exc}") from exc
        log.info("%s already gone", what)
        result.missing.append(what)
        return
    log.info("deleted %s", what)
    result.deleted.append(what)


def undeploy(endpoint_name: str, session: Any | None = None) -> UndeployResult:
    """Delete autoscaling, endpoint, endpoint config and models; pieces already gone are reported, not errors."""
    validate_endpoint_name(endpoint_name)
    session = session or aws.session()
    sagemaker = session.client("sagemaker")
    result = UndeployResult()

    config_name: str | None = None
    endpoint_exists = False
    try:
        config_name = sagemaker.describe_endpoint(EndpointName=endpoint_name)["EndpointConfigName"]
        endpoint_exists = True
    except ClientError as exc:
        if not _is_not_found(exc):
            raise DeployError(f"DescribeEndpoint {endpoint_name} failed: {exc}") from exc
        result.missing.append(f"endpoint {endpoint_name}")

    model_names: list[str] = []
    if config_name is not None:
        try:
            desc = sagemaker.describe_endpoint_config(EndpointConfigName=config_name)
            model_names = [v["ModelName"] for v in desc.get("ProductionVariants", []) if v.get("ModelName")]
        except ClientError as exc:
            if not _is_not_found(exc):
                raise DeployError(f"DescribeEndpointConfig {config_name} failed: {exc}") from exc
            result.missing.append(f"endpoint config {config_name}")
            config_name = None

    remove_autoscaling(session, endpoint_name, result)
    if endpoint_exists:
        _delete(result, f"endpoint {endpoint_name}", sagemaker.delete_endpoint, EndpointName=endpoint_name)
    if config_name is not None:
        _delete(
            result, f"endpoint config {config_name}", sagemaker.delete_endpoint_config, EndpointConfigName=config_name
        )
    for model in dict.fromkeys(model_names):
        _delete(result, f"model {model}", sagemaker.delete_model, ModelName=model)
    return result
