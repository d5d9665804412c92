"""What the Python-backend models see and do, as custom metrics on Triton's own metrics port.

python_backend's ``pb_utils.MetricFamily`` adds families to tritonserver's ``/metrics`` (port 8002 by
default), beside Triton's generic counters, so one scrape shows both. Every label value comes from a fixed
set (model names, decoder names, fallback reasons, stages): nothing about a request is ever a label.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from fusion_emotion.core.rows import Row

log = logging.getLogger(__name__)

DECODES = "fusion_emotion_decodes_total"
STAGE_SECONDS = "fusion_emotion_stage_seconds"
# Seconds, for decode (a whole request's container: demux, decode, resample) and QA (the flags of its rows).
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
STAGES = ("decode", "qa", "timeline")
NO_FALLBACK = "none"


def _stub_module() -> Any:
    import triton_python_backend_utils as pb_utils  # deferred: exists only inside the stub (tests inject ``pb``)

    return pb_utils


class ModelMetrics:
    """One model's families: decodes by decoder and fallback reason, and stage timings."""

    def __init__(self, model: str, *, pb: Any = None) -> None:
        self.pb = pb if pb is not None else _stub_module()
        self.model = model
        family = self.pb.MetricFamily
        self._decodes = family(
            name=DECODES,
            description="Videos decoded, by the decoder that served them and why a DALI profile left one to PyAV",
            kind=family.COUNTER,
        )
        self._stages = family(
            name=STAGE_SECONDS,
            description="Seconds a request spent in a stage of the model (decode, qa, timeline)",
            kind=family.HISTOGRAM,
        )
        self._counters: dict[tuple[str, str], Any] = {}
        self._histograms = {
            stage: self._stages.Metric(labels={"model": model, "stage": stage}, buckets=list(STAGE_BUCKETS))
            for stage in STAGES
        }

    def decoded(self, decoder: str, fallback: str | None = None) -> None:
        """One video served by ``decoder`` ("pyav", "dali_cpu", "dali_gpu"); ``fallback`` a fixed reason."""
        key = (decoder, fallback or NO_FALLBACK)
        metric = self._counters.get(key)
        if metric is None:
            labels = {"model": self.model, "decoder": key[0], "fallback": key[1]}
            metric = self._counters[key] = self._decodes.Metric(labels=labels)
        metric.increment(1)

    def rows_decoded(self, rows: Sequence[Row]) -> None:
        for row in rows:
            if row.frames is not None:
                self.decoded(row.decoder, row.fallback)

    def observe(self, stage: str, seconds: float) -> None:
        self._histograms[stage].observe(float(seconds))

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe(stage, time.perf_counter() - start)
