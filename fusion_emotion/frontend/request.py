"""Reading one inference request into one inputs type, whatever its form.

Request bodies are read by hand rather than through FastAPI's ``File``/``Form`` parameters: Starlette spools
uploads over 1 MiB to temporary files, and this service must never put a user's media on disk. The body is
streamed into memory under a hard byte limit and the multipart parts are split in memory. The three forms
(multipart files, JSON naming S3 objects, one raw media body) all become :class:`RequestInputs`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from fusion_emotion import contract as C
from fusion_emotion.aws import S3Fetcher
from fusion_emotion.errors import ApiError
from fusion_emotion.frontend.timeline import (
    CUSTOM_ATTRIBUTES_HEADER,
    TimelineOptions,
    parse_attributes,
    request_options,
)
from fusion_emotion.frontend.timeline import JSON_KEYS as TIMELINE_KEYS
from fusion_emotion.s3uri import S3Uri, S3UriError, parse_s3_uri

# Form field / JSON key for each ensemble input.
FORM_FIELDS = {"video_file": C.IN_VIDEO.name, "audio_file": C.IN_AUDIO.name}
JSON_FIELDS = {"s3_video_uri": C.IN_VIDEO.name, "s3_audio_uri": C.IN_AUDIO.name}
# What errors about a raw body (one file's bytes as the whole request) call the input.
RAW_BODY_NAME = "body"
RAW_TYPES = sorted(C.RAW_VIDEO_TYPES | C.RAW_AUDIO_TYPES | {C.RAW_SNIFF_TYPE})

# Times a named stage of the request ("body_read", "s3_fetch"): FrontendMetrics.stage, or nothing.
StageTimer = Callable[[str], AbstractContextManager[None]]


def no_stage(name: str) -> AbstractContextManager[None]:
    return nullcontext()


@dataclass
class RequestInputs:
    """One request's media by tensor name, what the client called each input, and its options."""

    media: dict[str, bytes]
    names: dict[str, str]  # tensor name -> the form field, S3 URI or "body" the client sent it as
    source: str  # "multipart", "s3" or "raw" (logged; never the content)
    timeline: TimelineOptions

    @property
    def video(self) -> bytes | None:
        return self.media.get(C.IN_VIDEO.name)

    @property
    def audio(self) -> bytes | None:
        return self.media.get(C.IN_AUDIO.name)


def request_s3_uri(raw: Any, field_name: str) -> S3Uri:
    """``s3://bucket/key`` named by a request field, or a 400 that says what was expected."""
    try:
        return parse_s3_uri(raw, field_name, object_key=True)
    except S3UriError as exc:
        raise ApiError(400, str(exc)) from None


def media_type(request: Request) -> tuple[str, dict[str, str]]:
    """The Content-Type's media type (lower case) and its parameters."""
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
    uris = {k: request_s3_uri(v, k) for k, v in payload.items() if k in JSON_FIELDS and v is not None}
    if not uris:
        raise ApiError(400, "no input: give s3_video_uri and/or s3_audio_uri")
    return uris, payload


async def _multipart_inputs(
    request: Request, boundary: str | None, limit: int, stage: StageTimer
) -> tuple[dict[str, bytes], dict[str, str]]:
    if not boundary:
        raise ApiError(400, "multipart/form-data without a boundary")
    with stage("body_read"):
        body = await read_body_limited(request, limit)
    parts = parse_multipart(body, boundary)
    del body
    if not parts:
        raise ApiError(400, "no input: send video_file and/or audio_file")
    for name, data in parts.items():
        if not data:
            raise ApiError(422, f"{name}: empty file (0 bytes)", input=name)
    names = {FORM_FIELDS[k]: k for k in parts}  # tensor name -> what the client called it
    return {FORM_FIELDS[k]: v for k, v in parts.items()}, names


async def _s3_inputs(
    uris: dict[str, S3Uri], fetcher: S3Fetcher, deadline: float, stage: StageTimer
) -> tuple[dict[str, bytes], dict[str, str]]:
    for uri in uris.values():
        fetcher.check_allowed(uri)
    keys = list(uris)
    with stage("s3_fetch"):
        fetched = await fetcher.fetch_all([uris[k] for k in keys], deadline)
    names = {JSON_FIELDS[k]: str(uris[k]) for k in keys}
    media = {JSON_FIELDS[k]: data for k, data in zip(keys, fetched, strict=True)}
    for tensor, data in media.items():
        if not data:
            raise ApiError(422, f"{names[tensor]}: empty object (0 bytes)", input=names[tensor])
    return media, names


async def read_inputs(
    request: Request,
    max_body_bytes: int,
    fetcher: S3Fetcher,
    default_options: dict[str, Any],
    deadline: float,
    stage: StageTimer = no_stage,
) -> RequestInputs:
    """The request's inputs and options; an ApiError (4xx) for anything that is not a request we take.

    Options: JSON keys > query string > custom-attributes header; ``default_options`` only when none is given.
    ``stage`` times the body read and the S3 fetch.
    """
    option_sources: list[dict[str, Any]] = [
        parse_attributes(request.headers.get(CUSTOM_ATTRIBUTES_HEADER, "")),
        dict(request.query_params),
    ]
    mime, params = media_type(request)
    if mime == "multipart/form-data":
        media, names = await _multipart_inputs(request, params.get("boundary"), max_body_bytes, stage)
        return RequestInputs(media, names, "multipart", request_options(*option_sources, defaults=default_options))
    if mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json")):
        with stage("body_read"):
            body = await read_body_limited(request, max_body_bytes)
        uris, payload = parse_json_request(body)
        option_sources.append(payload)
        timeline = request_options(*option_sources, defaults=default_options)  # a 400 before any S3 work
        media, names = await _s3_inputs(uris, fetcher, deadline, stage)
        return RequestInputs(media, names, "s3", timeline)
    if mime in C.RAW_VIDEO_TYPES or mime in C.RAW_AUDIO_TYPES or mime == C.RAW_SNIFF_TYPE:
        # One file's bytes as the whole body (Batch Transform, async endpoints, invoke-endpoint).
        with stage("body_read"):
            body = await read_body_limited(request, max_body_bytes)
        if not body:
            raise ApiError(422, f"{RAW_BODY_NAME}: empty body (0 bytes)", input=RAW_BODY_NAME)
        tensor = C.raw_input(mime, body)
        timeline = request_options(*option_sources, defaults=default_options)
        return RequestInputs({tensor: body}, {tensor: RAW_BODY_NAME}, "raw", timeline)
    raise ApiError(
        415,
        "unsupported content type; use multipart/form-data (video_file, audio_file), "
        "application/json (s3_video_uri, s3_audio_uri) or a raw media body (" + ", ".join(RAW_TYPES) + ")",
    )
