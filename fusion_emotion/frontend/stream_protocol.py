"""``/stream``'s wire protocol: close codes, error messages, and the parsing of every client message.

Pure functions: a malformed message becomes a :class:`StreamClose` naming what is wrong (1007/1008/1009 with a
reason), never another exception: nesting too deep for the JSON parser, integers too large for a float and
non-finite numbers included.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusion_emotion.core.alerts import AlertRule, parse_rules
from fusion_emotion.core.stream import StreamConfig, stream_config
from fusion_emotion.errors import ErrorKind, ServingError

# WebSocket close codes (RFC 6455 and the private 4000-4999 range), by error kind.
CLOSE_NORMAL = 1000
CLOSE_CODES: dict[ErrorKind, int] = {
    ErrorKind.BAD_REQUEST: 1008,  # policy violation: malformed message, bad or unsupported settings
    ErrorKind.INVALID_MEDIA: 1007,  # invalid payload: an undecodable frame, non-finite audio
    ErrorKind.TOO_LARGE: 1009,  # message too big: a chunk or frame over its limit
    ErrorKind.OVERLOADED: 1013,  # try again later: the stream limit is reached, or Triton is unavailable
    ErrorKind.INTERNAL: 1011,  # internal error
    ErrorKind.DEADLINE: 4408,  # the stream was idle longer than the idle timeout, or the client does not read
    ErrorKind.CANCELLED: 1001,  # going away
}
CLOSE_MAX_DURATION = 4413  # the stream reached its maximum duration
CLOSE_UNSUPPORTED = 1003  # unknown encoding (data the server cannot accept)

ENCODINGS: dict[str, tuple[str, float]] = {"pcm_s16le": ("<i2", 32768.0), "pcm_f32le": ("<f4", 1.0)}
"""WebSocket audio encodings: numpy dtype of one sample and its full scale."""
CONFIG_KEYS = {"sample_rate", "encoding", "channels", "hop_s", "window_s", "alerts"}


class StreamClose(Exception):
    """End the WebSocket with this error message and close code."""

    def __init__(self, error: ServingError, code: int | None = None) -> None:
        super().__init__(error.wire())
        self.error = error
        self.code = code if code is not None else close_code(error)


def close_code(error: ServingError) -> int:
    if error.kind is ErrorKind.TOO_LARGE and error.subject == "stream":
        return CLOSE_MAX_DURATION
    return CLOSE_CODES.get(error.kind, 1011)


def error_message(error: ServingError, code: int) -> dict[str, Any]:
    return {
        "error": f"{error.subject}: {error.reason}",
        "kind": error.kind.value,
        "subject": error.subject,
        "close_code": code,
    }


def bad(subject: str, reason: str, kind: ErrorKind = ErrorKind.BAD_REQUEST) -> StreamClose:
    return StreamClose(ServingError(kind, subject, reason))


def json_object(text: str, subject: str, reason: str) -> dict[str, Any]:
    """A text message that must hold one JSON object; StreamClose(subject, reason) otherwise."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        value = None
    if not isinstance(value, dict):
        raise bad(subject, reason)
    return value


def parse_config(text: str) -> tuple[StreamConfig, str]:
    """The first message -> (validated settings, encoding); StreamClose naming what is wrong."""
    config, encoding, _ = parse_config_message(text)
    return config, encoding


