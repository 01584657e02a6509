"""The live item log: every accepted item upsert or retirement, stored durably beside the versions, so every model
replica (including one that starts later) and every retraining sees the same catalogue changes.

Layout under `<serving.live.uri>/items/`, through `fusionrec.storage` (a local folder, pvc mount, s3://, gs://):

    <time_ns:020d>-<32 hex>.json            one accepted write (one PUT, or temp + rename locally): its changes
    snapshot-<time_ns:020d>-<32 hex>.json   a compaction: the state of every item any change ever named

Why one immutable object per write: object stores have no append, and several ingress replicas write at once.
A name never collides (random suffix) and is never rewritten, so a reader sees a whole change or none.

Why "last writer wins by name" instead of "apply in listing order": a write can become visible after a reader
has already read a later name. Every change carries its file's name, and an item's state is the change with
the greatest name, whatever order the files are read in.

The apply order guarantee: a write acknowledged before another write starts is ordered before it, whatever
the ingress replicas' clocks say. A writer lists the log before it writes and names its file strictly after
the greatest name it has seen (its own writes' included): `max(now, newest seen + 1 ns)`, so a DELETE taken
by an ingress whose clock is behind the one that stored an earlier PUT still wins. A compaction names its
snapshot after every change it folded, so a listing shows the newest name even once they are deleted.
Writes that overlap in time (neither acknowledged before the other started) are ordered by their names,
either way. Replay is
therefore idempotent and order-free: a reader applies every snapshot and every change file it finds (a file
already folded into a snapshot, or read twice, changes nothing), and a late file is still applied when it
shows up. Within one file, later changes of the same item win.

Compaction (past `COMPACT_AT` change files) writes the snapshot first, then deletes the change files and older
snapshots it folded in; a crash between the two leaves both, which readers tolerate. Two racing compactions
each write a snapshot consistent with what they read; both are applied by readers, and the next compaction
folds them. A file deleted between a reader's listing and its read is skipped: the snapshot that folded it
was written before the deletion and is read on the next poll.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fusionrec.storage import Location, StorageError, delete_object, list_objects, read_object, resolve, write_object

log = logging.getLogger(__name__)

ITEMS_FOLDER = "items"
FORMAT = 1
COMPACT_AT = 256  # change files beside the snapshots before a writer folds them into a new snapshot
_CHANGE_RE = re.compile(r"^(\d{20})-([0-9a-f]{32})\.json$")
_SNAPSHOT_RE = re.compile(r"^snapshot-(\d{20})-([0-9a-f]{32})\.json$")

Fields = dict[str, Any]


@dataclass(frozen=True)
class ItemChange:
    """One item's change: an upsert (`fields` given) or a retirement (`fields` None). `name` is the file that
    stored it, which orders changes of the same item (last writer wins)."""

    item_id: str
    fields: Fields | None
    name: str = ""

    @property
    def retired(self) -> bool:
        return self.fields is None


@dataclass
class ItemState:
    """Every item any change named: `item_id -> (name of the winning change, fields or None when retired)`."""

    items: dict[str, tuple[str, Fields | None]] = field(default_factory=dict)

    def apply(self, change: ItemChange) -> bool:
        """Fold one change in; True when it won (it is newer than what the item had)."""
        current = self.items.get(change.item_id)
        if current is not None and current[0] >= change.name:  # equal: the same change read again
            return False
        self.items[change.item_id] = (change.name, change.fields)
        return True

    @property
    def upserted(self) -> dict[str, Fields]:
        return {item: fields for item, (_, fields) in self.items.items() if fields is not None}

    @property
    def retired(self) -> set[str]:
        return {item for item, (_, fields) in self.items.items() if fields is None}

    def changes(self) -> list[ItemChange]:
        return [ItemChange(item, fields, name) for item, (name, fields) in self.items.items()]


def new_name(prefix: str = "", after_ns: int = -1) -> str:
    """`<prefix><time_ns:020d>-<uuid4 hex>.json`, its time at least `after_ns + 1`: sorts by write time, and
    after every name the writer has seen (see the module docstring); never collides."""
    return f"{prefix}{max(time.time_ns(), after_ns + 1):020d}-{uuid.uuid4().hex}.json"


def name_time(name: str) -> int:
    """The time (ns) a change file's or a snapshot's name orders by; -1 for any other name."""
    match = _CHANGE_RE.match(name) or _SNAPSHOT_RE.match(name)
    return int(match.group(1)) if match else -1


def encode_changes(changes: Iterable[ItemChange]) -> bytes:
    rows = [{"item_id": c.item_id, "fields": c.fields} if c.fields is not None
            else {"item_id": c.item_id, "retired": True} for c in changes]
    return json.dumps({"format": FORMAT, "changes": rows}, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode("utf-8")


def decode_changes(data: bytes, name: str) -> list[ItemChange]:
    """A change file's changes, each stamped with the file's name, the last one of each item only (ValueError for
    a file that is not one)."""
    document = json.loads(data)
    if not isinstance(document, dict) or document.get("format") != FORMAT or not isinstance(
            document.get("changes"), list):
        raise ValueError(f"{name} is not a format-{FORMAT} item change file")
    out: dict[str, ItemChange] = {}
    for row in document["changes"]:
        fields = None if row.get("retired") else row["fields"]
        if fields is not None and not isinstance(fields, dict):
            raise ValueError(f"{name}: the fields of {row.get('item_id')!r} are not an object")
        item = str(row["item_id"])
        out.pop(item, None)  # a later change of the same item in one file wins, in its place
        out[item] = ItemChange(item, fields, name)
    return list(out.values())


def _encode_snapshot(state: ItemState) -> bytes:
    rows = [{"item_id": item, "change": name, "fields": fields} for item, (name, fields) in sorted(state.items.items())]
    return json.dumps({"format": FORMAT, "items": rows}, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode("utf-8")


def _decode_snapshot(data: bytes, name: str) -> list[ItemChange]:
    document = json.loads(data)
    if not isinstance(document, dict) or document.get("format") != FORMAT \
            or not isinstance(document.get("items"), list):
        raise ValueError(f"{name} is not a format-{FORMAT} item snapshot")
    return [ItemChange(str(row["item_id"]), row["fields"], str(row["change"])) for row in document["items"]]


class ItemLog:
    """The item change log under `<live uri>/items/`: write, read what is new, compact.

    Args:
        live_uri: `serving.live.uri` (resolved by the deployer).
        compact_at: change files that trigger a compaction when `write` checks (see `maybe_compact`).
    """

    def __init__(self, live_uri: str, *, compact_at: int = COMPACT_AT) -> None:
        self.root: Location = resolve(live_uri).child(ITEMS_FOLDER)
        self.compact_at = compact_at
        self._writes_since_check = math.inf  # the first write checks
        self._newest_ns = -1  # the greatest name time this writer has listed or written (`_next_name`)
        self.vanished = 0  # files the last `read_new` listed but found deleted (folded by a compaction)

    # --- writing -----------------------------------------------------------------------------------------

    def write(self, changes: Iterable[ItemChange]) -> str:
        """Store one accepted write durably (whole or not at all) and return its file name; folds the log into
        a snapshot now and then. Raises StorageError when storage failed (nothing was stored then)."""
        name = self._next_name()
        write_object(self.root.child(name), encode_changes(changes))
        self._writes_since_check += 1
        if self._writes_since_check >= max(1, self.compact_at // 8):
            self._writes_since_check = 0
            try:
                self.maybe_compact()
            except (StorageError, ValueError) as exc:  # the write is stored; a compaction is retried later
                log.warning("compacting the item log %s failed: %s", self.root.uri, exc)
        return name

    def maybe_compact(self) -> str | None:
        """Compact when more than `compact_at` change files are listed; the snapshot's name, else None."""
        changes, _ = self._listing()
        return self.compact() if len(changes) > self.compact_at else None

    def compact(self) -> str | None:
        """Fold every snapshot and change file listed now into one new snapshot (written first), then delete
        what it folded. None when there was nothing to fold."""
        changes, snapshots = self._listing()
        if not changes and len(snapshots) <= 1:
            return None
        state = ItemState()
        folded = []
        for name in snapshots + changes:
            try:
                read = self._read(name)
            except ValueError as exc:  # kept where it is, never deleted: someone may want to look at it
                log.error("not compacting unreadable item log file %s/%s: %s", self.root.uri, name, exc)
                continue
            if read is None:
                continue
            for change in read:
                state.apply(change)
            folded.append(name)
        newest = max((name_time(change.name) for change in state.changes()), default=-1)
        snapshot = self._next_name("snapshot-", newest)  # after every change it folds (the module docstring)
        write_object(self.root.child(snapshot), _encode_snapshot(state))
        for name in folded:
            delete_object(self.root.child(name))
        log.info("item log %s: %d files folded into %s (%d items)", self.root.uri, len(folded), snapshot,
                 len(state.items))
        return snapshot

    def _next_name(self, prefix: str = "", after_ns: int = -1) -> str:
        """A new file's name, strictly after every name listed now and every name this writer wrote: one
        listing per write (the apply order guarantee, module docstring)."""
        changes, snapshots = self._listing()
        listed = max((name_time(n) for n in changes[-1:] + snapshots[-1:]), default=-1)
        name = new_name(prefix, max(self._newest_ns, listed, after_ns))
        self._newest_ns = name_time(name)
        return name

    # --- reading -----------------------------------------------------------------------------------------

    def _listing(self) -> tuple[list[str], list[str]]:
        """(change file names, snapshot names), each sorted; other and hidden names (temp files) left out."""
        names = sorted(n for n in list_objects(self.root) if "/" not in n)
        return [n for n in names if _CHANGE_RE.match(n)], [n for n in names if _SNAPSHOT_RE.match(n)]

    def _read(self, name: str) -> list[ItemChange] | None:
        """A file's changes, or None when it was deleted since the listing (a compaction folded it)."""
        try:
            data = read_object(self.root.child(name))
        except StorageError as exc:
            if exc.not_found:
                return None
            raise
        try:
            return _decode_snapshot(data, name) if name.startswith("snapshot-") else decode_changes(data, name)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{name}: malformed ({type(exc).__name__}: {exc})") from None

    def read_new(self, seen: set[str]) -> list[ItemChange]:
        """Changes of the snapshots and change files not in `seen` (which is updated, and pruned of names no
        longer listed), snapshots first, then files in name order. Appliers fold them with last-writer-wins
        (`ItemState.apply`), so the order only matters for speed. Raises StorageError (a retry may succeed)."""
        changes, snapshots = self._listing()
        listed = set(changes) | set(snapshots)
        seen.intersection_update(listed)
        self.vanished = 0
        out: list[ItemChange] = []
        for name in snapshots + changes:
            if name in seen:
                continue
            try:
                read = self._read(name)
            except ValueError as exc:  # not ours, or damaged: never half-applied, logged once
                log.error("skipping unreadable item log file %s/%s: %s", self.root.uri, name, exc)
                seen.add(name)
                continue
            if read is None:
                self.vanished += 1  # folded by a compaction: its snapshot is listed next time
                continue
            out.extend(read)
            seen.add(name)
        return out

    def replay(self, attempts: int = 3) -> ItemState:
        """The final state of every item the log names (everything, from scratch); a file compacted away while
        it was read makes the read continue with a new listing, which holds the snapshot that folded it."""
        state, seen = ItemState(), set[str]()
        for _ in range(attempts):
            for change in self.read_new(seen):
                state.apply(change)
            if not self.vanished:
                return state
        raise StorageError(f"{self.root.uri}: files kept disappearing under {attempts} reads (compactions racing)")

