"""The models' custom Triton metrics (server/metrics.py) against a stand-in of python_backend's MetricFamily."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fusion_emotion.core.rows import Row
from fusion_emotion.server.metrics import DECODES, STAGE_BUCKETS, STAGE_SECONDS, ModelMetrics


class _Metric:
    def __init__(self, labels: dict[str, str], buckets: list[float] | None) -> None:
        self.labels, self.buckets, self.value, self.observed = labels, buckets, 0.0, []

    def increment(self, n: float) -> None:
        self.value += n

    def observe(self, v: float) -> None:
        self.observed.append(v)


class _Family:
    COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
    made: list[Any] = []

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.kind, self.metrics = name, kind, []
        _Family.made.append(self)

    def Metric(self, labels: dict[str, str], buckets: list[float] | None = None) -> _Metric:  # noqa: N802
        assert all(isinstance(v, str) for v in labels.values())
        metric = _Metric(labels, buckets)
        self.metrics.append(metric)
        return metric


class _Pb:
    MetricFamily = _Family


@pytest.fixture
def metrics() -> ModelMetrics:
    _Family.made = []
    return ModelMetrics("preprocess", pb=_Pb())


def _row(decoder: str, fallback: str | None, video: bool = True) -> Row:
    return Row(np.zeros(1) if video else None, None, np.zeros(4, np.float32), decoder, fallback)


def test_decodes_counted_by_decoder_and_fallback_with_fixed_labels(metrics: ModelMetrics) -> None:
    metrics.rows_decoded([_row("dali_cpu", None), _row("pyav", "container"), _row("pyav", "container")])
    metrics.rows_decoded([_row("none", None, video=False)])  # audio only: no video decoded
    (decodes,) = [f for f in _Family.made if f.name == DECODES]
    assert decodes.kind == _Family.COUNTER
    got = {(m.labels["model"], m.labels["decoder"], m.labels["fallback"]): m.value for m in decodes.metrics}
    assert got == {("preprocess", "dali_cpu", "none"): 1, ("preprocess", "pyav", "container"): 2}


def test_stage_histograms(metrics: ModelMetrics) -> None:
    metrics.observe("decode", 0.3)
    with metrics.timed("qa"):
        pass
    (stages,) = [f for f in _Family.made if f.name == STAGE_SECONDS]
    assert stages.kind == _Family.HISTOGRAM
    by_stage = {m.labels["stage"]: m for m in stages.metrics}
    assert set(by_stage) == {"decode", "qa", "timeline"}
    assert by_stage["decode"].observed == [0.3] and len(by_stage["qa"].observed) == 1
    assert by_stage["decode"].buckets == list(STAGE_BUCKETS)
    with pytest.raises(KeyError):
        metrics.observe("a file name", 1.0)  # stages are a fixed set: no label from a request
