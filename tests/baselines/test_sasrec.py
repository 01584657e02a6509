"""SASRec baseline: batching, scoring shapes, errors, and learning a planted next-item rule.

Convergence on full MovieLens-100K against the public reference is a quality bar, measured by
`bench/baselines.py` (three seeds, results in bench/results/baselines-ml100k.md), not here."""

import numpy as np
import pandas as pd
import pytest
import torch

from fusionrec.baselines import recbole_training
from fusionrec.baselines.sasrec import SASRec, SASRecConfig, training_windows
from fusionrec.data.schema import Dataset
from fusionrec.data.splits import LeaveOneOutSplit, leave_one_out
from fusionrec.metrics import evaluate_ranking
from fusionrec.train.loop import fit

N_ITEMS = 40

torch.set_num_threads(1)  # tiny tensors: a thread pool on a 2-core machine only adds overhead


def _successor_split(n_users: int = 80, length: int = 12, seed: int = 0) -> LeaveOneOutSplit:
    """Every user walks the catalogue in order from a random start: item i is always followed by i + 1."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        start = int(rng.integers(N_ITEMS))
        for step in range(length):
            rows.append((f"u{user}", f"i{(start + step) % N_ITEMS}", step))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(N_ITEMS)]})
    return leave_one_out(Dataset("successor", inter, items))


@pytest.fixture(scope="module")
def split() -> LeaveOneOutSplit:
    return _successor_split()


def test_windows_shift_targets_and_cover_every_transition() -> None:
    seq = np.arange(10)
    windows = training_windows(seq, max_len=4, stride=4)
    assert [w[1].tolist() for w in windows] == [[6, 7, 8, 9], [2, 3, 4, 5], [1]]
    for inputs, targets in windows:
        np.testing.assert_array_equal(inputs + 1, targets)
    overlapping = training_windows(seq, max_len=4, stride=2)
    assert [w[1].tolist() for w in overlapping] == [[6, 7, 8, 9], [4, 5, 6, 7], [2, 3, 4, 5], [1, 2, 3]]
    assert training_windows(np.array([3]), max_len=4, stride=4) == []


def test_training_batches_are_left_padded_and_shifted(split: LeaveOneOutSplit) -> None:
    model = SASRec(split.n_items, SASRecConfig(dim=8, max_len=6, n_heads=1, inner_size=16))
    batches = list(model.training_batches(split, batch_size=32, rng=np.random.default_rng(0)))
    assert sum(len(b["items"]) for b in batches) == 80 * 2  # 9 transitions per user -> windows of 6 and 3
    assert sum(int((b["targets"] != model.pad).sum()) for b in batches) == 80 * 9  # each transition once
    for batch in batches:
        items, targets = batch["items"], batch["targets"]
        assert items.shape == targets.shape
        assert items.shape[1] == int((items != model.pad).sum(dim=1).max()) <= 6  # padded to the longest row
        assert torch.equal(items == model.pad, targets == model.pad)
        assert (items[:, -1] != model.pad).all()  # left padding: the newest item is always last


def test_full_sort_predict_reads_the_history(split: LeaveOneOutSplit) -> None:
    torch.manual_seed(0)
    model = SASRec(split.n_items, SASRecConfig(dim=8, max_len=5, n_heads=2, inner_size=16)).eval()
    users = torch.tensor([0, 1, 2])
    histories = [np.array([1, 2, 3]), np.arange(30), np.empty(0, dtype=np.int64)]  # long one is cut to 5
    scores = model.full_sort_predict(users, histories)
    assert scores.shape == (3, split.n_items) and torch.isfinite(scores).all()
    same_tail = model.full_sort_predict(users[:1], [np.arange(25, 30)])
    torch.testing.assert_close(scores[1:2], same_tail)
    assert not torch.allclose(scores[0], scores[1])


def test_bad_arguments_raise_with_values(split: LeaveOneOutSplit) -> None:
    with pytest.raises(ValueError, match="window_stride must be in \\[0, max_len=10\\].*got 11"):
        SASRec(5, SASRecConfig(max_len=10, window_stride=11))
    with pytest.raises(ValueError, match="n_items must be positive, got 0"):
        SASRec(0)
    model = SASRec(split.n_items, SASRecConfig(dim=8, max_len=5, inner_size=16))
    with pytest.raises(ValueError, match="got 1 histories for 2 users"):
        model.full_sort_predict(torch.tensor([0, 1]), [np.array([1])])


def test_learns_a_planted_successor_rule(split: LeaveOneOutSplit) -> None:
    torch.manual_seed(0)
    model = SASRec(split.n_items, SASRecConfig(dim=32, n_layers=1, max_len=10, dropout=0.0, inner_size=64))
    training = recbole_training(25, "ndcg@10", batch_size=32, learning_rate=1e-2, patience=25)
    fit(model, split, training.model_copy(update={"seed": 0}), device="cpu")
    hr_at_1 = evaluate_ranking(model.full_sort_predict, split, "test", ks=(1,))["hr@1"]
    assert hr_at_1 >= 0.95, f"HR@1 on the planted rule is only {hr_at_1:.2f}"
