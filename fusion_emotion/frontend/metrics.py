"""The front end's own metrics: requests, stages, admission, streams and what the model says.

Prometheus scrapes ``GET /metrics`` (PyPI ``prometheus-client``); on SageMaker, where nothing scrapes a
container, :mod:`fusion_emotion.frontend.emf` writes the same measurements to stdout as CloudWatch Embedded
Metric Format records, from the per-interval :class:`Tally` kept beside the Prometheus families.

Privacy: every label value comes from a fixed set below (routes, modes, statuses mapped to error kinds,
stages, QA flag names, emotions, modalities, close codes); nothing about a request is ever a label.
With ``PROMETHEUS_MULTIPROC_DIR`` set (several uvicorn workers), values live in that directory's files and
``/metrics`` merges every worker's.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.multiprocess import MultiProcessCollector

from fusion_emotion import contract as C
from fusion_emotion.errors import ErrorKind

PREFIX = "fusion_emotion_frontend"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Label sets (bounded cardinality): anything else is "other".
ROUTES = ("/invocations", "/predict", "/stream", "/invocations-bidirectional-stream", "/ping", "/metrics")
MODES = ("clip", "timeline", "stream", "none")
STAGES = ("body_read", "s3_fetch", "triton")
MODALITIES = ("video+audio", "video_only", "audio_only")
OTHER = "other"
# Error kind of an HTTP status: our structured kinds, then what routing and the server answer themselves.
KIND_OF_STATUS: dict[int, str] = {kind.http_status: kind.value for kind in ErrorKind}
KIND_OF_STATUS.update({403: "forbidden", 404: "not_found", 405: "bad_request", 415: "unsupported_type"})
KIND_OF_STATUS.update({413: ErrorKind.TOO_LARGE.value, 502: "upstream"})
# WebSocket close codes the stream route uses (RFC 6455 + ours); anything else is "other".
CLOSE_CODES = (1000, 1001, 1006, 1007, 1008, 1009, 1011, 1013)

# A result whose overall_confidence is below this counts as low confidence (the CloudWatch alarm's share).
LOW_CONFIDENCE = 0.5
# Seconds: a clip answers in about a second on CPU, a timeline of long media in tens.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
BODY_BUCKETS = tuple(float(2**k) for k in range(10, 23, 2)) + (6 * 2**20, 16 * 2**20, 100 * 2**20)
UNIT_BUCKETS = tuple(round(0.1 * k, 1) for k in range(1, 11))
# Latencies kept per EMF interval (a uniform reservoir sample): enough for a p95, bounded in memory.
LATENCY_SAMPLE = 1000


def route_label(path: str | None) -> str:
    return path if path in ROUTES else OTHER


def kind_of_status(status: int) -> str:
    if status < 400:
        return "ok"
    return KIND_OF_STATUS.get(status, OTHER)


def close_label(code: int) -> str:
    return str(code) if code in CLOSE_CODES else OTHER


def modality_of(qa_flags: Mapping[str, float | None]) -> str | None:
    """What the model saw, from which QA flags it could compute (None = that modality was absent)."""
    video = qa_flags.get("video_blur_level") is not None
    audio = qa_flags.get("audio_silence_ratio") is not None
    if video and audio:
        return "video+audio"
    return "video_only" if video else ("audio_only" if audio else None)


@dataclass
class Tally:
    """What happened since the last EMF flush, in plain numbers (one per interval, then reset)."""

    requests: Counter[str] = field(default_factory=Counter)  # inference requests by error kind
    latencies_ms: list[float] = field(default_factory=list)
    latency_seen: int = 0
    refusals: int = 0
    emotions: Counter[str] = field(default_factory=Counter)
    modalities: Counter[str] = field(default_factory=Counter)
    results: int = 0
    low_confidence: int = 0
    stream_updates: int = 0
    stream_late: int = 0
    stream_closes: Counter[str] = field(default_factory=Counter)

    def sample_latency(self, ms: float, rng: random.Random) -> None:
        """Reservoir sampling (algorithm R): a uniform sample of the interval's latencies."""
        self.latency_seen += 1
        if len(self.latencies_ms) < LATENCY_SAMPLE:
            self.latencies_ms.append(ms)
        elif (j := rng.randrange(self.latency_seen)) < LATENCY_SAMPLE:
            self.latencies_ms[j] = ms


