"""Clients of the HTTP front end: directly (``--url``) or through a SageMaker endpoint.

Both send the same ``multipart/form-data`` body (``video_file`` / ``audio_file``),
built here so ``invoke_endpoint`` (one opaque body + content type) and httpx
send identical bytes. Part file names are generic: users' file names never leave
the machine.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import boto3
import httpx

from fusion_emotion import contract as C

log = logging.getLogger(__name__)


class FrontendError(RuntimeError):
    """The front end answered with an error status; ``message`` is its ``error`` text."""

    def __init__(self, status: int, message: str, payload: dict[str, Any] | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.payload = payload or {}


_PARTS = (
    ("video_file", "video", "application/octet-stream"),
    ("audio_file", "audio.wav", "audio/wav"),
)


def encode_multipart(video: bytes | None, audio: bytes | None) -> tuple[bytes, str]:
    """``(body, content_type)`` of a multipart/form-data request with the given files."""
    if video is None and audio is None:
        raise ValueError("need video and/or audio bytes")
    boundary = "fusion-emotion-" + uuid.uuid4().hex
    chunks: list[bytes] = []
    for (field, filename, ctype), data in zip(_PARTS, (video, audio), strict=True):
        if data is None:
            continue
        chunks.append(
            (
                f"--{boundary}\r\n"
                f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
                f"Content-Type: {ctype}\r\n\r\n"
            ).encode()
        )
        chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


@dataclass(frozen=True)
class Answer:
    """A front end's JSON answer with its response attributes (the custom-attributes header, or SageMaker's
    ``CustomAttributes``), for callers that show the ``weights=untrained`` notice rather than log it."""

    payload: dict[str, Any]
    attributes: str | None = None


def is_untrained(attributes: str | None) -> bool:
    """True when the response attributes carry ``weights=untrained``: demo weights, meaningless predictions."""
    return bool(attributes) and C.UNTRAINED_ATTRIBUTE in [a.strip() for a in str(attributes).split(",")]


def warn_if_untrained(attributes: str | None) -> None:
    """Log the front end's ``weights=untrained`` response attribute: demo weights, meaningless predictions."""
    if is_untrained(attributes):
        log.warning("the endpoint serves UNTRAINED random-init weights (demo only): its predictions are meaningless")


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def error_from_body(status: int, body: bytes) -> FrontendError:
    """An error answer as a FrontendError: the front end's ``error`` text when the body is its JSON."""
    payload = _json_object(body)
    message = payload.get("error") if payload is not None else None
    return FrontendError(status, str(message or body[:200].decode("utf-8", "replace")), payload)


def decode_response(status: int, body: bytes) -> dict[str, Any]:
    """The front end's JSON answer, or a FrontendError carrying its status and ``error`` text."""
    if status != 200:
        raise error_from_body(status, body)
    payload = _json_object(body)
    if payload is None:
        raise FrontendError(status, "response is not a JSON object")
    return payload


def invocations_url(url: str) -> str:
    """``http://HOST:PORT`` -> ``http://HOST:PORT/invocations``; a URL with a path is kept."""
    return url if urlsplit(url).path not in ("", "/") else url.rstrip("/") + "/invocations"


def predict_url(
    url: str,
    video: bytes | None,
    audio: bytes | None,
    timeout: float = 120.0,
    params: dict[str, str] | None = None,
) -> dict[str, Any]:
    """POST the files to the front end at ``url`` (``http://HOST:PORT``, path defaults to /invocations).

    ``params`` become the query string (e.g. ``timeline=true``).
    """
    body, content_type = encode_multipart(video, audio)
    resp = httpx.post(
        invocations_url(url), params=params, content=body, headers={"Content-Type": content_type}, timeout=timeout
    )
    warn_if_untrained(resp.headers.get(C.RESPONSE_ATTRIBUTES_HEADER))
    return decode_response(resp.status_code, resp.content)


def post_raw(
    url: str,
    data: bytes,
    content_type: str,
    *,
    params: dict[str, str] | None = None,
    timeout: float = 120.0,
    client: Any = None,
) -> dict[str, Any]:
    """One file's bytes as the whole body (what Batch Transform and async endpoints send)."""
    return post_raw_answer(url, data, content_type, params=params, timeout=timeout, client=client).payload


def post_raw_answer(
    url: str,
    data: bytes,
    content_type: str,
    *,
    params: dict[str, str] | None = None,
    timeout: float = 120.0,
    client: Any = None,
) -> Answer:
    """:func:`post_raw`, keeping the response attributes."""
    headers = {"Content-Type": content_type, "Accept": "application/json"}
    post = httpx.post if client is None else client.post
    resp = post(invocations_url(url), params=params, content=data, headers=headers, timeout=timeout)
    attributes = resp.headers.get(C.RESPONSE_ATTRIBUTES_HEADER)
    warn_if_untrained(attributes)
    return Answer(decode_response(resp.status_code, resp.content), attributes)


def _invoke_endpoint(
    client: Any, endpoint_name: str, body: bytes, content_type: str, custom_attributes: str | None
) -> Answer:
    extra = {"CustomAttributes": custom_attributes} if custom_attributes else {}
    try:
        resp = client.invoke_endpoint(
            EndpointName=endpoint_name, ContentType=content_type, Accept="application/json", Body=body, **extra
        )
    except client.exceptions.ModelError as exc:
        # The container answered with an error status; SageMaker relays its status and body (the front end's
        # JSON, whose ``error`` text is the message).
        err = exc.response
        status = int(err.get("OriginalStatusCode") or 500)
        text = str(err.get("OriginalMessage") or err.get("Error", {}).get("Message", ""))
        raise error_from_body(status, text.encode()) from None
    attributes = resp.get("CustomAttributes")
    warn_if_untrained(attributes)
    return Answer(decode_response(200, resp["Body"].read()), attributes)


def _runtime_client(client: Any, region: str | None) -> Any:
    if client is not None:
        return client
    return boto3.client("sagemaker-runtime", region_name=region)


def predict_sagemaker_endpoint(
    endpoint_name: str, video: bytes | None, audio: bytes | None, *, client: Any = None, region: str | None = None
) -> dict[str, Any]:
    """Invoke a SageMaker endpoint running this front end (boto3 ``sagemaker-runtime``)."""
    body, content_type = encode_multipart(video, audio)
    return _invoke_endpoint(_runtime_client(client, region), endpoint_name, body, content_type, None).payload


def invoke_endpoint_raw(
    endpoint_name: str,
    data: bytes,
    content_type: str,
    *,
    custom_attributes: str | None = None,
    client: Any = None,
    region: str | None = None,
) -> dict[str, Any]:
    """Invoke with one file's bytes as the body; options (``timeline=true``) go in ``custom_attributes``."""
    return invoke_endpoint_answer(
        endpoint_name, data, content_type, custom_attributes=custom_attributes, client=client, region=region
    ).payload


def invoke_endpoint_answer(
    endpoint_name: str,
    data: bytes,
    content_type: str,
    *,
    custom_attributes: str | None = None,
    client: Any = None,
    region: str | None = None,
) -> Answer:
    """:func:`invoke_endpoint_raw`, keeping the response attributes (``CustomAttributes``)."""
    return _invoke_endpoint(_runtime_client(client, region), endpoint_name, data, content_type, custom_attributes)
