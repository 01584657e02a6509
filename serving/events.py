"""Feedback events (impressions, clicks, purchases, ratings): validated, de-duplicated, and stored durably in
immutable Parquet segments before they are acknowledged.

Why group commit: one durable write per event (an fsync locally, a PUT on S3) caps ingestion at the storage's
round trips per second and leaves millions of tiny objects. Here requests wait together on a flush that writes
ONE segment for everything that arrived since the last one, at most one flush per `flush_interval_s` (sooner
at `max_batch` events), so a request is answered only once its events are in storage, and a crash at any
moment loses no acknowledged event.

    <live>/events/<replica>/<13-digit ms>-<seq>-<random>.parquet   one flush of one ingress replica
    <live>/events/<replica>/<newest merged>-c-<random>.parquet     a compaction of small segments

Columns are the event record (event_id, user_id, item_id, type, value, timestamp, request_id, model_version),
so a segment is also an interactions file of the data readers (user_id, item_id, timestamp; map
`rating=value` to read ratings).

Idempotency: a request whose event ids were already stored is acknowledged without storing them again. Each
ingress replica keeps the ids it recently stored (bounded; rebuilt at start from the newest segments of all
replicas), and a retry that races its own first attempt waits for that attempt's flush. A retry that reaches
another ingress replica at the same moment, or one older than the recent-id window, can land twice in storage:
readers (`fusionrec.data.feedback.read_events`) therefore de-duplicate by event_id, always, and compaction
does too. Only the per-replica counter `fusionrec_feedback_events_total` can count such a retry twice.

Bounded memory: at most `max_pending` events wait for a flush; a request that would exceed it is refused
whole with 429 and Retry-After (retrying is safe: ids make it idempotent). A request with one invalid event
is refused whole (422) before anything is queued, so no segment ever holds a bad record.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import os
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from fusionrec.data.feedback import (
    EVENT_COLUMNS,
    EVENT_SCHEMA,
    SEGMENT_SUFFIX,
    decode_segment,
    events_location,
    list_segments,
)
from fusionrec.serving.schemas import Id
from fusionrec.storage import Location, StorageError, delete_object, list_objects, read_object, write_object

log = logging.getLogger(__name__)

MIN_RATING, MAX_RATING = 0.0, 10.0  # stars or scores; rescale a larger scale before sending
MAX_VALUE = 1e6  # a non-rating value (a quantity, an amount) beyond this is a client bug
MAX_FUTURE_S = 86_400  # clocks drift, but a day ahead is a wrong unit (milliseconds) or a wrong date
MAX_EVENTS_PER_REQUEST = 1000
RETRY_AFTER_S = 1
COLUMNS = EVENT_COLUMNS


# --- the wire format ----------------------------------------------------------------------------------------------


def _as_seconds(value: Any) -> int:
    """Seconds since the epoch from a number or an ISO-8601 date (UTC when it names no zone)."""
    if value is None:
        return int(time.time())
    if isinstance(value, bool):
        raise ValueError("timestamp must be seconds since the epoch or an ISO-8601 date, got a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("timestamp must be finite")
        seconds = math.floor(value)
    elif isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d{1,12}", text):
            seconds = int(text)
        else:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(f"timestamp {value[:64]!r} is neither seconds since the epoch nor an ISO-8601 "
                                 "date (2024-05-01T12:00:00Z)") from None
            seconds = math.floor((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())
    else:
        raise ValueError(f"timestamp must be seconds since the epoch or an ISO-8601 date, got "
                         f"{type(value).__name__}")
    if seconds < 0:
        raise ValueError(f"timestamp {seconds} is before 1970")
    if seconds > time.time() + MAX_FUTURE_S:
        raise ValueError(f"timestamp {seconds} is more than a day in the future (timestamps are seconds since the "
                         "epoch, not milliseconds)")
    return seconds


Timestamp = Annotated[int, BeforeValidator(_as_seconds), WithJsonSchema({
    "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "format": "date-time"}],
    "description": "Seconds since the epoch, or an ISO-8601 date (UTC when it names no zone); at most a day "
                   "ahead. Default: when the ingress received the event."})]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field must not be silently dropped


class FeedbackEvent(_Body):
    """One thing a user did with an item, and (when it followed a recommendation) the answer that showed it."""

    event_id: Id = Field(description="The idempotency key: a retry with the same id is stored once.")
    user_id: Id
    item_id: Id
    type: Literal["impression", "click", "purchase", "rating"]
    value: StrictFloat | None = Field(
        None, allow_inf_nan=False, validate_default=True,
        description=f"A rating's value ({MIN_RATING:g}..{MAX_RATING:g}, required for ratings); other types: "
                    f"default 1.0, 0..{MAX_VALUE:g} (e.g. a quantity).")
    timestamp: Timestamp = Field(None, validate_default=True)  # None -> now, by _as_seconds
    request_id: Id | None = Field(None, description="The request_id of the /v1/recommend or /v1/score answer.")
    model_version: Id | None = Field(None, description="The model_version of that answer.")

    @field_validator("value")
    @classmethod
    def _value_fits_type(cls, value: float | None, info: ValidationInfo) -> float:
        kind = info.data.get("type")
        if kind == "rating":
            if value is None:
                raise ValueError("a rating needs its value")
            if not MIN_RATING <= value <= MAX_RATING:
                raise ValueError(f"a rating's value must be {MIN_RATING:g}..{MAX_RATING:g}, got {value:g} "
                                 "(rescale larger scales)")
            return float(value)
        if value is None:
            return 1.0
        if not 0 <= value <= MAX_VALUE:
            raise ValueError(f"value must be 0..{MAX_VALUE:g} for a {kind or 'non-rating'} event, got {value:g}")
        return float(value)

    def record(self) -> tuple[Any, ...]:
        """The row stored in a segment, in `COLUMNS` order."""
        return (self.event_id, self.user_id, self.item_id, self.type, self.value, self.timestamp,
                self.request_id, self.model_version)


class EventsRequest(_Body):
    events: list[FeedbackEvent] = Field(min_length=1, max_length=MAX_EVENTS_PER_REQUEST,
                                        description="One or more events; all are stored, or none.")


class EventsResponse(BaseModel):
    stored: int = Field(description="Events stored by this request.")
    duplicates: int = Field(description="Events whose id was already stored (acknowledged, not stored again).")


# --- segments -----------------------------------------------------------------------------------------------------


def replica_folder_name(replica: str) -> str:
    """A replica's id as one safe path segment (Serve's ids are random; a test's may be anything)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", replica).strip(".-")[:100]
    if not name:
        raise ValueError(f"replica name {replica!r} has no letter or digit")
    return name


