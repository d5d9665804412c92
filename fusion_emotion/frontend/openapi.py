"""The front end's OpenAPI description: response models, the request bodies it takes, the errors it answers.

The request bodies are read by hand (``fusion_emotion.frontend.request``), so FastAPI cannot derive them:
they are described here and registered as components by :func:`install_openapi`.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

from fusion_emotion import contract as C
from fusion_emotion.frontend.request import RAW_TYPES
from fusion_emotion.frontend.timeline import CUSTOM_ATTRIBUTES_HEADER


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


REQUEST_BODY = {
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
OPTION_PARAMETERS = [
    {
        "name": CUSTOM_ATTRIBUTES_HEADER,
        "in": "header",
        "required": False,
        "schema": {"type": "string", "example": "timeline=true,speakers=channels,speaker_names=agent,customer"},
        "description": "SageMaker's pass-through header: timeline, window_s, hop_s, speakers, speaker_names, vad, summary "
        "as key=value pairs (query parameters and JSON keys win over it; other keys are ignored)",
    },
    *(
        {"name": name, "in": "query", "required": False, "schema": {"type": kind}, "description": text}
        for name, kind, text in (
            ("timeline", "boolean", "add per-window segments (docs/timeline_evaluate.md)"),
            ("window_s", "number", "window length in seconds (with timeline=true)"),
            ("hop_s", "number", "start-to-start step in seconds (with timeline=true)"),
            ("speakers", "string", "channels: one timeline per audio channel, segments carry speaker (docs/calls.md)"),
            ("speaker_names", "string", "one name per channel, e.g. agent,customer (default channel_0,channel_1)"),
            ("vad", "boolean", "score only windows holding speech (default: on with speakers=channels)"),
            ("summary", "boolean", "add a call summary per speaker (with timeline=true; docs/calls.md)"),
        )
    ),
]
ERROR_DOCS: dict[int | str, dict[str, Any]] = {
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


DESCRIPTION = """FastAPI app: SageMaker's container contract (``GET /ping``, ``POST /invocations``) plus ``/predict``.

Request bodies are read by hand rather than through FastAPI's ``File``/``Form``
parameters: Starlette spools uploads over 1 MiB to temporary files, and this
service must never put a user's media on disk. The body is streamed into
memory under a hard byte limit and the multipart parts are split in memory.
"""


def install_openapi(app: FastAPI, description: str = DESCRIPTION) -> None:
    """Serve a schema with the hand-read request-body models registered as components ($ref'd above)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes, description=description
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (S3Request, MultipartRequest):
            components[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
