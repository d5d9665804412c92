"""CloudWatch Embedded Metric Format: the front end's measurements as log lines SageMaker turns into metrics.

Nothing scrapes a SageMaker container, but its stdout goes to CloudWatch Logs, and a log line that is an
EMF record (a JSON object whose ``_aws`` member names its metrics) becomes CloudWatch metrics with no agent.
Records are aggregated per interval (``emf_interval_s``; off by default, on in the SageMaker image), never
one per request; every dimension value comes from a fixed set (see ``fusion_emotion.frontend.metrics``).
Decodes by decoder and fallback reason come from the Python-backend families on Triton's metrics port.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.frontend.metrics import FrontendMetrics, Tally

log = logging.getLogger(__name__)

NAMESPACE = C.EMF_NAMESPACE
# EMF allows at most 100 values in one metric's array.
MAX_VALUES = 100
# Metric name -> CloudWatch unit, for every metric the records below may carry.
METRICS: dict[str, str] = {
    "Requests": "Count",
    "Errors4xx": "Count",
    "Errors5xx": "Count",
    "AdmissionRefusals": "Count",
    "Results": "Count",
    "LowConfidence": "Count",
    "StreamUpdates": "Count",
    "StreamLateUpdates": "Count",
    "StreamCloses": "Count",
    "InFlight": "Count",
    "StreamsOpen": "Count",
    "Latency": "Milliseconds",
    "Decodes": "Count",
}
# Error kinds counted as 5xx (the rest of the non-"ok" kinds are the client's: 4xx).
_SERVER_KINDS = frozenset({"internal", "deadline", "overloaded", "upstream", "other"})
DECODES_FAMILY = "fusion_emotion_decodes"  # server/metrics.py DECODES, as the text parser names the family


def latency_values(samples: list[float]) -> list[float]:
    """At most 100 values with the sample's distribution: evenly spaced quantiles when there are more."""
    if len(samples) <= MAX_VALUES:
        return [round(v, 3) for v in samples]
    return [round(float(v), 3) for v in np.quantile(np.asarray(samples), np.linspace(0.0, 1.0, MAX_VALUES))]


def record(endpoint: str, dimensions: dict[str, str], values: dict[str, Any], timestamp_ms: int) -> dict[str, Any]:
    """One EMF record: the dimension set ``EndpointName`` + ``dimensions`` and the metrics in ``values``."""
    return {
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [
                {
                    "Namespace": NAMESPACE,
                    "Dimensions": [["EndpointName", *dimensions]],
                    "Metrics": [{"Name": name, "Unit": METRICS[name]} for name in values],
                }
            ],
        },
        "EndpointName": endpoint,
        **dimensions,
        **values,
    }


def tally_records(endpoint: str, tally: Tally, gauges: dict[str, float], now_ms: int) -> list[dict[str, Any]]:
    """One interval's records: a summary (always, so a quiet endpoint still shows zeros), then by
    error kind, emotion, modality and close code."""
    total = sum(tally.requests.values())
    errors = {"Errors4xx": 0, "Errors5xx": 0}
    by_kind = tally.requests
    for kind, n in by_kind.items():
        if kind != "ok":
            errors["Errors5xx" if kind in _SERVER_KINDS else "Errors4xx"] += n
    summary: dict[str, Any] = {
        "Requests": total, **errors, "AdmissionRefusals": tally.refusals, "Results": tally.results,
        "LowConfidence": tally.low_confidence, "StreamUpdates": tally.stream_updates,
        "StreamLateUpdates": tally.stream_late, "StreamCloses": sum(tally.stream_closes.values()), **gauges,
    }  # fmt: skip
    if tally.latencies_ms:
        summary["Latency"] = latency_values(tally.latencies_ms)
    out = [record(endpoint, {}, summary, now_ms)]
    out += [record(endpoint, {"Kind": k}, {"Requests": n}, now_ms) for k, n in sorted(by_kind.items())]
    out += [record(endpoint, {"Emotion": e}, {"Results": n}, now_ms) for e, n in sorted(tally.emotions.items())]
    out += [record(endpoint, {"Modality": m}, {"Results": n}, now_ms) for m, n in sorted(tally.modalities.items())]
    out += [record(endpoint, {"CloseCode": c}, {"StreamCloses": n}, now_ms) for c, n in tally.stream_closes.items()]
    return out


DecodeKey = tuple[str, str, str]  # model, decoder, fallback


def decode_counts(text: str) -> dict[DecodeKey, float]:
    """Decodes by (model, decoder, fallback) from Triton's metrics page (the Python-backend family)."""
    from prometheus_client.parser import text_string_to_metric_families  # deferred: the deploy CLI imports this module

    counts: dict[DecodeKey, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != DECODES_FAMILY:
            continue
        for s in family.samples:
            if s.name.endswith("_total"):
                key = (s.labels.get("model", ""), s.labels.get("decoder", ""), s.labels.get("fallback", ""))
                counts[key] = counts.get(key, 0.0) + s.value
    return counts


def decode_deltas(now: dict[DecodeKey, float], before: dict[DecodeKey, float]) -> dict[DecodeKey, float]:
    """Counts since the last scrape; a counter that went down means Triton restarted: count from zero."""
    out = {}
    for key, value in now.items():
        delta = value - before.get(key, 0.0)
        out[key] = value if delta < 0 else delta
    return {k: v for k, v in out.items() if v > 0}


def _stdout_line(line: str) -> None:
    """SageMaker ships the container's stdout to CloudWatch Logs, where EMF lines become metrics."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class EmfReporter:
    """Every ``interval_s``: take the front end's tally, scrape Triton's decodes, write the records."""

    def __init__(
        self,
        metrics: FrontendMetrics,
        endpoint: str,
        interval_s: float,
        triton_metrics_url: str,
        write: Callable[[str], None] = _stdout_line,
    ) -> None:
        self.metrics, self.endpoint, self.interval_s = metrics, endpoint, interval_s
        self.triton_metrics_url = triton_metrics_url
        self.write = write
        self._decodes: dict[DecodeKey, float] | None = None  # the last scrape; None before the first

    async def run(self) -> None:
        """Flush every interval until cancelled, then once more (the last interval is not lost at shutdown)."""
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                await self.flush()
        except asyncio.CancelledError:
            await asyncio.shield(self.flush())
            raise

    async def flush(self) -> None:
        now_ms = int(time.time() * 1000)
        lines = tally_records(self.endpoint, self.metrics.take_tally(), self.metrics.current(), now_ms)
        lines += await self._decode_records(now_ms)
        await asyncio.to_thread(self._write_all, [json.dumps(r, separators=(",", ":")) for r in lines])

    def _write_all(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    async def _decode_records(self, now_ms: int) -> list[dict[str, Any]]:
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                text = (await client.get(self.triton_metrics_url)).text
        except httpx.HTTPError as exc:
            log.info("emf: Triton metrics not read (%s)", type(exc).__name__)
            return []
        counts = decode_counts(text)
        before = self._decodes or {}  # none yet: Triton starts with the front end, all it counted is new
        self._decodes = counts
        return [
            record(self.endpoint, {"Model": m, "Decoder": d, "Fallback": f}, {"Decodes": n}, now_ms)
            for (m, d, f), n in sorted(decode_deltas(counts, before).items())
        ]
