"""The live item log (fusionrec.data.item_log) and its reader for retraining (fusionrec.data.feedback): whole
changes only (a killed writer leaves none), last writer wins by file name whatever the read order, compaction
(snapshot first, then deletions; both present is fine), replay from scratch, and the same on real S3."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fusionrec.data.feedback import read_live_items
from fusionrec.data.item_log import ItemChange, ItemLog, ItemState, encode_changes, new_name
from fusionrec.storage import list_objects, resolve, write_object


def up(item: str, **fields) -> ItemChange:
    return ItemChange(item, fields)


def names(live: str) -> list[str]:
    return sorted(list_objects(resolve(live).child("items")))


def test_writes_read_back_in_order_and_last_writer_wins(tmp_path: Path) -> None:
    live = str(tmp_path / "_live")
    log = ItemLog(live, compact_at=1000)
    first = log.write([up("a", title="Alpha"), up("b", title="Beta")])
    second = log.write([up("a", title="Alpha 2"), ItemChange("b", None)])
    assert first < second and names(live) == [first, second]
    seen: set[str] = set()
    changes = log.read_new(seen)
    assert [(c.item_id, c.fields, c.name) for c in changes] == [
        ("a", {"title": "Alpha"}, first), ("b", {"title": "Beta"}, first),
        ("a", {"title": "Alpha 2"}, second), ("b", None, second)]
    assert log.read_new(seen) == []  # nothing new
    third = log.write([up("b", title="Beta back")])
    assert [c.name for c in log.read_new(seen)] == [third]
    state = log.replay()
    assert state.upserted == {"a": {"title": "Alpha 2"}, "b": {"title": "Beta back"}} and state.retired == set()


def test_a_late_file_with_an_older_name_loses_to_the_newer_change_in_any_order(tmp_path: Path) -> None:
    """Ingress replicas' clocks differ: a write can show up after a later-named one was read."""
    live = str(tmp_path / "_live")
    log = ItemLog(live, compact_at=1000)
    newer = log.write([up("a", title="new")])
    older = "00000000000000000001-" + "0" * 32 + ".json"
    seen: set[str] = set()
    state = ItemState()
    for change in log.read_new(seen):
        state.apply(change)
    write_object(log.root.child(older), encode_changes([up("a", title="old"), up("c", title="late")]))
    for change in log.read_new(seen):  # the late file is read now, after the newer one
        state.apply(change)
    assert state.upserted == {"a": {"title": "new"}, "c": {"title": "late"}}
    assert state.items["a"][0] == newer
    assert log.replay().upserted == state.upserted  # from scratch, in name order: the same


def test_within_one_file_the_last_change_of_an_item_wins() -> None:
    from fusionrec.data.item_log import decode_changes

    changes = decode_changes(encode_changes([up("a", title="1"), ItemChange("a", None), up("b", title="b")]), "f")
    assert [(c.item_id, c.fields) for c in changes] == [("a", None), ("b", {"title": "b"})]


def test_compaction_folds_files_into_a_snapshot_and_readers_replay_it(tmp_path: Path) -> None:
    live = str(tmp_path / "_live")
    log = ItemLog(live, compact_at=4)
    follower_seen: set[str] = set()
    follower = ItemState()
    for n in range(10):
        log.write([up(f"i{n % 6}", title=f"t{n}")])
        if n == 2:
            for change in log.read_new(follower_seen):
                follower.apply(change)
    log.write([ItemChange("i1", None)])
    listed = names(live)
    assert any(n.startswith("snapshot-") for n in listed)
    assert len([n for n in listed if not n.startswith("snapshot-")]) <= 4  # compacted as it grew
    expected = {f"i{k}": {"title": f"t{k + 6 if k + 6 < 10 else k}"} for k in range(6) if k != 1}
    assert log.replay().upserted == expected and log.replay().retired == {"i1"}
    for change in log.read_new(follower_seen):  # a replica that read before the compaction catches up
        follower.apply(change)
    assert follower.upserted == expected and follower.retired == {"i1"}
    assert log.compact() is not None
    assert len(names(live)) == 1  # one snapshot, nothing else
    frame, retired = read_live_items(live)
    assert sorted(frame["item_id"]) == sorted(expected) and retired == {"i1"}
    assert dict(zip(frame["item_id"], frame["title"])) == {k: v["title"] for k, v in expected.items()}


