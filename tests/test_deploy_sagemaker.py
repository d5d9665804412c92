"""deploy/undeploy against a real local AWS API (moto server): endpoints, async, autoscaling, updates, rollback."""

# ruff: noqa: F811 - test arguments named like the fixture imported from test_deploy

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_deploy import BUCKET, IMAGE, ROLE, _config, repository  # noqa: F401 - repository: a fixture

from fusion_emotion.deploy import autoscaling, supervisor
from fusion_emotion.deploy import config as dc
from fusion_emotion.deploy import sagemaker as sm
from fusion_emotion.deploy.package import build_model_tarball

# --- against a local AWS API (moto server) ------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint() -> str:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    """A boto3 Session that talks to moto via the standard AWS_ENDPOINT_URL variable."""
    import boto3

    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    session = boto3.session.Session()
    s3 = session.client("s3")
    if BUCKET not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket=BUCKET)
    return session


def _models_named(sagemaker: Any, part: str) -> list[str]:
    """Model names containing ``part``: moto ignores ListModels' NameContains and other tests share its server."""
    return [m["ModelName"] for m in sagemaker.list_models()["Models"] if part in m["ModelName"]]


def _configs_named(sagemaker: Any, part: str) -> list[str]:
    """Endpoint config names containing ``part`` (filtered here for the same reason)."""
    configs = sagemaker.list_endpoint_configs()["EndpointConfigs"]
    return [c["EndpointConfigName"] for c in configs if part in c["EndpointConfigName"]]


def _describe_scaling(session, endpoint: str) -> tuple[list[dict], list[dict]]:
    aas = session.client("application-autoscaling")
    rid = autoscaling.scaling_resource_id(endpoint)
    targets = aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])["ScalableTargets"]
    policies = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"]
    return targets, [p for p in policies if p["ResourceId"] == rid]


