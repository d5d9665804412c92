"""Requests for SageMaker's stock Triton container, where tritonserver itself answers ``/invocations``.

tritonserver started with ``--allow-sagemaker=true`` (port ``--sagemaker-port``,
default 8080) serves the model named by ``SAGEMAKER_TRITON_DEFAULT_MODEL_NAME``
on ``POST /invocations``. Bodies are KServe v2 JSON or, for raw bytes, the
binary-data extension under the content type
``application/vnd.sagemaker-triton.binary+json;json-header-size=N`` where N is the
length of the leading JSON header (Triton's ``src/sagemaker_server.cc``;
layout per ``docs/protocol/extension_binary_data.md``): a BYTES element is a
4-byte little-endian length followed by the bytes, tensors follow the JSON in
input order, and each input declares ``"parameters": {"binary_data_size": N}``.
Errors come back as ``{"error": "..."}`` with HTTP 400.

Plain KServe v2 JSON (``application/json``) works too (``form="json"``): BYTES
elements are JSON strings, and Triton parses request JSON without UTF-8
validation (rapidjson without ``kParseValidateEncodingFlag``,
``common/include/triton/common/triton_json.h``), so a string's bytes reach the
model unchanged. The media bytes are written into the strings as they are, only
``"``, ``\\`` and control characters escaped (all below 0x80, so each escape
decodes to exactly one byte). Such a body is not UTF-8, so strict JSON tools
refuse it; binary+json is the compact, standard form.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any

import boto3
import httpx
import numpy as np

from fusion_emotion import contract as C
from fusion_emotion.core.result import result_dict

BINARY_JSON_MIME = "application/vnd.sagemaker-triton.binary+json;json-header-size="
_DTYPES = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8"}


class SageMakerTritonError(RuntimeError):
    """tritonserver's SageMaker route refused the request; ``message`` is its ``error`` text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def _bytes_element(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


FORMS = ("binary+json", "json")


def _inputs(video: bytes | None, audio: bytes | None) -> list[tuple[C.TensorSpec, bytes]]:
    if video is None and audio is None:
        raise ValueError("need video and/or audio bytes")
    return [(spec, data) for spec, data in ((C.IN_VIDEO, video), (C.IN_AUDIO, audio)) if data is not None]


def _outputs(binary_outputs: bool) -> list[dict[str, Any]]:
    return [
        {"name": C.OUT_PROBABILITIES.name, "parameters": {"binary_data": binary_outputs}},
        {"name": C.OUT_QA_FLAGS.name, "parameters": {"binary_data": binary_outputs}},
    ]


