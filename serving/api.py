"""The HTTP API (FastAPI, with OpenAPI at /docs), built per ingress replica around a `Router`.

Order of checks on `/v1/*`: auth (401/403, before anything about the body is revealed), body size (413),
body parsing (400 unreadable JSON, 422 invalid), limits (422), then routing (404 unknown ids). Every refusal
is `{error, field}` JSON; a 500 means a bug. Timing and the request counter wrap everything, including
refusals, so the rollout gate sees every answer.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fusionrec import __version__
from fusionrec.serving.auth import TokenAuth
from fusionrec.serving.errors import ApiError, invalid
from fusionrec.serving.router import BackendUnavailable, Router
from fusionrec.serving.schemas import (
    NEED_USER,
    ErrorResponse,
    RecommendRequest,
    RecommendResponse,
    ScoreRequest,
    ScoreResponse,
)
from fusionrec.spec import ServingLimits

log = logging.getLogger(__name__)

ROUTES = ("/v1/recommend", "/v1/score", "/v1/model", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json")
PROTECTED_PREFIX = "/v1/"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 422, 503)}


def create_api(router: Router, auth: TokenAuth, limits: ServingLimits,
               metrics_text: Callable[[], Awaitable[bytes]] | None = None) -> FastAPI:
    """The FastAPI app of one ingress replica.

    Args:
        router: picks and calls model versions.
        auth: bearer-token check for `/v1/*` (disabled when no token source is configured).
        limits: `serving.limits` (body bytes, k, history length, candidates).
        metrics_text: what `/metrics` returns (default: this replica's registry).
    """
    app = FastAPI(title="fusionrec", version=__version__, responses=_ERRORS,
                  description="Recommendations from a recommender that fuses pretrained language models.")
    _add_error_handlers(app)

    @app.post("/v1/recommend", response_model=RecommendResponse, response_model_exclude_none=True)
    async def recommend(body: RecommendRequest, request: Request) -> dict[str, Any]:
        """Top-k items for a user id or a history; unknown users without history get popular items."""
        _check_lengths(limits, history=body.history, candidates=body.candidates)
        if body.k > limits.max_k:
            raise invalid(f"k must be <= {limits.max_k} (serving.limits.maxK), got {body.k}", "k")
        query = body.model_dump()
        version = request.state.version = router.pick(query)
        return await router.call(version, "recommend", query)

    @app.post("/v1/score", response_model=ScoreResponse, response_model_exclude_none=True)
    async def score(body: ScoreRequest, request: Request) -> dict[str, Any]:
        """Per-item scores: click probability (ctr), rating (rating) or ranking score (ranking)."""
        _check_lengths(limits, history=body.history, candidates=body.item_ids, candidates_field="item_ids")
        query = body.model_dump()
        version = request.state.version = router.pick(query)
        return await router.call(version, "score", query)

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        """Served versions with their weights, encoders, fusion weights and test metrics."""
        return await router.describe()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The ingress is up (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Every version that receives traffic answers (readiness)."""
        versions = await router.ready()
        ready = all(versions.values())
        return JSONResponse({"ready": ready, "versions": versions}, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics of the app, summed over ingress replicas."""
        text = await metrics_text() if metrics_text is not None else router.metrics.render()
        return Response(text, media_type=METRICS_CONTENT_TYPE)

    app.add_middleware(_Guard, auth=auth, max_body_bytes=limits.max_body_bytes)
    app.add_middleware(_Timed, router=router)  # added last = outermost: it also sees the guard's refusals
    return app


def _check_lengths(limits: ServingLimits, *, history: list[str] | None, candidates: list[str] | None,
                   candidates_field: str = "candidates") -> None:
    if history is not None and len(history) > limits.max_history:
        raise invalid(f"history has {len(history)} items; at most {limits.max_history} "
                      "(serving.limits.maxHistory)", "history")
    if candidates is not None and len(candidates) > limits.max_candidates:
        raise invalid(f"{candidates_field} has {len(candidates)} items; at most {limits.max_candidates} "
                      "(serving.limits.maxCandidates)", candidates_field)


# --- errors -------------------------------------------------------------------------------------------------


def _json_error(status: int, message: str, field: str | None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


def _field_of(loc: tuple[Any, ...]) -> str | None:
    """("body", "history", 3) -> "history[3]"; the body itself -> "body"."""
    path = ""
    for piece in loc[1:] if loc and loc[0] == "body" else loc:
        path += f"[{piece}]" if isinstance(piece, int) else (f".{piece}" if path else str(piece))
    return path or "body"


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _json_error(exc.status, exc.message, exc.field, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": "value_error"}
        if first["type"] == "json_invalid":
            return _json_error(400, f"request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".rstrip(": "),
                               None)
        message = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown field"
        elif first["type"] == "missing" and tuple(first["loc"]) == ("body",):
            message = "a JSON object body is required"
        field = _field_of(tuple(first["loc"]))
        if message == NEED_USER:
            field = "user_id"
        if first["type"] == "model_attributes_type" or (first["type"] == "dict_type" and field == "body"):
            message = "the body must be a JSON object"
        return _json_error(422, message, field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code if 400 <= exc.status_code < 600 else 500
        return _json_error(status, str(exc.detail), getattr(exc, "field", None), getattr(exc, "headers", None))

    @app.exception_handler(BackendUnavailable)
    async def unavailable(_: Request, exc: BackendUnavailable) -> JSONResponse:
        return JSONResponse({"error": str(exc), "field": None}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return _json_error(500, "internal error", None)


# --- middleware (pure ASGI: they must see requests that never reach a route) --------------------------------


class _Guard:
    """Auth and the body-size limit for `/v1/*`, before FastAPI reads or parses the body."""

    def __init__(self, app: ASGIApp, auth: TokenAuth, max_body_bytes: int) -> None:
        self.app, self.auth, self.max_body_bytes = app, auth, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        # The API reads JSON only; `curl -d` sends a form content type, which would make FastAPI skip parsing.
        scope = {**scope, "headers": [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-type"]
                 + [(b"content-type", b"application/json")]}
        try:
            self.auth.check(headers.get("authorization"))
            declared = headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
                raise _too_large(self.max_body_bytes, declared)
        except ApiError as exc:
            await _send_json(send, exc.status, exc.as_json(), exc.headers)
            return
        await self.app(scope, self._limited(receive), send)

    def _limited(self, receive: Receive) -> Receive:
        """A chunked body has no Content-Length: count what arrives and stop at the limit."""
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise _BodyTooLarge(self.max_body_bytes)
            return message

        return limited


def _too_large(limit: int, declared: str) -> ApiError:
    return ApiError(413, f"request body is {declared} bytes; at most {limit} (serving.limits.maxBodyBytes)", "body")


class _BodyTooLarge(StarletteHTTPException):
    """Raised while FastAPI reads a chunked body; an HTTPException because FastAPI turns any other error
    during body reading into a 400."""

    field = "body"

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is more than {limit} bytes (serving.limits.maxBodyBytes)")


class _Timed:
    """Counts and times every response by route template, status code and the version that answered."""

    def __init__(self, app: ASGIApp, router: Router) -> None:
        self.app, self.router = app, router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        scope.setdefault("state", {})

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope["path"] if scope["path"] in ROUTES else "other"
            version = scope["state"].get("version")
            self.router.metrics.observe_request(route, status, version, time.perf_counter() - start)


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode("utf-8")
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
