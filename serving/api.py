"""The HTTP API (FastAPI, with OpenAPI at /docs), built per ingress replica around a `Router`.

Order of checks on `/v1/*`: header size (431) and auth (401/403, before anything about the body is revealed),
body size (413), body arrival (408 past the body deadline, see slow_clients.py), body parsing (400 unreadable
JSON, 422 invalid), limits (422), then routing (404 unknown ids, 503 no live replica). Every refusal is
`{error, field}` JSON; a 500 means a bug. Timing and the request counter wrap everything, including refusals,
so the rollout gate sees every answer; a client that hangs up before its answer is counted as 499 (nginx's
code), which is not an error of the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fusionrec import __version__
from fusionrec.serving import openapi
from fusionrec.serving.auth import TokenAuth, needs_write
from fusionrec.serving.config import RETRY_AFTER_S
from fusionrec.serving.errors import ApiError, invalid, send_json
from fusionrec.serving.events import EventStore
from fusionrec.serving.events_api import add_event_routes
from fusionrec.serving.items_api import ItemWriter, add_item_routes, route_label
from fusionrec.serving.metrics import CLIENT_CLOSED
from fusionrec.serving.router import BackendUnavailable, Router
from fusionrec.serving.schemas import (
    NEED_USER,
    ErrorResponse,
    HealthResponse,
    ModelResponse,
    ReadyResponse,
    RecommendRequest,
    RecommendResponse,
    ScoreRequest,
    ScoreResponse,
)
from fusionrec.serving.slow_clients import BODY_TIMEOUT_S, MAX_HEADER_BYTES, SlowClientGuard
from fusionrec.spec import ServingLimits

log = logging.getLogger(__name__)

ROUTES = ("/v1/recommend", "/v1/score", "/v1/model", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json",
          "/v1/events", "/v1/items", "/v1/items/{item_id}")
PROTECTED_PREFIX = "/v1/"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses: the errors a route can give (401/403 are dropped again when auth is off)."""
    return {code: {"model": ErrorResponse} for code in codes}


_QUERY_ERRORS = _errors(400, 401, 403, 404, 408, 413, 422, 503)


