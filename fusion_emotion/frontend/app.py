"""FastAPI app: SageMaker's container contract (``GET /ping``, ``POST /invocations``) plus ``/predict``.

Request bodies are read by hand rather than through FastAPI's ``File``/``Form``
parameters: Starlette spools uploads over 1 MiB to temporary files, and this
service must never put a user's media on disk. The body is streamed into
memory under a hard byte limit and the multipart parts are split in memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from fusion_emotion import contract as C
from fusion_emotion.frontend.admission import AdmissionLimit
from fusion_emotion.frontend.errors import ApiError
from fusion_emotion.frontend.s3 import S3Fetcher, S3Uri, parse_s3_uri
from fusion_emotion.frontend.settings import Settings
from fusion_emotion.frontend.stream import StreamSettings, add_stream_route
from fusion_emotion.frontend.timeline import (
    CUSTOM_ATTRIBUTES_HEADER,
    parse_attributes,
    request_options,
    timeline_request,
)
from fusion_emotion.frontend.timeline import JSON_KEYS as TIMELINE_KEYS
from fusion_emotion.frontend.triton import MediaRejected, TritonGateway

log = logging.getLogger("fusion_emotion.frontend")

# Routes that run inference (and hold a request body): the admission limit counts these.
INFERENCE_ROUTES = {"/invocations": "SageMaker inference route", "/predict": "Same as /invocations"}
# Form field / JSON key for each ensemble input.
FORM_FIELDS = {"video_file": C.IN_VIDEO.name, "audio_file": C.IN_AUDIO.name}
JSON_FIELDS = {"s3_video_uri": C.IN_VIDEO.name, "s3_audio_uri": C.IN_AUDIO.name}
# What errors about a raw body (one file's bytes as the whole request) call the input.
RAW_BODY_NAME = "body"
RAW_TYPES = sorted(C.RAW_VIDEO_TYPES | C.RAW_AUDIO_TYPES | {C.RAW_SNIFF_TYPE})

# Libraries whose DEBUG logs would print S3 keys, URLs or payload excerpts.
_CHATTY_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "python_multipart", "multipart")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# --------------------------------------------------------------------------- schema models
class S3Request(BaseModel):
    """``application/json`` request: media already in S3 (no SageMaker payload limit)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"s3_video_uri": "s3://bucket/clip.mp4"}})

    s3_video_uri: str | None = Field(None, description="s3://bucket/key of an MP4, FLV or AVI file")
    s3_audio_uri: str | None = Field(None, description="s3://bucket/key of a WAV file")


class MultipartRequest(BaseModel):
    """``multipart/form-data`` request: the files themselves (at least one)."""

    video_file: bytes | None = Field(None, description="MP4, FLV or AVI file", json_schema_extra={"format": "binary"})
    audio_file: bytes | None = Field(None, description="WAV file", json_schema_extra={"format": "binary"})


class QAFlags(BaseModel):
    """Quality flags; ``null`` means not computed (e.g. the modality was absent)."""

    audio_clipping_ratio: float | None
    audio_silence_ratio: float | None
    video_face_detection_confidence: float | None
    video_blur_level: float | None
    modality_consistency_score: float | None
    overall_confidence: float | None


class PredictionResponse(BaseModel):
    """Class probabilities (summing to 1), quality flags and the arg-max label."""

    angry: float
    disgust: float
    fearful: float
    happy: float
    neutral: float
    sad: float
    qa_flags: QAFlags
    dominant_emotion: Literal["angry", "disgust", "fearful", "happy", "neutral", "sad"]


class ErrorResponse(BaseModel):
    error: str = Field(description="what was wrong with the request, or which dependency failed")
    request_id: str | None = None


