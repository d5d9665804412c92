"""FastAPI app: SageMaker's container contract (``GET /ping``, ``POST /invocations``) plus ``/predict``.

Requests are read into one inputs type by ``fusion_emotion.frontend.request`` (in memory, never on disk);
the OpenAPI description is ``fusion_emotion.frontend.openapi``; ``GET /stream`` is
``fusion_emotion.frontend.stream``. One deadline runs from admission to answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from fusion_emotion.aws import S3Fetcher
from fusion_emotion.core.result import result_dict
from fusion_emotion.errors import ApiError
from fusion_emotion.frontend.admission import AdmissionLimit
from fusion_emotion.frontend.emf import EmfReporter
from fusion_emotion.frontend.metrics import CONTENT_TYPE, FrontendMetrics
from fusion_emotion.frontend.openapi import (
    ERROR_DOCS,
    OPTION_PARAMETERS,
    REQUEST_BODY,
    ErrorResponse,
    PredictionResponse,
    install_openapi,
)
from fusion_emotion.frontend.request import RequestInputs, read_inputs
from fusion_emotion.frontend.settings import Settings
from fusion_emotion.frontend.stream import StreamSettings, add_stream_route
from fusion_emotion.frontend.timeline import parse_attributes, request_options, timeline_request
from fusion_emotion.frontend.triton import MediaRejected, TritonGateway
from fusion_emotion.playground.site import PageConfig, playground_app

log = logging.getLogger("fusion_emotion.frontend")

# Routes that run inference (and hold a request body): the admission limit counts these.
INFERENCE_ROUTES = {"/invocations": "SageMaker inference route", "/predict": "Same as /invocations"}

# Libraries whose DEBUG logs would print S3 keys, URLs or payload excerpts.
_CHATTY_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "python_multipart", "multipart")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# --------------------------------------------------------------------------- middleware
class RequestLogMiddleware:
    """Pure ASGI: request id, body size, duration and status per request, logged and counted; never content.

    Assigns the id (echoed as ``X-Request-Id``) before the app runs so every log
    line and error body of the request can carry it.
    """

    def __init__(
        self, app: Callable[[Scope, Receive, Send], Awaitable[None]], metrics: FrontendMetrics | None = None
    ) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        received = 0
        status = 0
        sent = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def tagging_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, tagging_send)
        finally:
            seconds = time.perf_counter() - start
            route = _route_of(scope)
            log.info(
                "request_id=%s method=%s route=%s status=%d request_bytes=%d response_bytes=%d ms=%.1f",
                request_id,
                scope.get("method"),
                route,
                status,
                received,
                sent,
                seconds * 1000,
            )
            if self.metrics is not None:  # no status sent: the client went away first (nginx's 499)
                mode = scope["state"].get("mode", "none")
                self.metrics.answered(route, mode, status or 499, seconds, received)


def _route_of(scope: Scope) -> str:
    """The matched route's template, never the raw path: a decoded ``%0A`` in a path must not forge log lines."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "-"


# --------------------------------------------------------------------------- responses
def _request_id(request: Request) -> str:
    return getattr(request.state, "request_id", "") or ""


def _error(exc: ApiError, request: Request) -> JSONResponse:
    return JSONResponse(exc.body(_request_id(request)), status_code=exc.status, headers=exc.headers or None)


async def _wait_for_disconnect(request: Request) -> None:
    """Returns once the client has gone away (only call after the body has been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _unless_disconnected(request: Request, work: Awaitable[Any], request_id: str) -> Any:
    """Await ``work`` but cancel it (and with it the gRPC call to Triton) if the client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done() and not watcher.done():  # we were cancelled ourselves
            task.cancel()
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    log.info("request_id=%s client disconnected; inference cancelled", request_id)
    # 499 (nginx's "client closed request"): nobody reads it, but the access log shows it.
    raise ApiError(499, "client closed the request")