def parse_config_message(text: str) -> tuple[StreamConfig, str, tuple[AlertRule, ...]]:
    """The first message -> (validated settings, encoding, alert rules); StreamClose naming what is wrong."""
    raw = json_object(text, "config", "the first message must be a JSON object with sample_rate and encoding")
    unknown = sorted(set(raw) - CONFIG_KEYS)
    if unknown:
        raise bad("config", f"unknown setting(s) {', '.join(repr(k)[:40] for k in unknown)}")
    encoding = raw.get("encoding")
    if encoding not in ENCODINGS:
        raise StreamClose(
            ServingError(
                ErrorKind.BAD_REQUEST,
                "encoding",
                f"unknown encoding {str(encoding)[:40]!r}; expected one of {', '.join(sorted(ENCODINGS))}",
            ),
            CLOSE_UNSUPPORTED,
        )
    if "sample_rate" not in raw:
        raise bad("sample_rate", "missing: the audio's sample rate in Hz (8000-48000)")
    for key in ("sample_rate", "channels", "hop_s", "window_s"):
        if key in raw and (isinstance(raw[key], bool) or not isinstance(raw[key], (int, float))):
            raise bad(key, "must be a number")
    try:
        config = stream_config(raw.get("sample_rate"), raw.get("channels"), raw.get("hop_s"), raw.get("window_s"))
    except ServingError as exc:
        raise StreamClose(exc, CLOSE_UNSUPPORTED if exc.subject in ("sample_rate", "channels") else None) from None
    try:
        alerts = parse_rules(raw.get("alerts"))
    except ServingError as exc:
        raise StreamClose(exc) from None
    return config, encoding, alerts


def number(msg: dict[str, Any], key: str) -> float:
    """A finite number (an integer too large for a float is refused, not an OverflowError)."""
    value = msg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad("message", f"{key!r} must be a finite number")
    try:
        out = float(value)
    except OverflowError:
        out = math.inf
    if not math.isfinite(out):
        raise bad("message", f"{key!r} must be a finite number")
    return out


def b64(value: Any, limit: int) -> bytes:
    if not isinstance(value, str):
        raise bad("frame", "frame data must be a base64 string", ErrorKind.INVALID_MEDIA)
    if len(value) > limit * 4 // 3 + 4:
        raise bad("frame", f"frame is over the {limit}-byte limit", ErrorKind.TOO_LARGE)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise bad("frame", "frame data is not valid base64", ErrorKind.INVALID_MEDIA) from None


@dataclass(frozen=True)
class TextMessage:
    """A parsed text message: ``{"end": true}`` or one frame (still base64: decoded only if it is kept)."""

    end: bool = False
    t: float = 0.0
    raw: dict[str, Any] | None = None


def parse_text(text: str) -> TextMessage:
    """A text message's kind and frame time; StreamClose for anything else."""
    msg = json_object(text, "message", "text messages must be JSON objects")
    keys = set(msg)
    if keys == {"end"}:
        if msg["end"] is not True:
            raise bad("message", '"end" must be true')
        return TextMessage(end=True)
    if keys == {"frame_jpeg_b64", "t"} or keys == {"frame_rgb_b64", "width", "height", "t"}:
        return TextMessage(t=number(msg, "t"), raw=msg)
    raise bad(
        "message",
        f"unexpected message with keys {sorted(keys)[:6]}; expected frame_jpeg_b64+t, "
        "frame_rgb_b64+width+height+t, or end",
    )


def decode_frame(msg: TextMessage, limit: int) -> dict[str, Any]:
    """A frame message's chunk inputs (``jpegs`` or ``rgbs``, and ``times``) for ``tensors.chunk_inputs``."""
    raw = msg.raw
    assert raw is not None
    if "frame_jpeg_b64" in raw:
        return {"jpegs": [b64(raw["frame_jpeg_b64"], limit)], "times": [msg.t]}
    w, h = number(raw, "width"), number(raw, "height")
    if w != int(w) or h != int(h) or not (2 <= w <= 8192 and 2 <= h <= 8192):
        raise bad("frame", "width and height must be whole numbers of pixels (2-8192)")
    data = b64(raw["frame_rgb_b64"], limit)
    if len(data) != int(w) * int(h) * 3:
        raise bad("frame", f"{len(data)} bytes is not {int(w)}x{int(h)} RGB (3 bytes per pixel)",
                  ErrorKind.INVALID_MEDIA)  # fmt: skip
    return {"rgbs": np.frombuffer(data, np.uint8).reshape(1, int(h), int(w), 3), "times": [msg.t]}