assert tuple(PredictionResponse.model_fields)[: C.NUM_CLASSES] == C.LABELS
assert tuple(QAFlags.model_fields) == C.QA_FLAG_NAMES


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": _schema(MultipartRequest),
            "encoding": {
                "video_file": {"contentType": "video/mp4, video/x-flv, video/x-msvideo, application/octet-stream"},
                "audio_file": {"contentType": "audio/wav, audio/x-wav, application/octet-stream"},
            },
        },
        "application/json": {"schema": _schema(S3Request)},
        # Raw bodies: SageMaker Batch Transform, async endpoints, invoke-endpoint --body fileb://clip.mp4.
        **{
            mime: {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "one media file as the whole body"
                    + (" (video or WAV, told apart by its bytes)" if mime == C.RAW_SNIFF_TYPE else ""),
                }
            }
            for mime in RAW_TYPES
        },
    },
}
_OPTION_PARAMETERS = [
    {
        "name": CUSTOM_ATTRIBUTES_HEADER,
        "in": "header",
        "required": False,
        "schema": {"type": "string", "example": "timeline=true,window_s=4"},
        "description": "SageMaker's pass-through header: timeline, window_s, hop_s as key=value pairs "
        "(query parameters and JSON keys win over it; other keys are ignored)",
    },
    *(
        {"name": name, "in": "query", "required": False, "schema": {"type": kind}, "description": text}
        for name, kind, text in (
            ("timeline", "boolean", "add per-window segments (docs/timeline_evaluate.md)"),
            ("window_s", "number", "window length in seconds (with timeline=true)"),
            ("hop_s", "number", "start-to-start step in seconds (with timeline=true)"),
        )
    ),
]
_ERROR_DOCS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "no input, malformed JSON or multipart, or a URI not of the form s3://bucket/key",
        403: "S3 object access denied (URI named)",
        404: "S3 object missing (URI named)",
        413: "request body or S3 object over the size limit, or media over a limit (duration, frame size, ...)",
        415: "content type other than multipart/form-data, application/json or a raw media type",
        422: "media that cannot be decoded (the offending file or URI named)",
        503: "inference server unavailable",
        504: "inference deadline exceeded",
    }.items()
}


# --------------------------------------------------------------------------- middleware
class RequestLogMiddleware:
    """Pure ASGI: request id, body size, duration and status per request; never content.

    Assigns the id (echoed as ``X-Request-Id``) before the app runs so every log
    line and error body of the request can carry it.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

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
            log.info(
                "request_id=%s method=%s route=%s status=%d request_bytes=%d response_bytes=%d ms=%.1f",
                request_id,
                scope.get("method"),
                _route_of(scope),
                status,
                received,
                sent,
                (time.perf_counter() - start) * 1000,
            )


def _route_of(scope: Scope) -> str:
    """The matched route's template, never the raw path: a decoded ``%0A`` in a path must not forge log lines."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "-"


# --------------------------------------------------------------------------- body handling
def _request_id(request: Request) -> str:
    return getattr(request.state, "request_id", "") or ""


def _error(exc: ApiError, request: Request) -> JSONResponse:
    return JSONResponse(exc.body(_request_id(request)), status_code=exc.status, headers=exc.headers or None)


def _media_type(request: Request) -> tuple[str, dict[str, str]]:
    from python_multipart.multipart import parse_options_header

    raw = request.headers.get("content-type", "")
    mime, params = parse_options_header(raw)
    return mime.decode("latin-1").lower().strip(), {
        k.decode("latin-1").lower(): v.decode("latin-1") for k, v in params.items()
    }


