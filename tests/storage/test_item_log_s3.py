"""The live item log on real S3 (the loopback server): one PUT per change, compaction, replay."""

from __future__ import annotations

import pytest

from fusionrec.data.feedback import read_live_items
from fusionrec.data.item_log import ItemChange, ItemLog
from fusionrec.storage import list_objects, resolve

pytestmark = pytest.mark.storage


def names(live: str) -> list[str]:
    return sorted(list_objects(resolve(live).child("items")))


def test_the_log_on_object_storage(s3_root: str) -> None:
    live = f"{s3_root}/_live"
    log = ItemLog(live, compact_at=3)
    for n in range(8):
        log.write([ItemChange(f"i{n % 5}", {"title": f"t{n}", "year": 2000 + n})])
    log.write([ItemChange("i2", None)])
    listed = names(live)
    assert any(n.startswith("snapshot-") for n in listed)
    frame, retired = read_live_items(live)
    assert retired == {"i2"}
    assert dict(zip(frame["item_id"], frame["title"])) == {"i0": "t5", "i1": "t6", "i3": "t3", "i4": "t4"}
    seen: set[str] = set()
    before = len(log.read_new(seen))
    assert before and log.read_new(seen) == []
    log.compact()
    assert len(names(live)) == 1
    assert read_live_items(live)[1] == {"i2"}
