"""Feedback events on real S3 (the loopback server): segments written with one PUT each, read back by
`read_events`, idempotent across a restart, compacted in place."""

from __future__ import annotations

import asyncio

import pytest

from fusionrec.data.feedback import list_segments, read_events
from fusionrec.serving.events import EventStore, FeedbackEvent, compact_folder, events_location

pytestmark = pytest.mark.storage


def _events(first: int, n: int) -> list[FeedbackEvent]:
    return [FeedbackEvent.model_validate({"event_id": f"e{i}", "user_id": f"u{i % 3}", "item_id": f"i{i}",
                                          "type": "click" if i % 2 else "impression", "timestamp": 1_700_000_000 + i,
                                          "model_version": "v1"}) for i in range(first, first + n)]


def test_events_in_object_storage_are_stored_once_and_read_back(s3_root: str) -> None:
    live = f"{s3_root}/_live"

    async def session(first: int, n: int, flush_s: float = 0.01) -> list[tuple[int, int]]:
        store = EventStore(live, "ingress-a", flush_interval_s=flush_s, compact_every=1000)
        await store.start()
        answers = [await store.append(_events(first + k, 1)) for k in range(n)]
        await store.close()
        return [(a.stored, a.duplicates) for a in answers]

    assert asyncio.run(session(0, 20)) == [(1, 0)] * 20
    events = events_location(live)
    assert len(list_segments(events)) == 20  # one object per flush
    assert asyncio.run(session(15, 10)) == [(0, 1)] * 5 + [(1, 0)] * 5  # a restart remembers what was stored
    frame = read_events(live)
    assert list(frame["event_id"]) == [f"e{i}" for i in range(25)]
    assert compact_folder(events, "ingress-a", min_segments=16) == 25
    assert len(list_segments(events)) == 1
    assert list(read_events(live)["event_id"]) == [f"e{i}" for i in range(25)]