def test_a_crash_between_snapshot_and_deletions_leaves_both_which_readers_tolerate(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    import fusionrec.data.item_log as item_log

    live = str(tmp_path / "_live")
    log = ItemLog(live, compact_at=1000)
    for n in range(5):
        log.write([up(f"i{n}", title=f"t{n}")])
    log.write([ItemChange("i0", None)])

    def crash(location) -> None:
        raise KeyboardInterrupt  # the process dies right after writing the snapshot

    monkeypatch.setattr(item_log, "delete_object", crash)
    with pytest.raises(KeyboardInterrupt):
        log.compact()
    monkeypatch.undo()
    listed = names(live)
    assert len(listed) == 7 and sum(n.startswith("snapshot-") for n in listed) == 1
    state = log.replay()
    assert set(state.upserted) == {"i1", "i2", "i3", "i4"} and state.retired == {"i0"}
    log.compact()
    assert len(names(live)) == 1 and log.replay().items == state.items


def test_a_killed_writer_leaves_no_partial_change(tmp_path: Path) -> None:
    """SIGKILL while the change's bytes are being made durable: readers see no file at all, never part of one."""
    live = tmp_path / "_live"
    script = textwrap.dedent(f"""
        import os, sys, time
        real_fsync = os.fsync
        def stall(fd):
            print("writing", flush=True)
            time.sleep(60)  # killed here: the temp file holds the bytes, the rename has not happened
        os.fsync = stall
        from fusionrec.data.item_log import ItemChange, ItemLog
        ItemLog({str(live)!r}).write([ItemChange(f"i{{n}}", {{"title": "x" * 1000}}) for n in range(2000)])
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONSAFEPATH": "1"})
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "writing"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    leftovers = [p.name for p in (live / "items").iterdir()]
    assert leftovers and all(name.startswith(".") for name in leftovers)  # only the writer's hidden temp file
    assert names(str(live)) == []
    frame, retired = read_live_items(str(live))
    assert frame.empty and retired == set()
    ItemLog(str(live)).write([up("ok", title="fine")])  # the log goes on
    assert list(read_live_items(str(live))[0]["item_id"]) == ["ok"]


def test_names_sort_by_write_time_and_never_collide() -> None:
    made = [new_name() for _ in range(200)]
    assert len(set(made)) == 200
    time.sleep(0.001)
    assert new_name() > max(made)


def test_a_delete_taken_by_an_ingress_whose_clock_is_behind_still_wins(tmp_path: Path, monkeypatch) -> None:
    """Ingress A (clock right) stores a PUT; ingress B, its clock a minute behind, then takes a DELETE of the
    same item: the DELETE was acknowledged after the PUT, so it must win, here and after a compaction."""
    live = str(tmp_path / "_live")
    a, b = ItemLog(live, compact_at=1000), ItemLog(live, compact_at=1000)
    put = a.write([up("x", title="X")])
    real = time.time_ns
    monkeypatch.setattr("fusionrec.data.item_log.time.time_ns", lambda: real() - 60 * 10**9)
    delete = b.write([ItemChange("x", None)])
    assert delete > put
    assert "x" in ItemLog(live).replay().retired
    snapshot = b.compact()  # B's clock still behind: the snapshot still lists after everything it folded
    assert snapshot is not None and names(live) == [snapshot]
    again = ItemLog(live).write([up("x", title="X again")])  # a new writer: it lists only the snapshot
    assert again > delete and ItemLog(live).replay().upserted == {"x": {"title": "X again"}}


def test_read_live_items_of_an_empty_or_missing_log(tmp_path: Path) -> None:
    frame, retired = read_live_items(str(tmp_path / "nothing"))
    assert list(frame.columns) == ["item_id"] and frame.empty and retired == set()
