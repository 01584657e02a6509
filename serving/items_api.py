"""`PUT /v1/items/{item_id}`, `PUT /v1/items`, `DELETE /v1/items/{item_id}`: the ingress's side of live items
(`serving.live.items`; the replicas' side is `fusionrec.serving.live_items`, the stored log
`fusionrec.data.item_log`).

A write is checked before it is stored: every deployed version (weight 0 included: a canary about to get
traffic must be able to serve the item too) renders each item's fields with its own item text template, on
one of its replicas (`prepare_items` through the Router). A field that fails the template, or fields that
render to no text, is 422 naming it (`fields.title`, `items[3].fields`); a version that cannot embed text is
409 naming it. Only then is the change written to the log, as one immutable file, and the answer (200) names
that file. Replicas pick it up within `serving.live.pollSeconds` plus their embedding time. A version that
does not answer makes the write 503 (nothing stored; retrying is safe: an upsert is idempotent).

Retired items: `DELETE` stores a retirement; no version returns the item again from /v1/recommend (candidates
included) or the popularity fallback (the ingress that took the DELETE drops it from the popular lists it
keeps at once; others at their next refresh), and /v1/score leaves it out of `scores`. A history may still name it
(a user did interact with it), and a later PUT brings it back. Retiring an id no version knows is accepted
(the log keeps it, retraining reads it).

With `serving.live.items` false the routes answer 404 naming the setting.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Annotated, Any

from fastapi import FastAPI, Path
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator

from fusionrec.data.item_log import ItemChange, ItemLog
from fusionrec.errors import UserError
from fusionrec.serving.config import RETRY_AFTER_S
from fusionrec.serving.errors import ApiError, invalid
from fusionrec.serving.router import BackendUnavailable, Router
from fusionrec.serving.schemas import MAX_ID_LENGTH, ErrorResponse, Id, _as_id
from fusionrec.spec import LiveSpec, ServingLimits
from fusionrec.storage import StorageError

log = logging.getLogger(__name__)

ITEMS_ROUTE = "/v1/items"
ITEM_ROUTE = "/v1/items/{item_id}"
MAX_FIELDS = 256
MAX_FIELD_NAME = 128
RESERVED_FIELDS = ("item_id",)  # the log's and the retraining frame's own column



def _field_value(value: Any) -> Any:
    """A string, number, boolean or null, or a list of those; numbers finite (the log is strict JSON)."""
    for part in value if isinstance(value, list) else [value]:
        if part is not None and not isinstance(part, (str, int, float, bool)):
            raise ValueError(f"a field is a string, number, boolean, null or a list of those, got "  # noqa: TRY004
                             f"{type(part).__name__}")
        if isinstance(part, float) and not math.isfinite(part):
            raise ValueError(f"numbers must be finite, got {part}")
    return value


FieldValue = Annotated[Any, BeforeValidator(_field_value), WithJsonSchema({
    "anyOf": [{"type": t} for t in ("string", "number", "boolean", "null")]
    + [{"type": "array", "items": {"anyOf": [{"type": t} for t in ("string", "number", "boolean", "null")]}}]})]
Fields = Annotated[dict[str, FieldValue], Field(
    description="The item's fields (title, genres, year, description, ...): strings, numbers, booleans, null, or "
                "lists of those. Each served version renders them with its data.itemTextTemplate; fields the "
                "template does not name are stored too (retraining reads them).")]


def _check_fields(fields: dict[str, Any]) -> dict[str, Any]:
    if len(fields) > MAX_FIELDS:
        raise ValueError(f"at most {MAX_FIELDS} fields, got {len(fields)}")
    for name in fields:
        if not name.strip() or len(name) > MAX_FIELD_NAME:
            raise ValueError(f"field names are 1..{MAX_FIELD_NAME} characters, got {name!r}")
        if name in RESERVED_FIELDS:
            raise ValueError(f"{name!r} is not a field: the item id is given by the path or `item_id`")
    return fields


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ItemFields(_Body):
    fields: Fields

    @field_validator("fields")
    @classmethod
    def _fields(cls, fields: dict[str, Any]) -> dict[str, Any]:
        return _check_fields(fields)


class ItemEntry(ItemFields):
    item_id: Id


class ItemBatch(_Body):
    items: list[ItemEntry] = Field(min_length=1, description="Items to upsert (at most "
                                                             "serving.limits.maxCandidates).")


class ItemsWritten(BaseModel):
    accepted: int = Field(description="Item changes stored.")
    change: str = Field(description="The log file that holds them (changes apply in file-name order).")
    versions: list[str] = Field(description="The versions that checked the items (every deployed version).")


class ItemWriter:
    """The routes' way into the item log: the blocking write off the event loop, a storage failure as 503."""

    def __init__(self, item_log: ItemLog) -> None:
        self.item_log = item_log

    async def write(self, changes: list[ItemChange]) -> str:
        try:
            return await asyncio.to_thread(self.item_log.write, changes)
        except StorageError as exc:
            log.warning("storing an item change failed: %s", exc)
            raise BackendUnavailable(f"the item log could not be written ({exc}); nothing was stored, retry in "
                                     f"{RETRY_AFTER_S} s") from None


