"""What a living shop recorded while serving, read back for training: feedback events (and live item changes).

Both live under `serving.live.uri` (local folder, file://, s3://, gs://; read through fusionrec.storage). This
module is the stored format's one definition: the ingress writes it (fusionrec.serving.events) and training
reads it here, without the serving extra.

Feedback events: `<live>/events/<replica>/<name>.parquet`, immutable segments, one per group commit of one
ingress replica (or a compaction of several). Columns: the event record below. A segment is also an
interactions file of the data readers (user_id, item_id, timestamp; `--map rating=value` for ratings). The
same event can be stored twice (a retry that reached another ingress replica, a compaction interrupted after
writing its merged segment): readers de-duplicate by event_id, always.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fusionrec.storage import Location, StorageError, list_objects, read_object, resolve

EVENTS_FOLDER = "events"
SEGMENT_SUFFIX = ".parquet"
EVENT_TYPES = ("impression", "click", "purchase", "rating")
EVENT_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("user_id", pa.string()), ("item_id", pa.string()), ("type", pa.string()),
    ("value", pa.float64()), ("timestamp", pa.int64()), ("request_id", pa.string()),
    ("model_version", pa.string()),
])
EVENT_COLUMNS = tuple(EVENT_SCHEMA.names)
_READ_ATTEMPTS = 3


def events_location(live_uri: str | os.PathLike[str]) -> Location:
    return resolve(live_uri).child(EVENTS_FOLDER)


def list_segments(events: Location) -> list[str]:
    """Segment names under `<live>/events/` (`replica/name.parquet`), oldest first (names start with the
    flush time in ms)."""
    return sorted((n for n in list_objects(events) if n.endswith(SEGMENT_SUFFIX)),
                  key=lambda n: (n.rsplit("/", 1)[-1], n))


def decode_segment(data: bytes, columns: Sequence[str] | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(data), columns=list(columns) if columns else None)


def read_events(live_uri: str | os.PathLike[str]) -> pd.DataFrame:
    """Every stored feedback event under `<live_uri>/events/` (all replicas), each event_id once (its first
    stored copy), sorted by timestamp (stable: ties keep storage order). Empty, with the columns, when none.

    A segment compacted away between the listing and its read (a compaction writes the merged segment before
    deleting its sources) makes the whole read start again from a new listing, so no event is missed.

    Raises:
        StorageError: storage could not be read (or kept changing under three reads).
    """
    events = events_location(live_uri)
    for attempt in range(_READ_ATTEMPTS):
        try:
            tables = [decode_segment(read_object(events.child(name))) for name in list_segments(events)]
        except StorageError as exc:
            if not exc.not_found or attempt == _READ_ATTEMPTS - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
            continue
        frame = pa.concat_tables([t.select(list(EVENT_COLUMNS)).cast(EVENT_SCHEMA) for t in tables]).to_pandas() \
            if tables else EVENT_SCHEMA.empty_table().to_pandas()
        frame = frame.drop_duplicates("event_id", keep="first")
        return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    raise AssertionError("unreachable: the last attempt returns or raises")


def read_live_items(live_uri: str | os.PathLike[str]) -> tuple[pd.DataFrame, set[str]]:
    """The live catalogue changes under `<live_uri>/items/` (`fusionrec.data.item_log`), replayed to their final
    state: (upserted items: `item_id` plus one column per field any of them has, missing fields NaN; retired
    item ids). An item upserted again after its retirement is upserted; one retired last is retired only.

    Raises:
        StorageError: storage could not be read.
    """
    from fusionrec.data.item_log import ItemLog

    state = ItemLog(os.fspath(live_uri)).replay()
    upserted = state.upserted
    rows = [{"item_id": item, **fields} for item, fields in sorted(upserted.items())]
    frame = pd.DataFrame(rows) if rows else pd.DataFrame({"item_id": pd.Series([], dtype=str)})
    return frame, state.retired