def build_request(
    video: bytes | None, audio: bytes | None, *, binary_outputs: bool = False
) -> tuple[bytes, dict[str, str]]:
    """Body and headers for ``POST /invocations``: both inputs as binary BYTES tensors after a JSON header."""
    inputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for spec, data in _inputs(video, audio):
        blob = _bytes_element(data)
        inputs.append(
            {
                "name": spec.name,
                "shape": [1, *spec.dims],
                "datatype": spec.wire_dtype,
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    header = {"inputs": inputs, "outputs": _outputs(binary_outputs)}
    head = json.dumps(header, separators=(",", ":")).encode()
    body = head + b"".join(blobs)
    headers = {
        "Content-Type": f"{BINARY_JSON_MIME}{len(head)}",
        "Accept": "application/json",
    }
    return body, headers


_JSON_ESCAPES = {b'"': b'\\"', b"\\": b"\\\\", **{bytes([c]): b"\\u%04x" % c for c in range(0x20)}}
_NEEDS_ESCAPE = re.compile(rb'["\\\x00-\x1f]')


def _json_string(data: bytes) -> bytes:
    """A JSON string literal whose bytes, as Triton decodes them, are exactly ``data`` (module docstring)."""
    return b'"' + _NEEDS_ESCAPE.sub(lambda m: _JSON_ESCAPES[m.group()], data) + b'"'


def build_json_request(video: bytes | None, audio: bytes | None) -> tuple[bytes, dict[str, str]]:
    """Body and headers for ``POST /invocations`` as plain KServe v2 JSON (``application/json``)."""
    parts = [
        b'{"name":"%s","shape":%s,"datatype":"%s","data":[%s]}'
        % (spec.name.encode(), json.dumps([1, *spec.dims]).encode(), spec.wire_dtype.encode(), _json_string(data))
        for spec, data in _inputs(video, audio)
    ]
    outputs = json.dumps(_outputs(False), separators=(",", ":")).encode()
    body = b'{"inputs":[' + b",".join(parts) + b'],"outputs":' + outputs + b"}"
    return body, {"Content-Type": "application/json", "Accept": "application/json"}


def _header_size(content_type: str | None, body_len: int) -> int:
    if content_type and content_type.startswith(BINARY_JSON_MIME):
        return int(content_type[len(BINARY_JSON_MIME) :].split(";")[0].strip())
    return body_len


def parse_response(body: bytes, content_type: str | None = None) -> dict[str, np.ndarray]:
    """Output tensors by name from a JSON or binary+json ``/invocations`` response."""
    size = _header_size(content_type, len(body))
    header = json.loads(body[:size])
    if "error" in header:
        raise SageMakerTritonError(400, str(header["error"]))
    offset = size
    out: dict[str, np.ndarray] = {}
    for output in header.get("outputs", []):
        shape = output.get("shape", [])
        binary_size = (output.get("parameters") or {}).get("binary_data_size")
        dtype = _DTYPES.get(output["datatype"])
        if binary_size is not None:
            if dtype is None:
                raise ValueError(f"cannot decode binary output of type {output['datatype']}")
            raw = body[offset : offset + int(binary_size)]
            offset += int(binary_size)
            arr = np.frombuffer(raw, dtype=dtype)
        else:
            arr = np.asarray(output["data"], dtype=dtype or object)
        out[output["name"]] = arr.reshape(shape) if shape else arr
    return out


def parse_prediction(body: bytes, content_type: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(probabilities [6], qa_flags [6] or None)`` from a ``/invocations`` response."""
    outputs = parse_response(body, content_type)
    if C.OUT_PROBABILITIES.name not in outputs:
        raise ValueError("response has no probabilities output")
    probs = outputs[C.OUT_PROBABILITIES.name].astype(np.float32).reshape(-1)
    qa = outputs.get(C.OUT_QA_FLAGS.name)
    return probs, None if qa is None else qa.astype(np.float32).reshape(-1)


def invoke_url(
    url: str,
    video: bytes | None,
    audio: bytes | None,
    timeout: float = 120.0,
    *,
    form: str = "binary+json",
    binary_outputs: bool = False,
) -> dict[str, Any]:
    """POST to a tritonserver SageMaker port (``http://HOST:PORT``) and return the product JSON.

    ``form`` is the request body: ``binary+json`` (default) or plain KServe ``json``;
    ``binary_outputs`` asks for the outputs as binary tensors after a JSON header.
    """

    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    if form == "json":
        body, headers = build_json_request(video, audio)
    else:
        body, headers = build_request(video, audio, binary_outputs=binary_outputs)
    target = url.rstrip("/") + "/invocations"
    resp = httpx.post(target, content=body, headers=headers, timeout=timeout)
    if resp.status_code != 200:
        try:
            message = str(resp.json().get("error", resp.text))
        except ValueError:
            message = resp.text
        raise SageMakerTritonError(resp.status_code, message)
    probs, qa = parse_prediction(resp.content, resp.headers.get("content-type"))
    return result_dict(probs, qa)


def invoke_endpoint(
    endpoint_name: str, video: bytes | None, audio: bytes | None, *, client: Any = None
) -> dict[str, Any]:
    """The same request through boto3 ``sagemaker-runtime`` to an endpoint on the stock Triton image."""

    if client is None:
        client = boto3.client("sagemaker-runtime")
    body, headers = build_request(video, audio)
    resp = client.invoke_endpoint(
        EndpointName=endpoint_name, ContentType=headers["Content-Type"], Accept="application/json", Body=body
    )
    probs, qa = parse_prediction(resp["Body"].read(), resp.get("ContentType"))
    return result_dict(probs, qa)