class FrontendMetrics:
    """Every front-end family, in one registry per app (tests build several apps in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        r = self.registry
        self.requests = PromCounter(
            f"{PREFIX}_requests", "HTTP requests answered, by route, mode, status and error kind",
            ("route", "mode", "status", "kind"), registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            f"{PREFIX}_request_seconds", "Whole request, arrival to answer", ("route", "mode"),
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.stage_seconds = Histogram(
            f"{PREFIX}_stage_seconds", "Seconds in a stage of an inference request (body_read, s3_fetch, triton)",
            ("stage",), buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.body_bytes = Histogram(
            f"{PREFIX}_request_body_bytes", "Request body sizes", ("route",), buckets=BODY_BUCKETS, registry=r
        )
        self.in_flight = Gauge(
            f"{PREFIX}_in_flight", "Inference requests admitted and not yet answered", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.refusals = PromCounter(
            f"{PREFIX}_admission_refusals", "Inference requests refused with 503 + Retry-After (limit reached)",
            registry=r,
        )  # fmt: skip
        self._model_families(r)
        self._stream_families(r)
        self.tally = Tally()
        self._rng = random.Random(0)

    def _model_families(self, r: CollectorRegistry) -> None:
        self.qa_flag = Histogram(
            f"{PREFIX}_qa_flag", "QA flags of answered results (clips and timelines)", ("flag",),
            buckets=UNIT_BUCKETS, registry=r,
        )  # fmt: skip
        self.dominant = PromCounter(
            f"{PREFIX}_dominant_emotion", "Answered results by dominant emotion", ("emotion",), registry=r
        )
        self.top_probability = Histogram(
            f"{PREFIX}_top_probability", "The dominant emotion's probability", buckets=UNIT_BUCKETS, registry=r
        )
        self.modality = PromCounter(
            f"{PREFIX}_modality", "Answered results by what the model saw", ("modality",), registry=r
        )
        self.low_confidence = PromCounter(
            f"{PREFIX}_low_confidence", f"Answered results with overall_confidence < {LOW_CONFIDENCE}", registry=r
        )

    def _stream_families(self, r: CollectorRegistry) -> None:
        self.streams_open = Gauge(
            f"{PREFIX}_streams_open", "Live streams configured and not yet closed", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.stream_updates = PromCounter(f"{PREFIX}_stream_updates", "Stream updates sent", registry=r)
        self.stream_late = PromCounter(
            f"{PREFIX}_stream_late_updates", "Stream updates sent later than one hop after their window",
            registry=r,
        )  # fmt: skip
        self.stream_closes = PromCounter(
            f"{PREFIX}_stream_closes", "Streams closed, by WebSocket close code", ("code",), registry=r
        )

    # ------------------------------------------------------------------ requests
    def answered(self, path: str | None, mode: str, status: int, seconds: float, body_bytes: int) -> None:
        """One HTTP request answered (the access-log middleware calls this for every route)."""
        route, kind = route_label(path), kind_of_status(status)
        mode = mode if mode in MODES else "none"
        self.requests.labels(route, mode, str(status), kind).inc()
        self.request_seconds.labels(route, mode).observe(seconds)
        if body_bytes:
            self.body_bytes.labels(route).observe(body_bytes)
        if mode in ("clip", "timeline"):
            self.tally.requests[kind] += 1
            self.tally.sample_latency(seconds * 1000.0, self._rng)

    def refused(self) -> None:
        self.refusals.inc()
        self.tally.refusals += 1

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds.labels(name).observe(time.perf_counter() - start)

    def result(self, result: Mapping[str, Any]) -> None:
        """What the model said for one answered request (its JSON): flags, emotion, modality; a per-speaker
        timeline (``speakers=channels``) counts each speaker's result."""
        if "speakers" in result:
            for speaker_result in result["speakers"].values():
                self.result(speaker_result)
            return
        qa = result.get("qa_flags") or {}
        for name in C.QA_FLAG_NAMES:
            value = qa.get(name)
            if value is not None and math.isfinite(value):
                self.qa_flag.labels(name).observe(value)
        probs = np.array([float(result[label]) for label in C.LABELS])
        emotion = C.LABELS[int(np.argmax(probs))]
        self.dominant.labels(emotion).inc()
        self.top_probability.observe(float(probs.max()))
        self.tally.emotions[emotion] += 1
        self.tally.results += 1
        if (modality := modality_of(qa)) is not None:
            self.modality.labels(modality).inc()
            self.tally.modalities[modality] += 1
        confidence = qa.get("overall_confidence")
        if confidence is not None and confidence < LOW_CONFIDENCE:
            self.low_confidence.inc()
            self.tally.low_confidence += 1

    # ------------------------------------------------------------------ streams
    def stream_opened(self) -> None:
        self.streams_open.inc()

    def stream_update(self, late: bool) -> None:
        self.stream_updates.inc()
        self.tally.stream_updates += 1
        if late:
            self.stream_late.inc()
            self.tally.stream_late += 1

    def stream_closed(self, code: int, *, was_open: bool) -> None:
        if was_open:
            self.streams_open.dec()
        label = close_label(code)
        self.stream_closes.labels(label).inc()
        self.tally.stream_closes[label] += 1

    def stream_observer(self) -> StreamMetrics:
        """One stream session's hook (frontend.stream_session.StreamObserver)."""
        return StreamMetrics(self)

    # ------------------------------------------------------------------ export
    def exposition(self) -> bytes:
        """The text format for ``GET /metrics`` (every worker's values in multiprocess mode)."""
        if self.multiprocess:
            merged = CollectorRegistry()
            MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)

    def take_tally(self) -> Tally:
        """This interval's numbers, and a fresh tally for the next (EMF)."""
        tally, self.tally = self.tally, Tally()
        return tally

    def current(self) -> dict[str, float]:
        """Gauges now (EMF reports them as they stand at a flush)."""
        return {"InFlight": _gauge(self.in_flight), "StreamsOpen": _gauge(self.streams_open)}


def _gauge(gauge: Gauge) -> float:
    return float(sum(s.value for metric in gauge.collect() for s in metric.samples))


class StreamMetrics:
    """A stream session's life as metrics: open, each update (late past one hop), its close code."""

    def __init__(self, metrics: FrontendMetrics) -> None:
        self.metrics = metrics
        self.open = False

    def opened(self, config: Any) -> None:
        self.open = True
        self.metrics.stream_opened()

    def update_sent(self, latency_ms: float | None, hop_s: float) -> None:
        self.metrics.stream_update(late=latency_ms is not None and latency_ms > hop_s * 1000.0)

    def closed(self, code: int) -> None:
        self.metrics.stream_closed(code, was_open=self.open)
        self.open = False
