"""deploy --dashboard / --capture-outputs against moto: the exact CloudWatch and SageMaker calls, and undeploy.

moto accepts PutDashboard, metric-math PutMetricAlarm and DataCaptureConfig, so each call is recorded as sent
(botocore's before-parameter-build event) and read back where moto can describe it.
"""

# ruff: noqa: F811 - test arguments named like the fixtures imported below
from __future__ import annotations

import json
from typing import Any

import pytest
from test_deploy import BUCKET, IMAGE, ROLE, _config
from test_deploy_sagemaker import aws, moto_endpoint  # noqa: F401 - fixtures

from fusion_emotion import contract as C
from fusion_emotion.deploy import cloudwatch as cw
from fusion_emotion.deploy import config as dc
from fusion_emotion.frontend import emf

TOPIC = "arn:aws:sns:us-east-1:123456789012:oncall"


def record_calls(session: Any, service: str) -> list[tuple[str, dict[str, Any]]]:
    calls: list[tuple[str, dict[str, Any]]] = []

    def before(model: Any, params: dict[str, Any], **_: Any) -> None:
        calls.append((model.name, params))

    session.events.register(f"before-parameter-build.{service}", before)
    return calls


def deploy_argv(endpoint: str, *extra: str) -> list[str]:
    return [
        "deploy", "--model-data", f"s3://{BUCKET}/m/model.tar.gz", "--image-uri", IMAGE, "--role-arn", ROLE,
        "--endpoint-name", endpoint, "--instance-type", "ml.g4dn.xlarge", "--s3-any-bucket", *extra,
    ]  # fmt: skip


def test_dashboard_alarms_and_output_capture_through_the_cli(aws, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from fusion_emotion import aws as aws_module
    from fusion_emotion.cli import main

    aws.client("s3").put_object(Bucket=BUCKET, Key="m/model.tar.gz", Body=b"x")
    monkeypatch.setattr(aws_module, "session", lambda region=None: aws)
    cw_calls, sm_calls = record_calls(aws, "cloudwatch"), record_calls(aws, "sagemaker")
    endpoint = "fusion-watched"
    argv = deploy_argv(endpoint, "--dashboard", "--alarm-topic", TOPIC, "--capture-outputs", f"s3://{BUCKET}/capture",
                       "--capture-percent", "20")  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"dashboard {cw.dashboard_name(endpoint)}" in out and f"alarm {endpoint}-nvdec-fallbacks" in out

    (config_params,) = [p for op, p in sm_calls if op == "CreateEndpointConfig"]
    assert config_params["DataCaptureConfig"] == {
        "EnableCapture": True,
        "InitialSamplingPercentage": 20,
        "DestinationS3Uri": f"s3://{BUCKET}/capture",
        "CaptureOptions": [{"CaptureMode": "Output"}],  # outputs only: never the media
        "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
    }
    (model_params,) = [p for op, p in sm_calls if op == "CreateModel"]
    env = model_params["PrimaryContainer"]["Environment"]
    assert env["FUSION_EMOTION_EMF_INTERVAL_S"] == "60" and env["FUSION_EMOTION_ENDPOINT_NAME"] == endpoint

    ops = [op for op, _ in cw_calls]
    assert ops == ["PutDashboard"] + ["PutMetricAlarm"] * 4
    body = json.loads(cw_calls[0][1]["DashboardBody"])
    assert len(body["widgets"]) == 7 and all(w["properties"]["region"] == "us-east-1" for w in body["widgets"])
    alarms = {p["AlarmName"]: p for op, p in cw_calls if op == "PutMetricAlarm"}
    assert sorted(alarms) == sorted(cw.alarm_names(endpoint))
    assert all(p["AlarmActions"] == [TOPIC] for p in alarms.values())
    described = aws.client("cloudwatch").describe_alarms(AlarmNames=cw.alarm_names(endpoint))["MetricAlarms"]
    assert sorted(a["AlarmName"] for a in described) == sorted(cw.alarm_names(endpoint))
    assert aws.client("cloudwatch").get_dashboard(DashboardName=cw.dashboard_name(endpoint))["DashboardBody"]

    cw_calls.clear()
    assert main(["undeploy", "--endpoint-name", endpoint]) == 0
    out = capsys.readouterr().out
    assert f"deleted dashboard {cw.dashboard_name(endpoint)}" in out and f"deleted alarm {endpoint}-5xx-rate" in out
    ours = [op for op, params in cw_calls if "has-backlog" not in str(params)]  # that one is autoscaling's
    assert ours == ["DescribeAlarms", "DeleteAlarms", "DeleteDashboards"], cw_calls
    assert not aws.client("cloudwatch").describe_alarms(AlarmNames=cw.alarm_names(endpoint))["MetricAlarms"]


def test_alarms_name_metrics_the_service_emits() -> None:
    """Every metric an alarm or widget reads is one SageMaker publishes or one our EMF records carry."""
    sagemaker_metrics = {"Invocations", "Invocation4XXErrors", "Invocation5XXErrors", "ModelLatency"}
    for request in cw.alarm_requests("ep"):
        stats = [m["MetricStat"]["Metric"] for m in request.get("Metrics", []) if "MetricStat" in m]
        stats += (
            [{"Namespace": request["Namespace"], "MetricName": request["MetricName"]}]
            if "MetricName" in request
            else []
        )
        for metric in stats:
            known = sagemaker_metrics if metric["Namespace"] == cw.SAGEMAKER_NAMESPACE else set(emf.METRICS)
            assert metric["Namespace"] in (cw.SAGEMAKER_NAMESPACE, C.EMF_NAMESPACE) and metric["MetricName"] in known
    nvdec = cw.alarm_requests("ep")[3]
    fallbacks = {d["Value"] for m in nvdec["Metrics"] if "MetricStat" in m for d in m["MetricStat"]["Metric"]["Dimensions"] if d["Name"] == "Fallback"}  # fmt: skip
    from fusion_emotion.core.dali_video import FALLBACK_REASONS

    assert fallbacks == set(cw.NVDEC_FAILURES) <= set(FALLBACK_REASONS)
    assert len(nvdec["Metrics"]) <= 10  # CloudWatch's limit for one metric-math alarm


def test_monitoring_arguments_refused_before_any_call(tmp_path) -> None:
    with pytest.raises(dc.ArgumentError, match="--capture-outputs"):
        dc.validate_config(_config(tmp_path, capture_outputs="bucket/key"))
    with pytest.raises(dc.ArgumentError, match="async-output"):
        dc.validate_config(_config(tmp_path, capture_outputs=f"s3://{BUCKET}/c", async_output=f"s3://{BUCKET}/o"))
    with pytest.raises(dc.ArgumentError, match="--capture-percent"):
        dc.validate_config(_config(tmp_path, capture_outputs=f"s3://{BUCKET}/c", capture_percent=0))
    with pytest.raises(dc.ArgumentError, match="add --dashboard"):
        dc.validate_config(_config(tmp_path, alarm_topic=TOPIC))
    with pytest.raises(dc.ArgumentError, match="SNS topic ARN"):
        dc.validate_config(_config(tmp_path, dashboard=True, alarm_topic="oncall"))


def test_stock_image_gets_no_emf_environment(tmp_path) -> None:
    stock = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sagemaker-tritonserver:24.10-py3"
    env = dc.container_environment(_config(tmp_path, image_uri=stock))
    assert dc.ENV_EMF_INTERVAL_S not in env  # that image runs Triton's own HTTP, not our front end
    assert dc.container_environment(_config(tmp_path))[dc.ENV_EMF_INTERVAL_S] == "60"