def create_api(router: Router, auth: TokenAuth, limits: ServingLimits,
               metrics_text: Callable[[], Awaitable[bytes]] | None = None, *,
               body_timeout_s: float = BODY_TIMEOUT_S, max_header_bytes: int = MAX_HEADER_BYTES,
               events: EventStore | None = None, items: ItemWriter | None = None) -> FastAPI:
    """The FastAPI app of one ingress replica.

    Args:
        router: picks and calls model versions.
        auth: bearer-token check for `/v1/*` (disabled when no token source is configured).
        limits: `serving.limits` (body bytes, k, history length, candidates).
        metrics_text: what `/metrics` returns (default: this replica's registry).
        body_timeout_s: a request's whole body must arrive within this (408 after; see slow_clients.py).
        max_header_bytes: larger request headers are refused (431).
        events: where POST /v1/events stores feedback (None: serving.live.events is off, the route says so).
        items: where PUT/DELETE /v1/items store item changes (None: serving.live.items is off, likewise).
    """
    app = FastAPI(title="fusionrec", version=__version__,
                  description="Recommendations from a recommender that fuses pretrained language models.")
    _add_error_handlers(app)

    @app.post("/v1/recommend", response_model=RecommendResponse, response_model_exclude_none=True,
              responses=_QUERY_ERRORS)
    async def recommend(body: RecommendRequest, request: Request, response: Response) -> dict[str, Any]:
        """Top-k items for a user id or a history; unknown users without history get popular items, and so
        does a request that allows it (no candidates; its own history or exclude_seen false) while its
        version has no live replica."""
        _check_lengths(limits, history=body.history, candidates=body.candidates)
        if body.k > limits.max_k:
            raise invalid(f"k must be <= {limits.max_k} (serving.limits.maxK), got {body.k}", "k")
        query = body.model_dump()
        version = request.state.version = router.pick(query)
        return _with_request_id(await router.call(version, "recommend", query), response)

    @app.post("/v1/score", response_model=ScoreResponse, response_model_exclude_none=True,
              responses=_QUERY_ERRORS)
    async def score(body: ScoreRequest, request: Request, response: Response) -> dict[str, Any]:
        """Per-item scores: click probability (ctr), rating (rating) or ranking score (ranking)."""
        _check_lengths(limits, history=body.history, candidates=body.item_ids, candidates_field="item_ids")
        query = body.model_dump()
        version = request.state.version = router.pick(query)
        return _with_request_id(await router.call(version, "score", query), response)

    @app.get("/v1/model", response_model=ModelResponse, responses=_errors(401, 403))
    async def model() -> dict[str, Any]:
        """Served versions with their weights, encoders, fusion weights and test metrics."""
        return await router.describe()

    @app.get("/healthz", response_model=HealthResponse)
    async def healthz() -> dict[str, str]:
        """The ingress is up (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=ReadyResponse,
             responses={503: {"model": ReadyResponse, "description": "A version with traffic does not answer."}})
    async def readyz() -> JSONResponse:
        """Every version that receives traffic answers (readiness)."""
        versions = await router.ready()
        ready = all(versions.values())
        return JSONResponse({"ready": ready, "versions": versions}, status_code=200 if ready else 503)

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition (version 0.0.4)."},
                        **_errors(503)})
    async def metrics() -> Response:
        """Prometheus metrics of the app, summed over ingress replicas."""
        text = await metrics_text() if metrics_text is not None else router.metrics.render()
        return Response(text, media_type=METRICS_CONTENT_TYPE)

    add_event_routes(app, events)
    add_item_routes(app, router, items, limits)
    app.add_middleware(_Guard, auth=auth, max_body_bytes=limits.max_body_bytes)
    app.add_middleware(SlowClientGuard, body_timeout_s=body_timeout_s, max_header_bytes=max_header_bytes)
    app.add_middleware(_Timed, router=router)  # added last = outermost: it also sees the guards' refusals
    openapi.install(app, protected_prefix=PROTECTED_PREFIX, auth_enabled=auth.enabled, limits=limits)
    return app


def _with_request_id(answer: dict[str, Any], response: Response) -> dict[str, Any]:
    """A fresh id per answer (cached answers too), in the body and `X-Request-Id`: feedback events name it,
    with the answer's model_version, so clicks are credited to the version that recommended the item."""
    request_id = uuid.uuid4().hex
    response.headers["X-Request-Id"] = request_id
    return {**answer, "request_id": request_id}


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
        first: dict[str, Any] = dict(errors[0]) if errors else {"loc": ("body",), "msg": "invalid request",
                                                                 "type": "value_error"}
        if first["type"] == "json_invalid":
            reason = first.get("ctx", {}).get("error", "")
            return _json_error(400, f"request body is not valid JSON: {reason}".rstrip(": "), None)
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
        return JSONResponse({"error": str(exc), "field": None}, status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(ClientDisconnect)
    async def hung_up(_: Request, __: ClientDisconnect) -> Response:
        # Nobody reads this answer; `_Timed` counts the request as 499 because it saw the disconnect.
        return Response(status_code=CLIENT_CLOSED)

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
            # Every value, not the dict's last one: two Authorization headers are refused (serving/auth.py).
            self.auth.check([value.decode("latin-1") for name, value in scope.get("headers", [])
                             if name.lower() == b"authorization"], write=needs_write(scope["method"], scope["path"]))
            declared = headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
                raise _too_large(self.max_body_bytes, declared)
        except ApiError as exc:
            await send_json(send, exc.status, exc.as_json(), exc.headers)
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
    """Counts and times every response by route template, status code and the version that answered.

    A client that hangs up (or whose own timeout fires) before its answer is counted as 499, not 500: Serve
    cancels the ingress's request when the proxy sees the disconnect, and Starlette raises ClientDisconnect
    when one arrives while the body is read. Neither is an error of the server, and the rollout gate and the
    alert must not roll back a healthy version for impatient clients. A 408 (the client did not send its body
    in time) is counted but not timed: its latency is the client's slowness, not the server's.
    """

    def __init__(self, app: ASGIApp, router: Router) -> None:
        self.app, self.router = app, router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        started = answered = hung_up = False
        scope.setdefault("state", {})

        async def watch_receive() -> Message:
            nonlocal hung_up
            message = await receive()
            # FastAPI answers a disconnect during the body read with a 400 nobody receives: still a hang-up.
            hung_up = hung_up or (message["type"] == "http.disconnect" and not started)
            return message

        async def record_status(message: Message) -> None:
            nonlocal status, started, answered
            if message["type"] == "http.response.start":
                status, started = int(message["status"]), True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True
            await send(message)

        try:
            await self.app(scope, watch_receive, record_status)
        except asyncio.CancelledError:
            hung_up = hung_up or not answered
            raise
        finally:
            if hung_up:
                status = CLIENT_CLOSED
            route = scope["path"] if scope["path"] in ROUTES else (route_label(scope["path"]) or "other")
            version = scope["state"].get("version")
            seconds = None if status == 408 else time.perf_counter() - start
            self.router.metrics.observe_request(route, status, version, seconds)