# --------------------------------------------------------------------------- inference
class Inference:
    """``POST /invocations`` and ``/predict``: read the inputs, call Triton, answer once, within the deadline."""

    def __init__(
        self,
        settings: Settings,
        gateway: TritonGateway,
        fetcher: S3Fetcher,
        default_options: dict[str, Any],
        metrics: FrontendMetrics,
    ) -> None:
        self.settings, self.gateway, self.fetcher = settings, gateway, fetcher
        self.default_options = default_options
        self.metrics = metrics

    async def invoke(self, request: Request) -> JSONResponse:
        # One deadline from admission to answer: body read, S3 download and Triton all spend from it.
        request.state.mode = "clip"  # until the options say timeline (the metrics' mode label)
        timeout_s = self.settings.request_timeout_s
        deadline = time.monotonic() + timeout_s
        try:
            return await asyncio.wait_for(self._invoke(request, deadline), timeout_s)
        except asyncio.TimeoutError:
            log.info("request_id=%s deadline of %.1f s passed", _request_id(request), timeout_s)
            return _error(ApiError(504, f"request did not finish within {timeout_s:g} s"), request)
        except ApiError as exc:
            return _error(exc, request)
        except Exception as exc:  # never a trace to the client
            log.exception("request_id=%s unexpected %s", _request_id(request), type(exc).__name__)
            return JSONResponse({"error": "internal error", "request_id": _request_id(request)}, status_code=500)

    async def _invoke(self, request: Request, deadline: float) -> JSONResponse:
        rid = _request_id(request)
        inputs = await read_inputs(
            request, self.settings.max_body_bytes, self.fetcher, self.default_options, deadline, self.metrics.stage
        )
        if inputs.timeline.enabled:
            request.state.mode = "timeline"
        video, audio = inputs.video, inputs.audio
        log.info(
            "request_id=%s source=%s video_bytes=%d audio_bytes=%d",
            rid,
            inputs.source,
            len(video) if video is not None else -1,
            len(audio) if audio is not None else -1,
        )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise asyncio.TimeoutError
        try:
            return await self._infer(request, inputs, remaining, rid)
        except MediaRejected as exc:
            label = inputs.names.get(exc.input_name, exc.input_name)
            raise ApiError(exc.status, f"{label}: {exc.reason}", input=label) from None

    async def _infer(self, request: Request, inputs: RequestInputs, remaining: float, rid: str) -> JSONResponse:
        start = time.perf_counter()
        gateway, video, audio = self.gateway, inputs.video, inputs.audio
        if inputs.timeline.enabled:
            work = timeline_request(gateway, video, audio, inputs.timeline, remaining, rid)
            with self.metrics.stage("triton"):
                result = await _unless_disconnected(request, work, rid)
            log.info(
                "request_id=%s triton_ms=%.1f segments=%d",
                rid,
                (time.perf_counter() - start) * 1000,
                len(result["segments"]),
            )
        else:
            with self.metrics.stage("triton"):
                prediction = await _unless_disconnected(request, gateway.infer(video, audio, remaining, rid), rid)
            log.info("request_id=%s triton_ms=%.1f", rid, (time.perf_counter() - start) * 1000)
            result = result_dict(prediction.probabilities, prediction.qa_flags)
        self.metrics.result(result)
        return JSONResponse(result, headers=await gateway.response_headers())