def encode_segment(rows: Sequence[tuple[Any, ...]]) -> bytes:
    columns: list[Sequence[Any]] = list(zip(*rows, strict=True)) if rows else [[] for _ in COLUMNS]
    table = pa.Table.from_arrays([pa.array(list(c), type=f.type)
                                  for c, f in zip(columns, EVENT_SCHEMA, strict=True)], schema=EVENT_SCHEMA)
    return _parquet_bytes(table)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _newest_ids(events: Location, capacity: int) -> list[str]:
    """Up to `capacity` event ids of the newest segments, oldest first (what a starting replica remembers)."""
    found: list[list[str]] = []
    total = 0
    for name in reversed(list_segments(events)):
        try:
            table = decode_segment(read_object(events.child(name)), ["event_id"])
        except StorageError as exc:
            if exc.not_found:  # compacted away since the listing; its events are in the merged segment
                continue
            raise
        ids = table.column("event_id").to_pylist()
        found.append(ids)
        total += len(ids)
        if total >= capacity:
            break
    flat = [i for ids in reversed(found) for i in ids]
    return flat[-capacity:]


def compact_folder(events: Location, folder: str, *, min_segments: int = 16, small_bytes: int = 8 << 20) -> int:
    """Merge the small segments of one replica folder into one (de-duplicated by event_id); returns how many
    were merged. The merged segment is written first and the sources deleted after, so a crash in between
    leaves events twice, never zero times (readers de-duplicate). Safe beside a live writer of the folder (it
    only adds new names) and beside another compaction (both merge, both delete; duplicates again)."""
    listing = list_objects(events.child(folder))
    small = sorted(n for n, info in listing.items()
                   if n.endswith(SEGMENT_SUFFIX) and "/" not in n and info["size"] < small_bytes)
    if len(small) < min_segments:
        return 0
    tables = []
    for name in small:
        try:
            tables.append(decode_segment(read_object(events.child(folder, name))))
        except StorageError as exc:
            if not exc.not_found:
                raise
    if not tables:
        return 0
    merged = pa.concat_tables(tables)
    seen: set[str] = set()
    keep = [not (i in seen or seen.add(i)) for i in merged.column("event_id").to_pylist()]  # type: ignore[func-returns-value]
    merged = merged.filter(pa.array(keep))
    newest = small[-1].removesuffix(SEGMENT_SUFFIX).split("-c-", 1)[0]
    write_object(events.child(folder, f"{newest}-c-{uuid.uuid4().hex[:8]}{SEGMENT_SUFFIX}"), _parquet_bytes(merged))
    for name in small:
        delete_object(events.child(folder, name))
    log.info("compacted %d event segments of %s/%s (%d events)", len(small), events.uri, folder, merged.num_rows)
    return len(small)


