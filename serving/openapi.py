"""The OpenAPI document of one deployment: FastAPI's, plus what only the deployment knows.

Why post-process: auth is checked in a middleware (before the body is read), so FastAPI cannot see it, and the
limits on `k`, `history`, `candidates` and `item_ids` are settings of the deployment (`serving.limits`), not of
the schema. A client generated from `/openapi.json`, or a fuzzer reading it, must see both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from fusionrec.spec import ServingLimits

BEARER = "bearer"


def install(app: FastAPI, *, protected_prefix: str, auth_enabled: bool, limits: ServingLimits) -> None:
    """Replace `app.openapi` with one that declares bearer auth (on `protected_prefix` routes, when enabled)
    and the deployment's limits; built once, on first use."""
    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not cached:
            cached.update(document(app, protected_prefix=protected_prefix, auth_enabled=auth_enabled,
                                   limits=limits))
        return cached

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise the document


def document(app: FastAPI, *, protected_prefix: str, auth_enabled: bool, limits: ServingLimits) -> dict[str, Any]:
    """The document (see `install`)."""
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})[BEARER] = {
        "type": "http", "scheme": "bearer",
        "description": "A token from serving.auth (tokenFile, tokenEnv or secretRef); 401 without one, 403 wrong."}
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            if auth_enabled and path.startswith(protected_prefix):
                operation["security"] = [{BEARER: []}]
            else:  # no auth here: 401/403 cannot happen
                for status in ("401", "403"):
                    operation["responses"].pop(status, None)
    schemas = components.get("schemas", {})
    _limit(schemas, "RecommendRequest", "k", lambda p: p.update(maximum=limits.max_k))
    for model in ("RecommendRequest", "ScoreRequest"):
        _limit(schemas, model, "history", _max_items(limits.max_history))
    _limit(schemas, "RecommendRequest", "candidates", _max_items(limits.max_candidates))
    _limit(schemas, "ScoreRequest", "item_ids", _max_items(limits.max_candidates))
    return schema


def _max_items(limit: int) -> Callable[[dict[str, Any]], None]:
    def apply(prop: dict[str, Any]) -> None:
        for option in prop.get("anyOf", [prop]):  # `list[Id] | None` is anyOf [array, null]
            if option.get("type") == "array":
                option["maxItems"] = limit
    return apply


def _limit(schemas: dict[str, Any], model: str, field: str, apply: Callable[[dict[str, Any]], None]) -> None:
    prop = schemas.get(model, {}).get("properties", {}).get(field)
    if prop is None:
        raise KeyError(f"the OpenAPI schema of {model} has no property {field!r}; serving/openapi.py is stale")
    apply(prop)
