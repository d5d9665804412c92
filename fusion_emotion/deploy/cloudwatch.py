"""``deploy --dashboard``: a CloudWatch dashboard and alarms for one endpoint, and their removal at undeploy.

Two sources: SageMaker's own endpoint metrics (``AWS/SageMaker``: Invocations, Invocation5XXErrors,
ModelLatency) and the front end's EMF records (namespace ``FusionEmotion``, fusion_emotion.frontend.emf),
which the container writes to stdout every minute and CloudWatch Logs turns into metrics.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from botocore.exceptions import ClientError

from fusion_emotion.contract import EMF_NAMESPACE as NAMESPACE
from fusion_emotion.contract import PREPROCESS, TIMELINE_MODEL
from fusion_emotion.deploy.autoscaling import VARIANT_NAME

log = logging.getLogger(__name__)

SAGEMAKER_NAMESPACE = "AWS/SageMaker"
PERIOD_S = 60
# Alarm thresholds (docs/observability/index.md says how to change them after deploy).
MAX_5XX_RATE = 0.05  # share of invocations answered 5xx, over 5 minutes
MAX_P95_LATENCY_US = 10_000_000  # ModelLatency is in microseconds: 10 s for the p95 over 5 minutes
MAX_LOW_CONFIDENCE_SHARE = 0.3  # share of results with overall_confidence < 0.5, over 15 minutes
# Fallback reasons that mean NVDEC/DALI itself failed (the others are the input's: container, codec, ...).
NVDEC_FAILURES = ("dali_error", "dali_unavailable", "dali_busy")
DECODING_MODELS = (PREPROCESS, TIMELINE_MODEL)


def dashboard_name(endpoint: str) -> str:
    return f"fusion-emotion-{endpoint}"


def alarm_names(endpoint: str) -> list[str]:
    return [f"{endpoint}-{suffix}" for suffix in ("5xx-rate", "p95-latency", "low-confidence", "nvdec-fallbacks")]


def _sm(metric: str, endpoint: str) -> list[str]:
    return [SAGEMAKER_NAMESPACE, metric, "EndpointName", endpoint, "VariantName", VARIANT_NAME]


def _ours(metric: str, endpoint: str) -> list[str]:
    return [NAMESPACE, metric, "EndpointName", endpoint]


def _search(endpoint: str, dimensions: str, metric: str, label: str) -> dict[str, Any]:
    query = f"SEARCH('{{{NAMESPACE},EndpointName,{dimensions}}} MetricName=\"{metric}\" EndpointName=\"{endpoint}\"', 'Sum', {PERIOD_S})"
    return {"expression": query, "label": label, "id": label.lower().replace(" ", "_")}


def _widget(title: str, metrics: list[Any], *, stat: str = "Sum", x: int = 0, y: int = 0) -> dict[str, Any]:
    return {
        "type": "metric",
        "x": x,
        "y": y,
        "width": 12,
        "height": 6,
        "properties": {"title": title, "metrics": metrics, "stat": stat, "period": PERIOD_S, "view": "timeSeries"},
    }


def dashboard_body(endpoint: str, region: str) -> dict[str, Any]:
    """Seven widgets: traffic and errors, latency, errors by kind, what the model says, decodes, streams."""
    widgets = [
        _widget(
            "Invocations and errors",
            [_sm("Invocations", endpoint), _sm("Invocation4XXErrors", endpoint), _sm("Invocation5XXErrors", endpoint)],
        ),  # fmt: skip
        _widget(
            "Model latency (p50, p95, microseconds)",
            [[*_sm("ModelLatency", endpoint), {"stat": "p50"}], [*_sm("ModelLatency", endpoint), {"stat": "p95"}]],
            x=12,
        ),  # fmt: skip
        _widget("Front-end requests by error kind", [[_search(endpoint, "Kind", "Requests", "Requests by kind")]], y=6),
        _widget(
            "Low-confidence share",
            [
                [{"expression": "IF(r > 0, low / r, 0)", "label": "low share", "id": "share"}],
                [*_ours("LowConfidence", endpoint), {"id": "low", "visible": False}],
                [*_ours("Results", endpoint), {"id": "r", "visible": False}],
            ],
            x=12,
            y=6,
        ),  # fmt: skip
        _widget("Dominant emotion", [[_search(endpoint, "Emotion", "Results", "Results by emotion")]], y=12),
        _widget(
            "Decodes by decoder and fallback",
            [[_search(endpoint, "Model,Decoder,Fallback", "Decodes", "Decodes")]],
            x=12,
            y=12,
        ),  # fmt: skip
        _widget(
            "Live streams",
            [
                [*_ours("StreamsOpen", endpoint), {"stat": "Maximum"}],
                _ours("StreamUpdates", endpoint),
                _ours("StreamLateUpdates", endpoint),
            ],
            y=18,
        ),  # fmt: skip
    ]
    for w in widgets:
        w["properties"]["region"] = region
    return {"widgets": widgets}


def _stat(mid: str, namespace: str, metric: str, dims: dict[str, str], stat: str = "Sum") -> dict[str, Any]:
    return {
        "Id": mid,
        "ReturnData": False,
        "MetricStat": {
            "Metric": {
                "Namespace": namespace,
                "MetricName": metric,
                "Dimensions": [{"Name": k, "Value": v} for k, v in dims.items()],
            },
            "Period": 300,
            "Stat": stat,
        },
    }


def _math_alarm(name: str, expression: str, metrics: list[dict[str, Any]], threshold: float, periods: int = 1):
    return {
        "AlarmName": name,
        "ComparisonOperator": "GreaterThanThreshold",
        "EvaluationPeriods": periods,
        "Threshold": threshold,
        "TreatMissingData": "notBreaching",
        "Metrics": [*metrics, {"Id": "e", "Expression": expression, "ReturnData": True}],
    }


def alarm_requests(endpoint: str) -> list[dict[str, Any]]:
    """PutMetricAlarm requests, in :func:`alarm_names` order."""
    variant = {"EndpointName": endpoint, "VariantName": VARIANT_NAME}
    ours = {"EndpointName": endpoint}
    rate, p95, low, nvdec = alarm_names(endpoint)
    fallbacks = [
        _stat(f"f{i}", NAMESPACE, "Decodes", {**ours, "Model": model, "Decoder": "pyav", "Fallback": reason})
        for i, (model, reason) in enumerate((m, r) for m in DECODING_MODELS for r in NVDEC_FAILURES)
    ]
    return [
        _math_alarm(
            rate,
            "IF(n > 0, err / n, 0)",
            [
                _stat("n", SAGEMAKER_NAMESPACE, "Invocations", variant),
                _stat("err", SAGEMAKER_NAMESPACE, "Invocation5XXErrors", variant),
            ],
            MAX_5XX_RATE,
        ),  # fmt: skip
        {
            "AlarmName": p95,
            "Namespace": SAGEMAKER_NAMESPACE,
            "MetricName": "ModelLatency",
            "Dimensions": [{"Name": k, "Value": v} for k, v in variant.items()],
            "ExtendedStatistic": "p95",
            "Period": 300,
            "EvaluationPeriods": 1,
            "Threshold": MAX_P95_LATENCY_US,
            "ComparisonOperator": "GreaterThanThreshold",
            "TreatMissingData": "notBreaching",
        },
        _math_alarm(
            low,
            "IF(r > 0, low / r, 0)",
            [_stat("low", NAMESPACE, "LowConfidence", ours), _stat("r", NAMESPACE, "Results", ours)],
            MAX_LOW_CONFIDENCE_SHARE,
            periods=3,
        ),  # fmt: skip
        _math_alarm(nvdec, " + ".join(f"FILL({m['Id']}, 0)" for m in fallbacks), fallbacks, 0),
    ]


def create_dashboard(session: Any, endpoint: str, alarm_topic: str | None = None) -> list[str]:
    """The dashboard and the four alarms (notifying ``alarm_topic``, an SNS topic ARN, when given);
    returns what was created (for the deploy printout)."""
    cloudwatch = session.client("cloudwatch")
    name = dashboard_name(endpoint)
    cloudwatch.put_dashboard(
        DashboardName=name, DashboardBody=json.dumps(dashboard_body(endpoint, session.region_name))
    )
    created = [f"dashboard {name}"]
    for request in alarm_requests(endpoint):
        description = "fusion-emotion: docs/observability/index.md, 'Alarms'"
        actions = {"AlarmActions": [alarm_topic], "OKActions": [alarm_topic]} if alarm_topic else {}
        cloudwatch.put_metric_alarm(AlarmDescription=description, **actions, **request)
        created.append(f"alarm {request['AlarmName']}")
    log.info("created %s", ", ".join(created))
    return created


def delete_dashboard(session: Any, endpoint: str) -> list[str]:
    """Remove what :func:`create_dashboard` made; returns what existed and was deleted."""
    cloudwatch = session.client("cloudwatch")
    deleted: list[str] = []
    names = alarm_names(endpoint)
    existing = {a["AlarmName"] for a in cloudwatch.describe_alarms(AlarmNames=names).get("MetricAlarms", [])}
    if existing:
        cloudwatch.delete_alarms(AlarmNames=sorted(existing))
        deleted += [f"alarm {n}" for n in names if n in existing]
    try:
        cloudwatch.delete_dashboards(DashboardNames=[dashboard_name(endpoint)])
        deleted.append(f"dashboard {dashboard_name(endpoint)}")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("ResourceNotFound", "DashboardNotFoundError"):
            raise
    return deleted
