"""What ``/stream`` accepts for SageMaker's bidirectional streaming (docs/deploy/streaming.md).

SageMaker opens the WebSocket at ``/invocations-bidirectional-stream`` (or the client's ``ModelInvocationPath``)
with the client's ``ModelQueryString`` appended, and turns every request part into one frame, binary unless the
client set ``DataType=UTF8``. So the stream settings may come as the query string instead of a first message,
and a first message that is binary may be the JSON config. Both read into the text :func:`parse_config` takes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from fusion_emotion.errors import ErrorKind, ServingError

BIDI_PATH = "/invocations-bidirectional-stream"
"""SageMaker's default container path for a bidirectional stream."""
QUERY_KEYS = ("sample_rate", "encoding", "channels", "hop_s", "window_s")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")


def _value(raw: str) -> Any:
    """A query value as the JSON config would carry it: a number where it reads as one."""
    if _NUMBER.match(raw):
        return int(raw) if raw.lstrip("-").isdigit() else float(raw)
    return raw


def query_config(params: Mapping[str, str]) -> str | None:
    """The config as JSON text when the query string carries settings, else None (a first message must)."""
    if not params:
        return None
    unknown = sorted(set(params) - set(QUERY_KEYS))
    if unknown:
        names = ", ".join(repr(k)[:40] for k in unknown[:6])
        raise ServingError(
            ErrorKind.BAD_REQUEST, "query", f"unknown setting(s) {names}; expected {', '.join(QUERY_KEYS)}"
        )
    return json.dumps({key: _value(params[key]) for key in QUERY_KEYS if key in params})


def config_text(message: Mapping[str, Any]) -> str:
    """The first message's text: a text frame, or a binary one holding UTF-8 JSON (SageMaker's default BINARY)."""
    if message.get("text") is not None:
        return str(message["text"])
    data = message.get("bytes") or b""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text.lstrip().startswith("{"):
        return text
    raise ServingError(
        ErrorKind.BAD_REQUEST,
        "config",
        "the first message must be a JSON object with sample_rate and encoding (send it as text, DataType=UTF8 "
        "through SageMaker), or put the settings in the query string (ModelQueryString)",
    )