def _off() -> ApiError:
    return ApiError(404, "live items are off: set serving.live.items: true to PUT and DELETE /v1/items",
                    "serving.live.items")


def route_label(path: str) -> str | None:
    """The metrics route of an items path (`/v1/items/{item_id}` for any id), None for other paths."""
    if path == ITEMS_ROUTE:
        return ITEMS_ROUTE
    return ITEM_ROUTE if path.startswith(ITEMS_ROUTE + "/") else None


_ITEM_ID = Path(min_length=1, max_length=MAX_ID_LENGTH, description="The item's id.")
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse}
                                            for code in (400, 401, 403, 404, 409, 413, 422, 503)}


def add_item_routes(app: FastAPI, router: Router, writer: ItemWriter | None, limits: ServingLimits) -> None:
    """The three item routes on `app` (`writer` None: serving.live.items is off and they say so)."""

    async def check(items: list[dict[str, Any]], paths: list[str]) -> list[str]:
        """Every deployed version renders every item, or the ApiError of the first that refuses."""
        versions = sorted(router.clients)
        query = {"items": items, "paths": paths}
        await asyncio.gather(*(router.call(version, "prepare_items", query) for version in versions))
        return versions

    async def store(changes: list[ItemChange], paths: list[str]) -> dict[str, Any]:
        assert writer is not None
        upserts = [{"item_id": c.item_id, "fields": c.fields} for c in changes if c.fields is not None]
        versions = await check(upserts, [p for c, p in zip(changes, paths) if c.fields is not None]) \
            if upserts else sorted(router.clients)
        name = await writer.write(changes)
        router.remember_items(c.item_id for c in changes if c.fields is not None)
        router.forget_items(c.item_id for c in changes if c.fields is None)  # out of the popularity fallback now
        return {"accepted": len(changes), "change": name, "versions": versions}

    @app.put(ITEM_ROUTE, response_model=ItemsWritten, responses=_ERRORS)
    async def put_item(body: ItemFields, item_id: str = _ITEM_ID) -> dict[str, Any]:
        """Upsert one item from its fields: recommendable by every version within about
        serving.live.pollSeconds, without retraining."""
        if writer is None:
            raise _off()
        return await store([ItemChange(_path_id(item_id), body.fields)], ["fields"])

    @app.put(ITEMS_ROUTE, response_model=ItemsWritten, responses=_ERRORS)
    async def put_items(body: ItemBatch) -> dict[str, Any]:
        """Upsert many items at once (one stored change, embedded in batches by the replicas)."""
        if writer is None:
            raise _off()
        if len(body.items) > limits.max_candidates:
            raise invalid(f"items has {len(body.items)} entries; at most {limits.max_candidates} "
                          "(serving.limits.maxCandidates)", "items")
        first: dict[str, int] = {}
        for n, entry in enumerate(body.items):
            if first.setdefault(entry.item_id, n) != n:
                raise invalid(f"item_id {entry.item_id!r} is also items[{first[entry.item_id]}]; send each item once",
                              f"items[{n}].item_id")
        return await store([ItemChange(e.item_id, e.fields) for e in body.items],
                           [f"items[{n}].fields" for n in range(len(body.items))])

    @app.delete(ITEM_ROUTE, response_model=ItemsWritten, responses=_ERRORS)
    async def delete_item(item_id: str = _ITEM_ID) -> dict[str, Any]:
        """Retire an item: no version recommends it again (a later PUT brings it back)."""
        if writer is None:
            raise _off()
        return await store([ItemChange(_path_id(item_id), None)], ["item_id"])


def _path_id(item_id: str) -> str:
    try:
        return _as_id(item_id)
    except ValueError as exc:
        raise invalid(str(exc), "item_id") from None


def item_writer(live: LiveSpec) -> ItemWriter | None:
    """The ingress's writer for `serving.live` (None when live items are off)."""
    if not live.items:
        return None
    if not live.uri:  # the deployers resolve it (serving.config.with_live_uri); args written by hand may not
        raise UserError("serving.live.items is true but serving.live.uri is not set", field="serving.live.uri",
                        fix="set serving.live.uri to a local folder, s3:// or gs:// prefix")
    return ItemWriter(ItemLog(live.uri))