def test_deploy_realtime_with_autoscaling_and_undeploy(aws, repository: Path, tmp_path: Path, capsys) -> None:
    from fusion_emotion.cli import main

    tarball = tmp_path / "model.tar.gz"
    build_model_tarball(repository, tarball)
    endpoint = "fusion-rt"
    argv = [
        "deploy", "--model-data", str(tarball), "--s3-prefix", f"s3://{BUCKET}/deploys",
        "--s3-allow-bucket", BUCKET, "--s3-allow-bucket", "media-2",
        "--image-uri", IMAGE, "--role-arn", ROLE, "--endpoint-name", endpoint,
        "--instance-type", "ml.g4dn.2xlarge", "--instance-count", "2", "--autoscaling", "1:4:120",
        "--env", "EXTRA=1",
    ]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "InService" in out
    # the command to try a live stream, for this endpoint and region (docs/deploy/streaming.md)
    assert f"fusion-emotion stream speech.wav --sagemaker-endpoint {endpoint} --region {aws.region_name}" in out
    assert "sagemaker:InvokeEndpointWithBidirectionalStream" in out

    sagemaker, s3 = aws.client("sagemaker"), aws.client("s3")
    head = s3.head_object(Bucket=BUCKET, Key=f"deploys/{endpoint}/model.tar.gz")
    assert head["ContentLength"] == tarball.stat().st_size

    ep = sagemaker.describe_endpoint(EndpointName=endpoint)
    assert ep["EndpointStatus"] == "InService"
    config = sagemaker.describe_endpoint_config(EndpointConfigName=ep["EndpointConfigName"])
    (variant,) = config["ProductionVariants"]
    assert variant["VariantName"] == "AllTraffic"
    assert variant["InstanceType"] == "ml.g4dn.2xlarge" and variant["InitialInstanceCount"] == 2
    assert not config.get("AsyncInferenceConfig")
    model = sagemaker.describe_model(ModelName=variant["ModelName"])
    container = model["PrimaryContainer"]
    assert container["Image"] == IMAGE
    assert container["ModelDataUrl"] == f"s3://{BUCKET}/deploys/{endpoint}/model.tar.gz"
    assert container["Environment"] == {
        "SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": "fusion_emotion",
        "FUSION_EMOTION_PROFILE": "gpu",
        "FUSION_EMOTION_STARTUP_TIMEOUT": "900",
        "FUSION_EMOTION_S3_ALLOWED_BUCKETS": f"{BUCKET},media-2",
        "FUSION_EMOTION_EMF_INTERVAL_S": "60",
        "FUSION_EMOTION_ENDPOINT_NAME": endpoint,
        "EXTRA": "1",
    }
    assert model["ExecutionRoleArn"] == ROLE

    targets, policies = _describe_scaling(aws, endpoint)
    (target,) = targets
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 4)
    (policy,) = policies
    assert policy["PolicyType"] == "TargetTrackingScaling"
    tt = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tt["TargetValue"] == 120
    assert tt["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"
    assert tt["ScaleInCooldown"] >= tt["ScaleOutCooldown"] > 0

    assert main(["undeploy", "--endpoint-name", endpoint]) == 0
    out = capsys.readouterr().out
    assert f"deleted endpoint {endpoint}" in out and "deleted model" in out and "deleted scaling policy" in out
    assert _describe_scaling(aws, endpoint) == ([], [])
    assert not [e for e in sagemaker.list_endpoints()["Endpoints"] if e["EndpointName"] == endpoint]
    assert not _configs_named(sagemaker, endpoint)
    assert not _models_named(sagemaker, endpoint)

    # Second run: everything is already gone, still a clean exit.
    assert main(["undeploy", "--endpoint-name", endpoint]) == 0
    assert f"already gone: endpoint {endpoint}" in capsys.readouterr().out


def test_deploy_async_scale_to_zero(aws) -> None:
    endpoint = "fusion-async"
    data = f"s3://{BUCKET}/prebuilt/model.tar.gz"
    aws.client("s3").put_object(Bucket=BUCKET, Key="prebuilt/model.tar.gz", Body=b"tar")
    cfg = dc.DeployConfig(
        model_data=data,
        image_uri=IMAGE,
        role_arn=ROLE,
        endpoint_name=endpoint,
        instance_type="ml.m5.xlarge",
        profile="cpu",
        async_output=f"s3://{BUCKET}/async-out",
        autoscaling=dc.Autoscaling(0, 3, 5),
    )
    result = sm.deploy(cfg, session=aws)
    assert result.status == "InService" and result.model_data_url == data

    sagemaker = aws.client("sagemaker")
    config = sagemaker.describe_endpoint_config(EndpointConfigName=result.endpoint_config_name)
    assert config["AsyncInferenceConfig"] == {
        "OutputConfig": {"S3OutputPath": f"s3://{BUCKET}/async-out"},
        "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 4},
    }
    env = sagemaker.describe_model(ModelName=result.model_name)["PrimaryContainer"]["Environment"]
    assert env["FUSION_EMOTION_PROFILE"] == "cpu"
    assert env["FUSION_EMOTION_MAX_BODY_BYTES"] == str(dc.ASYNC_MAX_BODY_BYTES)
    assert env["FUSION_EMOTION_REQUEST_TIMEOUT_S"] == str(dc.ASYNC_INVOCATION_TIMEOUT_S - dc.ASYNC_DEADLINE_MARGIN_S)

    targets, policies = _describe_scaling(aws, endpoint)
    assert (targets[0]["MinCapacity"], targets[0]["MaxCapacity"]) == (0, 3)
    by_type = {p["PolicyType"]: p for p in policies}
    assert set(by_type) == {"TargetTrackingScaling", "StepScaling"}
    metric = by_type["TargetTrackingScaling"]["TargetTrackingScalingPolicyConfiguration"][
        "CustomizedMetricSpecification"
    ]
    assert metric["MetricName"] == "ApproximateBacklogSizePerInstance"
    assert metric["Namespace"] == "AWS/SageMaker"
    assert metric["Dimensions"] == [{"Name": "EndpointName", "Value": endpoint}]
    step = by_type["StepScaling"]["StepScalingPolicyConfiguration"]
    assert step["StepAdjustments"] == [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}]
    cloudwatch = aws.client("cloudwatch")
    (alarm,) = cloudwatch.describe_alarms(AlarmNames=[autoscaling.backlog_alarm_name(endpoint)])["MetricAlarms"]
    assert alarm["MetricName"] == "HasBacklogWithoutCapacity"
    assert alarm["AlarmActions"] == [by_type["StepScaling"]["PolicyARN"]]

    report = sm.undeploy(endpoint, session=aws)
    assert f"alarm {autoscaling.backlog_alarm_name(endpoint)}" in report.deleted
    assert not cloudwatch.describe_alarms(AlarmNames=[autoscaling.backlog_alarm_name(endpoint)])["MetricAlarms"]
    assert _describe_scaling(aws, endpoint) == ([], [])
    # The model data is the user's: undeploy leaves S3 alone.
    aws.client("s3").head_object(Bucket=BUCKET, Key="prebuilt/model.tar.gz")


