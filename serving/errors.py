"""Errors the HTTP API returns as `{error, field}` JSON with a 4xx status.

Every client mistake maps to one of these (400 unreadable body, 401/403 auth, 404 unknown id or route,
413 body too large, 422 well-formed but invalid), so a 500 always means a bug or an outage, which is what the
rollout's error-rate gate counts.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Send


class ApiError(Exception):
    """A client error with its HTTP status and the request field it concerns (None when not one field)."""

    def __init__(self, status: int, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        if not 400 <= status < 500:
            raise ValueError(f"ApiError is for client errors (4xx), got status {status}")
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}

    def as_json(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field}


def not_found(message: str, field: str) -> ApiError:
    return ApiError(404, message, field)


def invalid(message: str, field: str | None) -> ApiError:
    return ApiError(422, message, field)


async def send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    """Answer from a pure ASGI middleware, which runs outside FastAPI's exception handlers."""
    payload = json.dumps(body).encode("utf-8")
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
