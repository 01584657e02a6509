"""Re-fusion's data step (`fusionrec.data.refresh`): base data + feedback events + live catalogue -> a new prepared
dataset, published once per distinct input, read back by the project's own loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fusionrec.data import load_dataset
from fusionrec.data.prepare import prepare_files
from fusionrec.data.refresh import (
    IMPLICIT_RATING,
    LiveData,
    Refreshed,
    merge_live,
    read_live,
    refresh,
)
from fusionrec.data.schema import Dataset
from fusionrec.data.splits import random_split
from fusionrec.data.text import TEXT
from fusionrec.spec import DataSpec

from testkit import synthetic_frames

TEMPLATE = "{title}. Genres: {genres}. Year: {year}"
NO_ITEMS = pd.DataFrame({"item_id": pd.Series([], dtype=str)})


@pytest.fixture
def base(tmp_path: Path) -> DataSpec:
    """A prepared shop (24 users u0..u23, items i0..i17, ratings 2 or 5, times 1000..1080) and its data spec."""
    interactions, items = synthetic_frames()
    interactions.to_csv(tmp_path / "inter.csv", index=False)
    items.to_csv(tmp_path / "items.csv", index=False)
    prepare_files(tmp_path / "inter.csv", tmp_path / "items.csv", name="shop", out=tmp_path / "shop",
                  template=TEMPLATE)
    return DataSpec(dataset="shop", path=str(tmp_path / "shop"))


def events(*rows: tuple[str, str, str, float, int]) -> pd.DataFrame:
    """(user, item, type, value, timestamp) rows as `read_events` returns them."""
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "type", "value", "timestamp"])
    frame.insert(0, "event_id", [f"e{i}" for i in range(len(frame))])
    frame["request_id"], frame["model_version"] = "r1", "v1"
    return frame


def unseen(user: str, base_spec: DataSpec) -> list[str]:
    """Items of the base catalogue `user` has not interacted with."""
    dataset = load_dataset(base_spec)
    seen = set(dataset.interactions.loc[dataset.interactions.user_id == user, "item_id"])
    return [i for i in dataset.items.item_id if i not in seen]


def added_rows(refreshed: Refreshed, base_spec: DataSpec) -> pd.DataFrame:
    dataset = load_dataset(refreshed.data_spec(base_spec))
    return dataset.interactions.iloc[len(load_dataset(base_spec).interactions):].reset_index(drop=True)


def test_clicks_purchases_and_ratings_become_interactions_and_impressions_do_not(base, tmp_path):
    a, b, c, d = unseen("u0", base)[:4]
    seen = load_dataset(base).interactions.query("user_id == 'u1'").item_id.iloc[0]
    live = LiveData(events(("u0", a, "impression", 1.0, 5000), ("u0", b, "click", 1.0, 5001),
                           ("u0", c, "purchase", 1.0, 5002), ("u0", d, "rating", 2.0, 5003),
                           ("u0", b, "purchase", 1.0, 5004),  # the same pair again: one interaction
                           ("newcomer", a, "click", 1.0, 5005),
                           ("u0", "i999", "click", 1.0, 5006),  # no catalogue holds it
                           ("u1", seen, "click", 1.0, 5007)),  # the base data already has this pair
                    NO_ITEMS, frozenset())
    refreshed = refresh(base, "ranking", str(tmp_path / "live"), live)
    summary = refreshed.summary
    assert summary.events == {"impression": 1, "click": 4, "purchase": 2, "rating": 1}
    assert (summary.interactions_added, summary.new_users) == (4, 1)
    assert (summary.dropped_unknown_items, summary.repeats_skipped) == (1, 1)
    rows = added_rows(refreshed, base)
    assert list(zip(rows.user_id, rows.item_id, rows.timestamp, rows.rating)) == [
        ("u0", b, 5001, IMPLICIT_RATING), ("u0", c, 5002, IMPLICIT_RATING), ("u0", d, 5003, 2.0),
        ("newcomer", a, 5005, IMPLICIT_RATING)]
    assert not ((rows.user_id == "u0") & (rows.item_id == a)).any(), "an impression is no interaction"
    assert "1 events on unknown items dropped" in summary.render()


def test_the_ctr_task_reads_a_click_as_a_positive_and_a_low_rating_as_a_negative(base, tmp_path):
    a, b = unseen("u2", base)[:2]
    live = LiveData(events(("u2", a, "click", 1.0, 5000), ("u2", b, "rating", 2.0, 5001)), NO_ITEMS, frozenset())
    dataset = load_dataset(refresh(base, "ctr", str(tmp_path / "live"), live).data_spec(base))
    split = random_split(dataset)  # the protocol's own labelling: rating >= threshold
    labelled = pd.concat([split.train, split.valid, split.test])
    label = {item: int(lab) for user, item, lab in zip(labelled.user_id, labelled.item_id, labelled.label)
             if user == "u2"}
    assert label[a] == 1 and label[b] == 0


def test_a_label_column_gets_one_for_implicit_and_the_threshold_for_ratings():
    interactions = pd.DataFrame({"user_id": ["u"], "item_id": ["x"], "timestamp": [1], "label": np.int8([0])})
    base = Dataset("b", interactions, pd.DataFrame({"item_id": ["x", "y", "z"], "title": ["x", "y", "z"]}))
    live = LiveData(events(("u", "y", "purchase", 1.0, 5), ("u", "z", "rating", 5.0, 6)), NO_ITEMS, frozenset())
    merged, _ = merge_live(base, live, "ctr")
    assert merged.interactions.label.tolist() == [0, 1, 1] and merged.interactions.label.dtype == np.int8
    assert "rating" not in merged.interactions, "no rating column is made up"


def test_task_rating_takes_ratings_only(base, tmp_path):
    a, b = unseen("u3", base)[:2]
    live = LiveData(events(("u3", a, "click", 1.0, 5000), ("u3", b, "rating", 5.0, 5001)), NO_ITEMS, frozenset())
    refreshed = refresh(base, "rating", str(tmp_path / "live"), live)
    assert refreshed.summary.implicit_skipped == 1 and refreshed.summary.interactions_added == 1
    rows = added_rows(refreshed, base)
    assert rows.item_id.tolist() == [b] and rows.rating.tolist() == [5.0]


def test_the_same_inputs_reuse_the_published_dataset_and_new_events_make_another(base, tmp_path):
    a, b = unseen("u4", base)[:2]
    live_uri = str(tmp_path / "live")
    first_live = LiveData(events(("u4", a, "click", 1.0, 5000)), NO_ITEMS, frozenset())
    first = refresh(base, "ranking", live_uri, first_live)
    again = refresh(base, "ranking", live_uri, LiveData(first_live.events.copy(), NO_ITEMS, frozenset()))
    assert not first.reused and again.reused and again.uri == first.uri
    assert Path(first.uri).parent == tmp_path / "live" / "datasets" and first.name.startswith("shop-live-")
    assert (Path(first.uri) / "PUBLISHED").is_file()
    more = refresh(base, "ranking", live_uri,
                   LiveData(events(("u4", a, "click", 1.0, 5000), ("u4", b, "click", 1.0, 5001)), NO_ITEMS,
                            frozenset()))
    assert not more.reused and more.name != first.name
    assert refresh(base, "rating", live_uri, first_live).name != first.name, "task rating reads other rows"
    assert sorted(p.name for p in (tmp_path / "live" / "datasets").iterdir() if not p.name.startswith(".")) == \
        sorted([first.name, more.name, refresh(base, "rating", live_uri, first_live).name])


def test_the_live_catalogue_adds_replaces_and_keeps_retired_items(base, tmp_path):
    upserted = pd.DataFrame([{"item_id": "new-1", "title": "queen cat story", "genres": "Drama", "year": "2024"},
                             {"item_id": "i2", "title": "king dog returns", "genres": "Comedy"}])
    live = LiveData(events(("u5", "new-1", "click", 1.0, 5000), ("u6", "i4", "click", 1.0, 5001)), upserted,
                    frozenset({"i4"}))
    refreshed = refresh(base, "ranking", str(tmp_path / "live"), live)
    summary = refreshed.summary
    assert (summary.new_items, summary.updated_items, summary.retired_items) == (1, 1, 1)
    assert summary.dropped_unknown_items == 0, "a new item's events are kept, a retired item's history too"
    dataset = load_dataset(refreshed.data_spec(base))
    items = dataset.items.set_index("item_id")
    assert len(items) == 19 and items.index[-1] == "new-1" and "i4" in items.index
    assert items.loc["new-1", TEXT] == "queen cat story. Genres: Drama. Year: 2024"  # the base's template
    assert items.loc["i2", TEXT] == "king dog returns. Genres: Comedy", "an upsert replaces the fields"
    assert items.loc["i3", TEXT] == load_dataset(base).items.set_index("item_id").loc["i3", TEXT]
    card = json.loads((Path(refreshed.uri) / "card.json").read_text())
    assert card["refresh"]["retired"] == ["i4"] and card["template"] == TEMPLATE
    assert card["name"] == refreshed.name and card["location"] == refreshed.uri


def test_the_refreshed_spec_keeps_the_order_template_and_user_cap(base, tmp_path):
    spec = base.model_copy(update={"max_users": 5, "order": "none"})
    a = unseen("u0", base)[0]
    refreshed = refresh(spec, "ranking", str(tmp_path / "live"),
                        LiveData(events(("u0", a, "click", 1.0, 5000)), NO_ITEMS, frozenset()))
    data = refreshed.data_spec(spec)
    assert (data.dataset, data.path, data.order, data.max_users) == (refreshed.name, refreshed.uri, "none", 5)
    assert refreshed.summary.interactions_added == 1, "max_users caps training, not what is refreshed"
    assert load_dataset(data).n_users == 5


def test_read_live_reads_what_serving_stores(base, tmp_path):
    """The stored formats through `fusionrec.data.feedback` (one event segment written by hand as the ingress
    writes it, item changes through the item log)."""
    from fusionrec.data.feedback import EVENT_SCHEMA
    from fusionrec.data.item_log import ItemChange, ItemLog

    live_uri = tmp_path / "live"
    segment = live_uri / "events" / "replica-0" / "00000001700000000000-a.parquet"
    segment.parent.mkdir(parents=True)
    frame = events(("u7", "i1", "click", 1.0, 5001), ("u7", "i1", "impression", 1.0, 5000))
    frame = pd.concat([frame, frame.iloc[:1]])  # a retry stored twice: counted once
    pq.write_table(pa.Table.from_pandas(frame, schema=EVENT_SCHEMA, preserve_index=False), segment)
    log = ItemLog(str(live_uri))
    log.write([ItemChange("new-2", {"title": "star war", "genres": "Action"})])
    log.write([ItemChange("i5", None)])
    live = read_live(str(live_uri))
    assert len(live.events) == 2 and live.upserted.item_id.tolist() == ["new-2"] and live.retired == {"i5"}
    summary = refresh(base, "ranking", str(live_uri)).summary  # reads the live URI itself
    assert summary.events == {"click": 1, "impression": 1} and summary.new_items == 1
