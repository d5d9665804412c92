"""Structured errors, carried end to end: decoder -> Triton error message -> front end -> HTTP status.

Triton's error API carries only a status code and a message. So that no layer has to guess what went wrong
from human wording, every error we raise names its *kind*, and its Triton message ends with a fixed,
machine-readable tag: ``"video: duration 700.0 s is over the 600 s limit [fusion-emotion:too_large]"``.
The front end reads the tag (``parse_wire``), never the wording; rewording a reason cannot change a status.
Ensemble and BLS layers may prefix the message with their own text; the tag is searched, not anchored.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any


class ErrorKind(str, enum.Enum):
    """What went wrong, from the client's point of view; each kind has one HTTP status."""

    BAD_REQUEST = "bad_request"  # the request's shape: no input, rows that disagree, a bad parameter value
    INVALID_MEDIA = "invalid_media"  # bytes that cannot be decoded or used (corrupt, wrong container, no samples)
    TOO_LARGE = "too_large"  # over a configured limit (bytes, duration, frame size, windows, ...)
    CANCELLED = "cancelled"  # the client went away, or the request was cancelled
    DEADLINE = "deadline"  # the request's deadline passed before it finished
    OVERLOADED = "overloaded"  # the service is full; retry later
    INTERNAL = "internal"  # our fault: a dependency or the model failed

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self]

    @property
    def client_error(self) -> bool:
        """The request itself is at fault (Triton code INVALID_ARG)."""
        return self in (ErrorKind.BAD_REQUEST, ErrorKind.INVALID_MEDIA, ErrorKind.TOO_LARGE)


_HTTP_STATUS = {
    ErrorKind.BAD_REQUEST: 400,
    ErrorKind.INVALID_MEDIA: 422,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.CANCELLED: 499,
    ErrorKind.DEADLINE: 504,
    ErrorKind.OVERLOADED: 503,
    ErrorKind.INTERNAL: 500,
}

TAG_PREFIX = "fusion-emotion:"
# [fusion-emotion:<kind>:<subject>] -- subject: an input or parameter name ("video", "window_s", "request").
_TAG_RE = re.compile(r"\s*\[" + re.escape(TAG_PREFIX) + r"([a-z_]+):([A-Za-z0-9_.-]{1,64})\]")
_MAX_REASON_CHARS = 300


class ServingError(Exception):
    """An error with a kind, the input (or parameter) it concerns, and a client-safe reason."""

    def __init__(self, kind: ErrorKind, subject: str, reason: str) -> None:
        super().__init__(f"{subject}: {reason}")
        self.kind = ErrorKind(kind)
        self.subject = subject
        self.reason = reason

    @property
    def too_large(self) -> bool:
        return self.kind is ErrorKind.TOO_LARGE

    def wire(self) -> str:
        """The Triton error message: ``"<subject>: <reason> [fusion-emotion:<kind>:<subject>]"``."""
        return f"{self.subject}: {self.reason} [{TAG_PREFIX}{self.kind.value}:{self.subject}]"


class ApiError(Exception):
    """An HTTP answer: a status plus a client-safe message (``message`` never holds internals).

    What the front end's handlers raise, and what the S3 fetcher shared with the clients raises.
    """

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message, **self.extra}
        if request_id:
            out["request_id"] = request_id
        return out


@dataclass(frozen=True)
class WireError:
    """What a client recovered from a Triton error message."""

    kind: ErrorKind
    subject: str  # "video", "audio", "window_s", "request", ...
    reason: str  # one line, at most 300 characters, without the subject and the tag

    @property
    def http_status(self) -> int:
        return self.kind.http_status


def parse_wire(message: str) -> WireError | None:
    """The kind, subject and reason carried by a Triton error message; None if it carries no tag.

    Layers in between may wrap the message (``in ensemble 'fusion_emotion', <message>``): the reason is the
    text between the last ``"<subject>: "`` and the tag.
    """
    found = list(_TAG_RE.finditer(message or ""))
    if not found:
        return None
    tag = found[-1]
    try:
        kind = ErrorKind(tag.group(1))
    except ValueError:
        return None
    subject = tag.group(2)
    body = message[: tag.start()]
    at = body.rfind(f"{subject}: ")
    reason = body[at + len(subject) + 2 :] if at >= 0 else body
    return WireError(kind, subject, " ".join(reason.split())[:_MAX_REASON_CHARS])


# python_backend's texts when /dev/shm cannot hold a region or its growth (src/shm_manager.cc, r24.10).
_SHM_EXHAUSTED = ("failed to increase the shared memory pool", "unable to initialize shared memory key")


def is_shm_exhausted(message: str) -> bool:
    """True for the Python backend's "/dev/shm is full" errors: an overload of the host, not a bad request."""
    lowered = message.lower()
    return any(marker in lowered for marker in _SHM_EXHAUSTED)