def compact_segments(live_uri: str | os.PathLike[str], **options: Any) -> int:
    """`compact_folder` for every replica folder (those of replicas long gone included); returns segments merged."""
    events = events_location(live_uri)
    folders = sorted({n.split("/", 1)[0] for n in list_segments(events) if "/" in n})
    return sum(compact_folder(events, folder, **options) for folder in folders)


# --- the store ----------------------------------------------------------------------------------------------------


class Backlogged(Exception):
    """More events wait for a flush than the store holds: refuse (429), the client retries later."""


class StoreClosed(Exception):
    """The replica is shutting down: refuse (503), the client retries on another replica."""


@dataclass
class _Pending:
    rows: list[tuple[Any, ...]]
    done: asyncio.Future[None]


@dataclass(frozen=True)
class Appended:
    stored: int
    duplicates: int


class RecentIds:
    """The last `capacity` ids stored, for O(1) duplicate checks; the oldest are forgotten first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add_all(self, ids: Iterable[str]) -> None:
        for event_id in ids:
            self._ids[event_id] = None
            self._ids.move_to_end(event_id)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)


class EventStore:
    """One ingress replica's durable, idempotent event log (group commit into immutable segments).

    Args:
        live_uri: `serving.live.uri` (local folder, file://, s3://, gs://); segments go to `<live>/events/<replica>/`.
        replica: this writer's name; one writer per name (Serve's replica ids are unique).
        flush_interval_s: at most one segment per interval: events arriving within it of the last flush wait
            for the next one (up to this plus a write), an event after a quiet spell is written at once.
        max_batch: a segment is written at once when this many events wait.
        max_pending: events waiting for a flush, at most; more is 429.
        recent_ids: ids remembered for idempotency.
        compact_every: after this many segments of its own, merge them (`compact_folder`).
        on_stored: called with the rows of each segment once it is durable (the per-version counters).
    """

    def __init__(self, live_uri: str | os.PathLike[str], replica: str, *, flush_interval_s: float = 0.05,
                 max_batch: int = 5000, max_pending: int = 20_000, recent_ids: int = 200_000,
                 compact_every: int = 64,
                 on_stored: Callable[[Sequence[tuple[Any, ...]]], None] | None = None) -> None:
        if max_pending < MAX_EVENTS_PER_REQUEST or max_batch < 1:
            raise ValueError(f"max_pending must hold a whole request ({MAX_EVENTS_PER_REQUEST} events) and "
                             "max_batch be positive")
        self.events = events_location(live_uri)
        self.folder = replica_folder_name(replica)
        self.flush_interval_s, self.max_batch, self.max_pending = flush_interval_s, max_batch, max_pending
        self.compact_every = compact_every
        self.on_stored = on_stored
        self.recent = RecentIds(recent_ids)
        self.pending_events = 0  # queued + being written: what `max_pending` bounds
        self.peak_pending = 0
        self._queue: list[_Pending] = []
        self._queued_events = 0
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._compacting: asyncio.Task[None] | None = None
        self._closed = False
        self._seq = 0
        self._last_flush = 0.0  # monotonic start of the last flush
        self._since_compaction = 0

    # lifecycle

    async def start(self) -> None:
        """Remember the newest stored ids (a restart must not store a retry again), then accept events."""
        if self._task is not None:
            return
        ids = await asyncio.to_thread(_newest_ids, self.events, self.recent.capacity)
        self.recent.add_all(ids)
        log.info("event store %s/%s: %d recent ids remembered", self.events.uri, self.folder, len(self.recent))
        self._task = asyncio.get_running_loop().create_task(self._flush_forever())

    async def close(self) -> None:
        """Write what waits, then stop; appends after this are refused (503)."""
        self._closed = True
        self._wake.set()
        self._full.set()
        if self._task is not None:
            await self._task
        if self._compacting is not None:
            await self._compacting

    # appending

    async def append(self, events: Sequence[FeedbackEvent]) -> Appended:
        """Store the new events among `events` durably; return once they (and any earlier attempt of the
        duplicates still being written) are in storage.

        Raises:
            Backlogged: too many events wait already; nothing of this request was queued.
            StoreClosed: the store is closing.
            StorageError: the segment could not be written (nothing of it is visible; a retry is safe).
        """
        if self._closed or self._task is None:
            raise StoreClosed("the event store is not accepting events (the replica is starting or stopping)")
        rows: list[tuple[Any, ...]] = []
        waits: set[asyncio.Future[None]] = set()
        seen: set[str] = set()
        for event in events:
            if event.event_id in seen or event.event_id in self.recent:
                continue
            seen.add(event.event_id)
            earlier = self._inflight.get(event.event_id)
            if earlier is not None:
                waits.add(earlier)
            else:
                rows.append(event.record())
        if rows and self.pending_events + len(rows) > self.max_pending:
            raise Backlogged(f"{self.pending_events} events wait to be stored (at most {self.max_pending})")
        if rows:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            for row in rows:
                self._inflight[row[0]] = done
            self._queue.append(_Pending(rows, done))
            self._queued_events += len(rows)
            self.pending_events += len(rows)
            self.peak_pending = max(self.peak_pending, self.pending_events)
            self._wake.set()
            if self._queued_events >= self.max_batch:
                self._full.set()
            waits.add(done)
        for future in waits:
            await asyncio.shield(future)  # a client that hangs up does not cancel the flush others wait on
        return Appended(stored=len(rows), duplicates=len(events) - len(rows))

    # flushing

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            if not self._queue:
                self._wake.clear()
                if self._closed:
                    return
                continue
            linger = self._last_flush + self.flush_interval_s - time.monotonic()
            if linger > 0 and not self._closed:
                try:  # at most one segment per interval: more events join this one, unless it is full already
                    await asyncio.wait_for(self._full.wait(), linger)
                except TimeoutError:
                    pass
            self._last_flush = time.monotonic()
            batch: list[_Pending] = []
            size = 0
            while self._queue and (not batch or size + len(self._queue[0].rows) <= self.max_batch):
                item = self._queue.pop(0)
                batch.append(item)
                size += len(item.rows)
            self._queued_events -= size
            if self._queued_events < self.max_batch and not self._closed:
                self._full.clear()
            await self._write(batch)

    async def _write(self, batch: list[_Pending]) -> None:
        rows = [row for item in batch for row in item.rows]
        self._seq += 1
        name = f"{int(time.time() * 1000):013d}-{self._seq:06d}-{uuid.uuid4().hex[:8]}{SEGMENT_SUFFIX}"
        error: BaseException | None = None
        try:
            target = self.events.child(self.folder, name)
            # Parquet + zstd of a whole batch is CPU work: in the thread too, never on the ingress's event loop.
            await asyncio.to_thread(lambda: write_object(target, encode_segment(rows)))
        except Exception as exc:  # noqa: BLE001  (every waiter gets it; the loop must go on)
            log.warning("writing event segment %s failed: %s", name, exc)
            error = exc
        if error is None:
            self.recent.add_all(row[0] for row in rows)
            if self.on_stored is not None:
                try:
                    self.on_stored(rows)
                except Exception:  # noqa: BLE001  (a metrics bug must not fail stored events)
                    log.exception("on_stored failed")
        for row in rows:
            self._inflight.pop(row[0], None)
        self.pending_events -= len(rows)
        for item in batch:
            if not item.done.done():
                if error is None:
                    item.done.set_result(None)
                else:
                    item.done.set_exception(error)
                    item.done.exception()  # retrieved: a waiter that hung up must not log "never retrieved"
        if error is None:
            self._since_compaction += 1
            if self._since_compaction >= self.compact_every and (self._compacting is None or self._compacting.done()):
                self._since_compaction = 0
                self._compacting = asyncio.get_running_loop().create_task(self._compact())

    async def _compact(self) -> None:
        try:
            await asyncio.to_thread(compact_folder, self.events, self.folder, min_segments=self.compact_every)
        except Exception as exc:  # noqa: BLE001  (compaction is an optimisation; the segments stay readable)
            log.warning("compacting event segments of %s failed: %s", self.folder, exc)
