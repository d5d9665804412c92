"""The one exception type handlers raise: an HTTP status plus a client-safe message."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A request failed for a reason the client may see; ``message`` never holds internals."""

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