# --------------------------------------------------------------------------- app factory
def _add_error_handlers(app: FastAPI) -> None:
    """Every error is one JSON body with the request id; never a trace."""

    @app.exception_handler(ApiError)
    async def api_error_handler(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc, request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return JSONResponse({"error": message, "request_id": _request_id(request)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid request", "request_id": _request_id(request)}, status_code=400)

    @app.exception_handler(Exception)
    async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
        log.error("request_id=%s unexpected %s", _request_id(request), type(exc).__name__)
        return JSONResponse({"error": "internal error", "request_id": _request_id(request)}, status_code=500)


def _add_metrics_route(app: FastAPI, metrics: FrontendMetrics) -> None:
    @app.get("/metrics", summary="Prometheus metrics of the front end (Triton's are on its own metrics port)")
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)


def _add_routes(app: FastAPI, settings: Settings, gateway: TritonGateway, inference: Inference) -> None:
    @app.get(
        "/ping",
        summary="Health check: 200 when Triton is live and the model is ready",
        responses={200: {"description": "ready"}, 503: {"model": ErrorResponse, "description": "not ready"}},
    )
    async def ping(request: Request) -> JSONResponse:
        ok, reason = await gateway.ready(settings.ping_timeout_s)
        if ok:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"error": reason, "request_id": _request_id(request)}, status_code=503)

    # SageMaker's contract for bidirectional streaming asks /ping to answer POST as well
    app.add_api_route("/ping", ping, methods=["POST"], operation_id="ping_post", summary="Health check (POST)")

    for path, summary in INFERENCE_ROUTES.items():
        app.add_api_route(
            path,
            inference.invoke,
            methods=["POST"],
            summary=summary,
            response_model=PredictionResponse,
            responses=ERROR_DOCS,
            openapi_extra={"requestBody": REQUEST_BODY, "parameters": OPTION_PARAMETERS},
            operation_id=f"predict_{path.strip('/')}",
        )


def _start_emf(settings: Settings, metrics: FrontendMetrics) -> asyncio.Task[None] | None:
    """CloudWatch EMF records every ``emf_interval_s`` (0 = off, the default off SageMaker)."""
    if settings.emf_interval_s <= 0:
        return None
    reporter = EmfReporter(metrics, settings.endpoint_name, settings.emf_interval_s, settings.triton_metrics_url)
    log.info("emf records every %.0f s for endpoint %s", settings.emf_interval_s, settings.endpoint_name)
    return asyncio.create_task(reporter.run())


def create_app(settings: Settings | None = None, stream_settings: StreamSettings | None = None) -> FastAPI:
    """Build the app; the Triton client is opened in the lifespan and closed at shutdown."""
    settings = settings or Settings.from_env()
    for name in _CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)
    gateway = TritonGateway(settings.triton_url, settings.model_name)
    try:  # checked at startup, not on the first request
        default_options = parse_attributes(settings.default_options)
        request_options(default_options)
    except ApiError as exc:
        raise ValueError(f"default options {settings.default_options!r}: {exc.message}") from None
    fetcher = S3Fetcher(
        max_object_bytes=settings.max_s3_object_bytes,
        allowed_buckets=settings.s3_allowed_buckets,
        max_workers=2 * settings.max_in_flight,  # two objects per admitted request at most
    )

    metrics = FrontendMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        log.info(
            "front end ready: model=%s max_body_bytes=%d request_timeout_s=%s",
            settings.model_name,
            settings.max_body_bytes,
            settings.request_timeout_s,
        )
        emf = _start_emf(settings, metrics)
        try:
            yield
        finally:
            if emf is not None:
                emf.cancel()
                await asyncio.gather(emf, return_exceptions=True)
            await gateway.close()
            fetcher.close()

    app = FastAPI(
        title="fusion-emotion",
        summary="Audio-visual emotion recognition (SageMaker-compatible)",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.gateway = gateway
    app.state.fetcher = fetcher
    app.state.metrics = metrics
    # Outermost last: the access log (and request id) also covers requests the admission limit refuses.
    app.add_middleware(
        AdmissionLimit,
        limit=settings.max_in_flight,
        paths=frozenset(INFERENCE_ROUTES),
        max_drain_bytes=settings.max_body_bytes,
        metrics=metrics,
    )
    app.add_middleware(RequestLogMiddleware, metrics=metrics)
    _add_error_handlers(app)
    _add_routes(app, settings, gateway, Inference(settings, gateway, fetcher, default_options, metrics))
    if settings.metrics:
        _add_metrics_route(app, metrics)
    install_openapi(app)
    # GET /stream (WebSocket): fusion_emotion/frontend/stream.py; each session reports to the metrics
    add_stream_route(app, stream_settings, observer=metrics.stream_observer)
    if settings.ui:  # the web playground, off by default (docs/playground.md)
        app.mount("/ui", playground_app(PageConfig(target=f"the front end (Triton at {settings.triton_url})")))
    return app
