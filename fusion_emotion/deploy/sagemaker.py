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
import time
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from fusion_emotion import aws
from fusion_emotion.deploy import cloudwatch
from fusion_emotion.deploy.autoscaling import (
    VARIANT_NAME,
    configure_autoscaling,
    has_scalable_target,
    remove_autoscaling,
)
from fusion_emotion.deploy.config import (
    DeployConfig,
    DeployError,
    DeployResult,
    UndeployResult,
    container_environment,
    effective_profile,
    instance_has_gpu,
    profile_needs_gpu,
    s3_argument,
    startup_budget_s,
    validate_config,
    validate_endpoint_name,
)
from fusion_emotion.s3uri import S3Uri

log = logging.getLogger(__name__)

WAITER_DELAY_S = 30


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


def upload_model_data(session: Any, path: str, prefix: S3Uri, endpoint_name: str) -> str:
    """Upload a local tarball to <prefix>/<endpoint>/model.tar.gz and return its URI."""
    dest = prefix.join(endpoint_name, "model.tar.gz")
    size = os.path.getsize(path)
    log.info("uploading %s (%d bytes) to %s", path, size, dest)
    session.client("s3").upload_file(path, dest.bucket, dest.key)
    return str(dest)


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
    # The container's own startup budget (its supervisor waits as long): gpu_fp16 builds TensorRT engines
    # while the encoders load, before /ping answers 200.
    budget = startup_budget_s(effective_profile(cfg))
    request["ProductionVariants"][0]["ContainerStartupHealthCheckTimeoutInSeconds"] = budget
    if cfg.capture_outputs is not None:
        request["DataCaptureConfig"] = data_capture_config(cfg.capture_outputs, cfg.capture_percent)
    if cfg.async_output is not None:
        request["AsyncInferenceConfig"] = {
            "OutputConfig": {"S3OutputPath": str(s3_argument(cfg.async_output))},
            "ClientConfig": {"MaxConcurrentInvocationsPerInstance": cfg.async_max_concurrency},
        }
    return request


def data_capture_config(destination: str, percent: int) -> dict[str, Any]:
    """SageMaker Data Capture of responses only: the JSON of probabilities and QA flags, never the media."""
    return {
        "EnableCapture": True,
        "InitialSamplingPercentage": percent,
        "DestinationS3Uri": str(s3_argument(destination, "--capture-outputs")),
        "CaptureOptions": [{"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
    }


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
            if has_scalable_target(session, cfg.endpoint_name):
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
    if cfg.dashboard:  # needs no InService endpoint: its metrics appear once it serves
        result.monitoring = _create_dashboard(session, cfg)
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


def _create_dashboard(session: Any, cfg: DeployConfig) -> list[str]:
    try:
        return cloudwatch.create_dashboard(session, cfg.endpoint_name, cfg.alarm_topic)
    except ClientError as exc:  # the endpoint is being created; only its dashboard is missing
        raise DeployError(f"endpoint {cfg.endpoint_name} started, but {exc.operation_name} failed: {exc}") from exc


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
    try:
        result.deleted += cloudwatch.delete_dashboard(session, endpoint_name)
    except ClientError as exc:
        raise DeployError(f"deleting the dashboard and alarms of {endpoint_name} failed: {exc}") from exc
    if endpoint_exists:
        _delete(result, f"endpoint {endpoint_name}", sagemaker.delete_endpoint, EndpointName=endpoint_name)
    if config_name is not None:
        _delete(
            result, f"endpoint config {config_name}", sagemaker.delete_endpoint_config, EndpointConfigName=config_name
        )
    for model in dict.fromkeys(model_names):
        _delete(result, f"model {model}", sagemaker.delete_model, ModelName=model)
    return result
