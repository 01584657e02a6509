"""The protocol's splits: chronological leave-one-out (ties keep file order) and the seeded random split."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from fusionrec.data.schema import ITEM, ITEM_IDX, USER_IDX, Dataset
from fusionrec.data.splits import leave_one_out, random_split


def _dataset(rows: list[tuple[str, str, int, float]], extra_items: tuple[str, ...] = ()) -> Dataset:
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])
    items = pd.DataFrame({ITEM: list(dict.fromkeys([*inter[ITEM], *extra_items]))})
    return Dataset("t", inter, items)


def _raw(split, frame: pd.DataFrame) -> list[tuple[str, str]]:
    return [(split.vocab.user_ids[u], split.vocab.item_ids[i]) for u, i in zip(frame[USER_IDX], frame[ITEM_IDX])]


def test_leave_one_out_last_is_test_second_last_is_valid():
    split = leave_one_out(_dataset([("u", "c", 30, 1), ("u", "a", 10, 1), ("u", "d", 40, 1), ("u", "b", 20, 1)]))
    assert _raw(split, split.test) == [("u", "d")] and _raw(split, split.valid) == [("u", "c")]
    assert _raw(split, split.train) == [("u", "a"), ("u", "b")]  # chronological
    assert [list(split.vocab.item_ids[s]) for s in split.history("test")] == [["a", "b", "c"]]


def test_timestamp_ties_keep_file_order():
    # All four at the same second: file order decides, so "z" (last in the file) is the test item.
    split = leave_one_out(_dataset([("u", "w", 5, 1), ("u", "x", 5, 1), ("u", "y", 5, 1), ("u", "z", 5, 1)]))
    assert _raw(split, split.test) == [("u", "z")] and _raw(split, split.valid) == [("u", "y")]
    assert _raw(split, split.train) == [("u", "w"), ("u", "x")]


def test_users_with_fewer_than_three_interactions_stay_in_train(caplog):
    rows = [("a", "1", 1, 1), ("a", "2", 2, 1), ("b", "1", 1, 1), ("c", "1", 1, 1), ("c", "2", 2, 1), ("c", "3", 3, 1)]
    with caplog.at_level(logging.WARNING):
        split = leave_one_out(_dataset(rows))
    assert "2 users have fewer than 3 interactions" in caplog.text
    assert len(split.test) == len(split.valid) == 1 and len(split.train) == 4
    assert {u for u, _ in _raw(split, split.train)} == {"a", "b", "c"}


def test_seen_matrix_excludes_train_then_train_and_valid():
    split = leave_one_out(_dataset([("u", "a", 1, 1), ("u", "b", 2, 1), ("u", "c", 3, 1)], extra_items=("d",)))
    assert split.n_items == 4  # a never-interacted catalogue item is still ranked
    assert split.seen_matrix("valid").toarray().tolist() == [[1, 0, 0, 0]]
    assert split.seen_matrix("test").toarray().tolist() == [[1, 1, 0, 0]]


def test_random_split_sizes_labels_and_seed_determinism():
    rng = np.random.default_rng(0)
    rows = [(f"u{k % 7}", f"i{k % 13}", k, float(rng.integers(1, 6))) for k in range(1000)]
    dataset = _dataset(rows)
    first, again = random_split(dataset, seed=2020), random_split(dataset, seed=2020)
    other = random_split(dataset, seed=1)
    assert (len(first.train), len(first.valid), len(first.test)) == (800, 100, 100)
    pd.testing.assert_frame_equal(first.test, again.test)
    assert not first.test["timestamp"].equals(other.test["timestamp"])
    together = pd.concat([first.train, first.valid, first.test])["timestamp"]
    assert sorted(together) == list(range(1000))  # a partition: nothing lost, nothing repeated
    assert (first.train["label"] == (first.train["rating"] >= 4)).all()


def test_random_split_rejects_bad_ratios():
    with pytest.raises(ValueError, match="sum to 1"):
        random_split(_dataset([("u", "a", 1, 1.0)]), ratios=(0.8, 0.1, 0.2))


def _many_users(n_users: int = 40, per_user: int = 12) -> Dataset:
    # Timestamps rise with the item number: chronological leave-one-out always holds out item per_user - 1.
    return _dataset([(f"u{u}", f"i{i}", i, 1.0) for u in range(n_users) for i in range(per_user)])


def test_order_none_holds_out_a_seeded_random_item_per_user():
    dataset = _many_users()
    chronological = leave_one_out(dataset)
    assert {item for _, item in _raw(chronological, chronological.test)} == {"i11"}
    split = leave_one_out(dataset, order="none")
    held_out = [item for _, item in _raw(split, split.test)]
    assert len(held_out) == 40 and len(set(held_out)) > 5  # not the newest item: random per user
    again = leave_one_out(dataset, order="none")
    assert held_out == [item for _, item in _raw(again, again.test)]  # seeded
    other = leave_one_out(dataset, order="none", seed=7)
    assert held_out != [item for _, item in _raw(other, other.test)]
    # Every interaction lands in exactly one part, and the history before test is the user's other items.
    assert len(split.train) + len(split.valid) + len(split.test) == len(dataset.interactions)
    for user, history in enumerate(split.history("test")):
        test_item = split.test.loc[split.test[USER_IDX] == user, ITEM_IDX].item()
        seen = split.vocab.item_ids[[*history, test_item]]
        assert len(seen) == 12 and set(seen) == {f"i{i}" for i in range(12)}


def test_order_none_shuffles_the_histories_of_the_random_split():
    dataset = _many_users(n_users=10)
    split = random_split(dataset, order="none")
    chronological = random_split(dataset)
    assert (split.train[ITEM_IDX].to_numpy() == chronological.train[ITEM_IDX].to_numpy()).all()  # same rows
    assert not (split.train["timestamp"].to_numpy() == chronological.train["timestamp"].to_numpy()).all()
    with pytest.raises(ValueError, match="order"):
        leave_one_out(dataset, order="random")


def test_every_title_names_the_random_order():
    from fusionrec.protocol import Results, RunResult, protocol_text, split_name

    assert "random per-user hold-out" in split_name("ranking", "none")
    assert "chronological" in split_name("ranking") and "chronological" not in split_name("ranking", "none")
    assert "data.order none" in protocol_text("ranking", "none")
    results = Results(dataset="t", seeds=[1], order="none",
                      runs=[RunResult("pop", "ranking", 1, {"ndcg@10": 0.1}, {"ndcg@10": 0.1}, 0, 1, 0.0)])
    assert "random per-user hold-out" in results.render() and results.to_json()["order"] == "none"


def test_order_none_never_leaves_the_held_out_item_in_training():
    """Repeat purchases: with no order, each (user, item) pair counts once, so the answer is never in the history."""
    rows = [(f"u{u}", f"i{(u + i) % 7}", i, 1.0) for u in range(30) for i in range(14)]  # every item twice
    split = leave_one_out(_dataset(rows), order="none")
    for stage in ("valid", "test"):
        targets = split.targets(stage)
        for user, item in zip(targets[USER_IDX], targets[ITEM_IDX]):
            assert item not in split.history(stage)[user]
    assert len(split.train) + len(split.valid) + len(split.test) == 30 * 7