def test_undeploy_tolerates_partial_state(aws) -> None:
    """Endpoint config already deleted by hand: endpoint and model lookups degrade gracefully."""
    sagemaker = aws.client("sagemaker")
    endpoint = "fusion-partial"
    cfg = dc.DeployConfig(
        model_data=f"s3://{BUCKET}/prebuilt/model.tar.gz", image_uri=IMAGE, role_arn=ROLE, endpoint_name=endpoint
    )
    result = sm.deploy(cfg, session=aws)
    sagemaker.delete_endpoint_config(EndpointConfigName=result.endpoint_config_name)
    report = sm.undeploy(endpoint, session=aws)
    assert f"endpoint {endpoint}" in report.deleted
    assert f"endpoint config {result.endpoint_config_name}" in report.missing
    sagemaker.delete_model(ModelName=result.model_name)


def test_deploy_wait_failure_reports_reason(aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiter failure surfaces DescribeEndpoint's status and FailureReason."""
    from botocore.exceptions import WaiterError

    class FakeWaiter:
        def wait(self, **kwargs: object) -> None:
            raise WaiterError("EndpointInService", "Waiter encountered a terminal failure state", {})

    sagemaker = aws.client("sagemaker")
    endpoint = "fusion-fail"
    cfg = dc.DeployConfig(
        model_data=f"s3://{BUCKET}/prebuilt/model.tar.gz", image_uri=IMAGE, role_arn=ROLE, endpoint_name=endpoint
    )
    sm.deploy(dc.DeployConfig(**{**cfg.__dict__, "wait": False}), session=aws)
    monkeypatch.setattr(sagemaker, "get_waiter", lambda name: FakeWaiter())
    with pytest.raises(dc.DeployError, match=r"endpoint fusion-fail failed \(status InService\)"):
        sm.wait_in_service(sagemaker, endpoint, 60)
    sm.undeploy(endpoint, session=aws)


def test_deploy_rolls_back_when_the_api_rejects_a_step(aws) -> None:
    """CreateEndpointConfig fails (instance type not in the API enum): the model created before is removed."""
    sagemaker = aws.client("sagemaker")
    cfg = dc.DeployConfig(
        model_data=f"s3://{BUCKET}/prebuilt/model.tar.gz",
        image_uri=IMAGE,
        role_arn=ROLE,
        endpoint_name="fusion-rollback",
        instance_type="ml.notatype.xlarge",
    )
    with pytest.raises(dc.DeployError, match="CreateEndpointConfig failed"):
        sm.deploy(cfg, session=aws)
    assert not _models_named(sagemaker, "fusion-rollback")
    assert not [e for e in sagemaker.list_endpoints()["Endpoints"] if e["EndpointName"] == "fusion-rollback"]


@pytest.fixture()
def sagemaker_semantics(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make moto's SageMaker behave like SageMaker where deploy depends on it.

    moto 5 accepts CreateEndpoint for a name already in use (SageMaker refuses:
    "Cannot create already existing endpoint") and has no UpdateEndpoint at all.
    The server runs in this process, so its response class is patched: CreateEndpoint
    refuses a name in use, UpdateEndpoint switches an existing endpoint to an existing
    config (unknown endpoint or config: ValidationException, as SageMaker answers).
    """
    from moto.core.responses import ActionResult
    from moto.sagemaker.exceptions import ValidationError
    from moto.sagemaker.responses import SageMakerResponse

    original_create = SageMakerResponse.create_endpoint

    def create_endpoint(self):  # type: ignore[no-untyped-def]
        name = self._get_param("EndpointName")
        if name in self.sagemaker_backend.endpoints:
            raise ValidationError(message=f'Cannot create already existing endpoint "{name}".')
        return original_create(self)

    def update_endpoint(self):  # type: ignore[no-untyped-def]
        backend = self.sagemaker_backend
        name = self._get_param("EndpointName")
        backend.describe_endpoint(name)
        config = backend.describe_endpoint_config(self._get_param("EndpointConfigName"))
        endpoint = backend.endpoints[name]
        endpoint.endpoint_config_name = config["EndpointConfigName"]
        endpoint.production_variants = endpoint._process_production_variants(config["ProductionVariants"])
        return ActionResult({"EndpointArn": endpoint.arn})

    monkeypatch.setattr(SageMakerResponse, "create_endpoint", create_endpoint)
    monkeypatch.setattr(SageMakerResponse, "update_endpoint", update_endpoint, raising=False)


def _record_calls(session) -> list[str]:
    """Names of the SageMaker API operations this session's clients call, in order."""
    calls: list[str] = []
    session.events.register("before-call.sagemaker", lambda model, **_: calls.append(model.name))
    return calls


def test_moto_is_patched_to_refuse_a_second_create_endpoint(aws, sagemaker_semantics) -> None:
    """The guard the update test relies on: CreateEndpoint on a live name fails, as on SageMaker."""
    from botocore.exceptions import ClientError

    cfg = dc.DeployConfig(
        model_data=f"s3://{BUCKET}/prebuilt/model.tar.gz", image_uri=IMAGE, role_arn=ROLE, endpoint_name="fusion-dup"
    )
    result = sm.deploy(cfg, session=aws)
    sagemaker = aws.client("sagemaker")
    with pytest.raises(ClientError, match="Cannot create already existing endpoint"):
        sagemaker.create_endpoint(EndpointName="fusion-dup", EndpointConfigName=result.endpoint_config_name)
    sm.undeploy("fusion-dup", session=aws)


def test_deploy_to_an_existing_endpoint_updates_it(aws, sagemaker_semantics) -> None:
    """Second deploy: UpdateEndpoint (never CreateEndpoint), autoscaling re-applied, old config and model retired."""
    endpoint = "fusion-update"
    data = f"s3://{BUCKET}/prebuilt/model.tar.gz"
    aws.client("s3").put_object(Bucket=BUCKET, Key="prebuilt/model.tar.gz", Body=b"tar")
    calls = _record_calls(aws)
    first = sm.deploy(
        dc.DeployConfig(
            data, IMAGE, ROLE, endpoint, instance_type="ml.g4dn.xlarge", autoscaling=dc.Autoscaling(1, 2, 100)
        ),
        session=aws,
    )
    assert not first.updated and "CreateEndpoint" in calls and "UpdateEndpoint" not in calls
    calls.clear()

    second = sm.deploy(
        dc.DeployConfig(
            data, IMAGE, ROLE, endpoint, instance_type="ml.g4dn.2xlarge", autoscaling=dc.Autoscaling(1, 3, 50)
        ),
        session=aws,
    )
    assert second.updated and second.status == "InService"
    assert "UpdateEndpoint" in calls and "CreateEndpoint" not in calls, calls
    sagemaker = aws.client("sagemaker")
    ep = sagemaker.describe_endpoint(EndpointName=endpoint)
    assert ep["EndpointConfigName"] == second.endpoint_config_name != first.endpoint_config_name
    (variant,) = sagemaker.describe_endpoint_config(EndpointConfigName=ep["EndpointConfigName"])["ProductionVariants"]
    assert variant["InstanceType"] == "ml.g4dn.2xlarge" and variant["ModelName"] == second.model_name
    # The previous deployment's pieces are gone; only the live ones remain.
    assert sorted(second.retired) == sorted(
        [f"endpoint config {first.endpoint_config_name}", f"model {first.model_name}"]
    )
    assert _configs_named(sagemaker, endpoint) == [second.endpoint_config_name]
    assert _models_named(sagemaker, endpoint) == [second.model_name]
    targets, policies = _describe_scaling(aws, endpoint)
    assert (targets[0]["MinCapacity"], targets[0]["MaxCapacity"]) == (1, 3)
    assert [p["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] for p in policies] == [50]

    report = sm.undeploy(endpoint, session=aws)
    assert f"model {second.model_name}" in report.deleted
    assert not _models_named(sagemaker, endpoint)


def test_one_startup_budget_for_sagemaker_and_the_container() -> None:
    """What deploy tells SageMaker to wait for /ping and what the container's supervisor waits for Triton
    come from one budget per profile: gpu_fp16 (TensorRT engines built at first load) gets 1800 s in both;
    before, SageMaker waited 30 minutes while the container gave up after its default 15."""
    for profile, instance, budget in (("gpu_fp16", "ml.g4dn.xlarge", 1800), ("gpu", "ml.g4dn.xlarge", 900),
                                      ("cpu", "ml.c6i.xlarge", 900)):  # fmt: skip
        cfg = dc.DeployConfig("s3://b/m", IMAGE, ROLE, "ep", instance_type=instance, profile=profile)
        (variant,) = sm.endpoint_config_request(cfg, "model", "config")["ProductionVariants"]
        assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == budget == dc.startup_budget_s(profile)
        assert 60 <= budget <= 3600  # SageMaker's allowed range
        env = dc.container_environment(cfg)
        assert env["FUSION_EMOTION_STARTUP_TIMEOUT"] == str(budget)
        assert supervisor.config_from_env(env).startup_timeout_s == budget  # as the container reads it
        # and a container started without that variable (the image run by hand) uses the same budget
        bare = {k: v for k, v in env.items() if k != "FUSION_EMOTION_STARTUP_TIMEOUT"}
        assert supervisor.config_from_env(bare).startup_timeout_s == budget
