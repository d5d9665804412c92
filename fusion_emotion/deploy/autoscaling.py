"""Application Auto Scaling of a SageMaker endpoint's variant: the scalable target, its policies, their removal."""

from __future__ import annotations

import logging
from typing import Any

from fusion_emotion.deploy.config import DeployConfig, UndeployResult

log = logging.getLogger(__name__)

VARIANT_NAME = "AllTraffic"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
SERVICE_NAMESPACE = "sagemaker"
# Cooldowns: scale out fast, scale in slowly (an instance takes ~5-10 min to start).
REALTIME_SCALE_OUT_COOLDOWN = 60
REALTIME_SCALE_IN_COOLDOWN = 300
ASYNC_SCALE_OUT_COOLDOWN = 300
ASYNC_SCALE_IN_COOLDOWN = 600


def scaling_resource_id(endpoint_name: str) -> str:
    return f"endpoint/{endpoint_name}/variant/{VARIANT_NAME}"


def backlog_alarm_name(endpoint_name: str) -> str:
    return f"{endpoint_name}-has-backlog-without-capacity"


def _target_tracking(aas: Any, cfg: DeployConfig, common: dict[str, str]) -> str:
    """The target-tracking policy: invocations per instance (real-time) or the queue per instance (async)."""
    assert cfg.autoscaling is not None
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
            "TargetValue": cfg.autoscaling.target,
            **metric,
            "ScaleOutCooldown": scale_out,
            "ScaleInCooldown": scale_in,
        },
        **common,
    )
    return name


def _scale_from_zero(session: Any, aas: Any, endpoint_name: str, common: dict[str, str]) -> str:
    """At zero instances ApproximateBacklogSizePerInstance is undefined, so target tracking alone would wait
    for the backlog to exceed the target; the documented fix is a step policy driven by an alarm on
    HasBacklogWithoutCapacity."""
    step_name = f"{endpoint_name}-scale-from-zero"
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
    session.client("cloudwatch").put_metric_alarm(
        AlarmName=backlog_alarm_name(endpoint_name),
        MetricName="HasBacklogWithoutCapacity",
        Namespace="AWS/SageMaker",
        Statistic="Average",
        EvaluationPeriods=2,
        DatapointsToAlarm=2,
        Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
        TreatMissingData="missing",
        Dimensions=[{"Name": "EndpointName", "Value": endpoint_name}],
        Period=60,
        AlarmActions=[response["PolicyARN"]],
    )
    return step_name


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
    policies = [_target_tracking(aas, cfg, common)]
    if cfg.async_output is not None and scaling.min_capacity == 0:
        policies.append(_scale_from_zero(session, aas, cfg.endpoint_name, common))
    log.info(
        "autoscaling %s: %d..%d instances, policies %s",
        resource_id,
        scaling.min_capacity,
        scaling.max_capacity,
        policies,
    )
    return policies


def has_scalable_target(session: Any, endpoint_name: str) -> bool:
    aas = session.client("application-autoscaling")
    return bool(
        aas.describe_scalable_targets(
            ServiceNamespace=SERVICE_NAMESPACE,
            ResourceIds=[scaling_resource_id(endpoint_name)],
            ScalableDimension=SCALABLE_DIMENSION,
        ).get("ScalableTargets")
    )


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