async def read_body_limited(request: Request, limit: int) -> bytes:
    """The whole body in memory, refusing (413) before reading when Content-Length says too much,
    and while reading when a chunked or lying client sends more than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise ApiError(400, "invalid Content-Length header") from None
        if length > limit:
            raise ApiError(413, f"request body is {length} bytes, over the {limit}-byte limit", limit_bytes=limit)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, f"request body is over the {limit}-byte limit", limit_bytes=limit)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_multipart(body: bytes, boundary: str) -> dict[str, bytes]:
    """Split a multipart body into ``{field name: bytes}`` for our two file fields, in memory."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    parts: dict[str, bytes] = {}
    state: dict[str, Any] = {"field": b"", "value": b"", "headers": {}, "data": []}

    def on_part_begin() -> None:
        state["headers"] = {}
        state["data"] = []

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].decode("latin-1").lower()] = state["value"]
        state["field"] = b""
        state["value"] = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"].append(data[start:end])

    def on_part_end() -> None:
        disposition = state["headers"].get("content-disposition", b"")
        _, options = parse_options_header(disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name not in FORM_FIELDS:
            raise ApiError(400, f"unexpected form field {name[:64]!r}; expected video_file and/or audio_file")
        if name in parts:
            raise ApiError(400, f"form field {name} given more than once")
        parts[name] = b"".join(state["data"])
        state["data"] = []

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    try:
        parser = MultipartParser(boundary.encode("latin-1"), callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except ApiError:
        raise
    except (MultipartParseError, ValueError, UnicodeError):
        raise ApiError(400, "malformed multipart/form-data body") from None
    return parts


def parse_json_request(body: bytes) -> tuple[dict[str, S3Uri], dict[str, Any]]:
    """``{"s3_video_uri", "s3_audio_uri"}`` -> (parsed URIs keyed by JSON field name, the whole object)."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "malformed JSON body") from None
    except RecursionError:  # "[[[[...": the parser's recursion limit, not a server fault
        raise ApiError(400, "malformed JSON body: nested too deeply") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "JSON body must be an object with s3_video_uri and/or s3_audio_uri")
    unknown = sorted(set(payload) - set(JSON_FIELDS) - set(TIMELINE_KEYS))
    if unknown:
        raise ApiError(400, f"unexpected JSON field(s) {', '.join(repr(k)[:64] for k in unknown)}")
    uris = {k: parse_s3_uri(v, k) for k, v in payload.items() if k in JSON_FIELDS and v is not None}
    if not uris:
        raise ApiError(400, "no input: give s3_video_uri and/or s3_audio_uri")
    return uris, payload


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


# --------------------------------------------------------------------------- app factory
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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        log.info(
            "front end ready: model=%s max_body_bytes=%d request_timeout_s=%s",
            settings.model_name,
            settings.max_body_bytes,
            settings.request_timeout_s,
        )
        try:
            yield
        finally:
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
    # Outermost last: the access log (and request id) also covers requests the admission limit refuses.
    app.add_middleware(
        AdmissionLimit,
        limit=settings.max_in_flight,
        paths=frozenset(INFERENCE_ROUTES),
        max_drain_bytes=settings.max_body_bytes,
    )
    app.add_middleware(RequestLogMiddleware)

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

    async def invoke(request: Request) -> JSONResponse:
        # One deadline from admission to answer: body read, S3 download and Triton all spend from it.
        deadline = time.monotonic() + settings.request_timeout_s
        try:
            return await asyncio.wait_for(_invoke(request, deadline), settings.request_timeout_s)
        except asyncio.TimeoutError:
            log.info("request_id=%s deadline of %.1f s passed", _request_id(request), settings.request_timeout_s)
            return _error(ApiError(504, f"request did not finish within {settings.request_timeout_s:g} s"), request)
        except ApiError as exc:
            return _error(exc, request)
        except Exception as exc:  # never a trace to the client
            log.exception("request_id=%s unexpected %s", _request_id(request), type(exc).__name__)
            return JSONResponse({"error": "internal error", "request_id": _request_id(request)}, status_code=500)

    async def _invoke(request: Request, deadline: float) -> JSONResponse:
        from fusion_emotion.core.result import result_dict

        rid = _request_id(request)
        # Options: JSON keys > query string > custom-attributes header; the defaults only when none is given.
        option_sources: list[dict[str, Any]] = [
            parse_attributes(request.headers.get(CUSTOM_ATTRIBUTES_HEADER, "")),
            dict(request.query_params),
        ]
        mime, params = _media_type(request)
        if mime == "multipart/form-data":
            boundary = params.get("boundary")
            if not boundary:
                raise ApiError(400, "multipart/form-data without a boundary")
            body = await read_body_limited(request, settings.max_body_bytes)
            parts = parse_multipart(body, boundary)
            del body
            if not parts:
                raise ApiError(400, "no input: send video_file and/or audio_file")
            for name, data in parts.items():
                if not data:
                    raise ApiError(422, f"{name}: empty file (0 bytes)", input=name)
            names = {FORM_FIELDS[k]: k for k in parts}  # tensor name -> what the client called it
            media = {FORM_FIELDS[k]: v for k, v in parts.items()}
            source = "multipart"
        elif mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json")):
            body = await read_body_limited(request, settings.max_body_bytes)
            uris, payload = parse_json_request(body)
            option_sources.append(payload)
            timeline = request_options(*option_sources, defaults=default_options)  # a 400 before any S3 work
            for uri in uris.values():
                fetcher.check_allowed(uri)
            keys = list(uris)
            fetched = await fetcher.fetch_all([uris[k] for k in keys], deadline)
            names = {JSON_FIELDS[k]: uris[k].raw for k in keys}
            media = {JSON_FIELDS[k]: data for k, data in zip(keys, fetched, strict=True)}
            for tensor, data in media.items():
                if not data:
                    raise ApiError(422, f"{names[tensor]}: empty object (0 bytes)", input=names[tensor])
            source = "s3"
        elif mime in C.RAW_VIDEO_TYPES or mime in C.RAW_AUDIO_TYPES or mime == C.RAW_SNIFF_TYPE:
            # One file's bytes as the whole body (Batch Transform, async endpoints, invoke-endpoint).
            body = await read_body_limited(request, settings.max_body_bytes)
            if not body:
                raise ApiError(422, f"{RAW_BODY_NAME}: empty body (0 bytes)", input=RAW_BODY_NAME)
            tensor = C.raw_input(mime, body)
            names = {tensor: RAW_BODY_NAME}
            media = {tensor: body}
            source = "raw"
        else:
            raise ApiError(
                415,
                "unsupported content type; use multipart/form-data (video_file, audio_file), "
                "application/json (s3_video_uri, s3_audio_uri) or a raw media body (" + ", ".join(RAW_TYPES) + ")",
            )
        if source != "s3":
            timeline = request_options(*option_sources, defaults=default_options)
        video = media.get(C.IN_VIDEO.name)
        audio = media.get(C.IN_AUDIO.name)
        log.info(
            "request_id=%s source=%s video_bytes=%d audio_bytes=%d",
            rid,
            source,
            len(video) if video is not None else -1,
            len(audio) if audio is not None else -1,
        )
        start = time.perf_counter()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise asyncio.TimeoutError
        try:
            if timeline.enabled:
                result = await _unless_disconnected(
                    request, timeline_request(gateway, video, audio, timeline, remaining, rid), rid
                )
                log.info(
                    "request_id=%s triton_ms=%.1f segments=%d",
                    rid,
                    (time.perf_counter() - start) * 1000,
                    len(result["segments"]),
                )
                return JSONResponse(result, headers=await gateway.response_headers())
            prediction = await _unless_disconnected(request, gateway.infer(video, audio, remaining, rid), rid)
        except MediaRejected as exc:
            label = names.get(exc.input_name, exc.input_name)
            raise ApiError(exc.status, f"{label}: {exc.reason}", input=label) from None
        log.info("request_id=%s triton_ms=%.1f", rid, (time.perf_counter() - start) * 1000)
        return JSONResponse(
            result_dict(prediction.probabilities, prediction.qa_flags), headers=await gateway.response_headers()
        )

    for path, summary in INFERENCE_ROUTES.items():
        app.add_api_route(
            path,
            invoke,
            methods=["POST"],
            summary=summary,
            response_model=PredictionResponse,
            responses=_ERROR_DOCS,
            openapi_extra={"requestBody": _REQUEST_BODY, "parameters": _OPTION_PARAMETERS},
            operation_id=f"predict_{path.strip('/')}",
        )

    # Request-body models are referenced by $ref from openapi_extra; register them as components.
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes, description=__doc__
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (S3Request, MultipartRequest):
            components[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    add_stream_route(app, stream_settings)  # GET /stream (WebSocket): fusion_emotion/frontend/stream.py
    return app
