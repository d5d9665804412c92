"""Admission control: a fixed number of inference requests in flight, the rest refused at once.

Each admitted request holds its body (up to ``max_body_bytes``) and a few copies of it (multipart parts,
the gRPC message) until Triton answers, so the number in flight bounds the front end's memory. A request
over the limit is answered 503 with ``Retry-After`` before a byte of its body is read; the body is then
drained (read and dropped, never stored) so the client can read the answer instead of meeting a reset when
the connection is closed under its unsent upload.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class AdmissionMetrics(Protocol):
    """What the limit reports (FrontendMetrics): refusals, and the in-flight gauge."""

    in_flight: Any

    def refused(self) -> None: ...


# Seconds a refused client is told to wait; the service answers a request in about a second or two.
RETRY_AFTER_S = 1
# How long a refused request's body may take to drain before the connection is dropped.
DRAIN_TIMEOUT_S = 10.0


class AdmissionLimit:
    """Pure ASGI middleware: at most ``limit`` requests on ``paths`` at once; 503 + Retry-After beyond it."""

    def __init__(
        self,
        app: App,
        *,
        limit: int,
        paths: frozenset[str],
        max_drain_bytes: int,
        metrics: AdmissionMetrics | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.limit = limit
        self.paths = paths
        self.max_drain_bytes = max_drain_bytes
        self.in_flight = 0
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:  # single event loop: check-and-increment cannot race
            self.refused += 1
            if self.metrics is not None:
                self.metrics.refused()
            await self._refuse(scope, receive, send)
            return
        self.in_flight += 1
        gauge = self.metrics.in_flight if self.metrics is not None else None
        if gauge is not None:
            gauge.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            if gauge is not None:
                gauge.dec()

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = scope.get("state", {}).get("request_id", "")
        body = json.dumps(
            {"error": f"server busy: {self.limit} requests in flight; retry later", "request_id": request_id}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(RETRY_AFTER_S).encode()),
                ],
            }
        )
        # The answer's bytes leave now; the final (empty) frame waits until the upload has been drained.
        await send({"type": "http.response.body", "body": body, "more_body": True})
        if self._should_drain(scope):
            try:
                await asyncio.wait_for(self._drain(receive), DRAIN_TIMEOUT_S)
            except asyncio.TimeoutError:
                log.info("request_id=%s refused request's body not drained in time", request_id)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _should_drain(self, scope: Scope) -> bool:
        """Drain only what a well-behaved client will send anyway, and not more than the body limit."""
        headers = dict(scope.get("headers") or [])
        if headers.get(b"expect", b"").lower() == b"100-continue":
            return False  # it waits for "100 Continue", which a refusal never sends
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                return 0 < int(declared) <= self.max_drain_bytes
            except ValueError:
                return False
        return True

    async def _drain(self, receive: Receive) -> None:
        total = 0
        while total <= self.max_drain_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return
            total += len(message.get("body", b""))
            if not message.get("more_body", False):
                return
