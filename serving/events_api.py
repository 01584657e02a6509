"""`POST /v1/events`: feedback events into the ingress replica's `EventStore` (serving/events.py).

Answers: 200 `{stored, duplicates}` once every new event is in a durable segment; 422 naming the first bad
field (`events[3].type`), with nothing of the request stored; 429 + Retry-After when too many events wait for
a flush (retry: the ids make it idempotent); 503 + Retry-After when storage failed or the replica is stopping;
404 naming `serving.live.events` when events are off. Writing needs the write scope (serving/auth.py).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from fastapi import FastAPI

from fusionrec.data.feedback import EVENT_TYPES
from fusionrec.serving.errors import ApiError
from fusionrec.serving.events import (
    COLUMNS,
    RETRY_AFTER_S,
    Backlogged,
    EventsRequest,
    EventsResponse,
    EventStore,
    StoreClosed,
)
from fusionrec.serving.metrics import ServingMetrics
from fusionrec.serving.router import BackendUnavailable
from fusionrec.serving.schemas import ErrorResponse
from fusionrec.storage import StorageError

ROUTE = "/v1/events"
UNKNOWN_VERSION = "unknown"  # an event that names no model_version
OTHER_VERSION = "other"  # one naming a version this app does not serve (bounded label values)
_TYPE, _VERSION = COLUMNS.index("type"), COLUMNS.index("model_version")


def add_event_routes(app: FastAPI, store: EventStore | None) -> None:
    """Add `POST /v1/events`: into `store`, or (None: `serving.live.events` is false) a 404 that says so."""
    errors: dict[str, Any] = {"model": ErrorResponse}
    if store is None:
        @app.post(ROUTE, status_code=200, responses={code: errors for code in (401, 403, 404)})
        async def events_off() -> None:
            """Feedback events are off in this deployment (serving.live.events: false)."""
            raise ApiError(404, "feedback events are not recorded by this deployment; set serving.live.events: "
                                "true to accept POST /v1/events", "serving.live.events")
        return

    @app.post(ROUTE, response_model=EventsResponse,
              responses={code: errors for code in (400, 401, 403, 408, 413, 422, 429, 503)})
    async def events(body: EventsRequest) -> dict[str, Any]:
        """Record impressions, clicks, purchases and ratings; answered once they are stored durably. An
        event whose id was stored before is acknowledged, not stored again (retries are safe)."""
        try:
            appended = await store.append(body.events)
        except Backlogged as exc:
            raise ApiError(429, f"too many events wait to be stored ({exc}); retry in {RETRY_AFTER_S} s",
                           "events", {"Retry-After": str(RETRY_AFTER_S)}) from None
        except StoreClosed as exc:
            raise BackendUnavailable(f"{exc}; retry in {RETRY_AFTER_S} s") from None
        except StorageError as exc:
            raise BackendUnavailable(f"the events could not be stored ({exc}); nothing of this request was "
                                     f"stored, retry in {RETRY_AFTER_S} s") from None
        return {"stored": appended.stored, "duplicates": appended.duplicates}


def feedback_counter(metrics: ServingMetrics,
                     served: Callable[[], Collection[str]]) -> Callable[[Sequence[tuple[Any, ...]]], None]:
    """The store's `on_stored`: count each stored event by (version, type). A version this app does not serve
    is labelled "other" and a missing one "unknown", so clients cannot grow the label set without bound. Every
    served version's series start at 0 now, at the ingress's start (`ServingMetrics.declare_feedback`)."""
    metrics.declare_feedback(served(), EVENT_TYPES)

    def count(rows: Sequence[tuple[Any, ...]]) -> None:
        versions = served()
        totals: dict[tuple[str, str], int] = {}
        for row in rows:
            named = row[_VERSION]
            version = named if named in versions else (UNKNOWN_VERSION if named is None else OTHER_VERSION)
            totals[(version, row[_TYPE])] = totals.get((version, row[_TYPE]), 0) + 1
        for (version, kind), n in totals.items():
            metrics.observe_feedback(version, kind, n)
    return count
