"""Full-ranking metrics: hand-computed ranks, exclusion of seen items, ties, chunking."""

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from fusionrec.data.schema import Dataset
from fusionrec.data.splits import leave_one_out
from fusionrec.metrics import evaluate_ranking, metrics_from_ranks, rank_targets, target_ranks


def _row(*scores: float) -> torch.Tensor:
    return torch.tensor([scores], dtype=torch.float32)


def test_rank_one_and_rank_three_by_hand():
    ranks = target_ranks(torch.tensor([[0.9, 0.1, 0.5, 0.2], [0.9, 0.8, 0.7, 0.1]]), torch.tensor([0, 2]))
    assert ranks.tolist() == [1, 3]
    metrics = metrics_from_ranks(ranks, ks=(1, 2, 3))
    assert metrics["ndcg@3"] == pytest.approx((1.0 + 1.0 / math.log2(4)) / 2)
    assert metrics["mrr@3"] == pytest.approx((1.0 + 1.0 / 3) / 2)
    assert metrics["hr@2"] == pytest.approx(0.5)
    assert metrics["hr@1"] == pytest.approx(0.5)
    assert metrics["ndcg@2"] == pytest.approx(0.5)  # rank 3 is outside the top 2: it contributes nothing


def test_excluding_seen_items_moves_the_target_up():
    scores = _row(0.9, 0.8, 0.7, 0.1)
    exclude = sp.csr_matrix(np.array([[1, 1, 0, 0]], dtype=np.float32))
    assert target_ranks(scores, torch.tensor([2])).item() == 3
    assert target_ranks(scores, torch.tensor([2]), exclude).item() == 1


def test_target_is_never_excluded_even_when_seen():
    scores = _row(0.9, 0.8, 0.7, 0.1)
    exclude = sp.csr_matrix(np.array([[1, 0, 1, 0]], dtype=np.float32))  # the target (2) was seen before
    assert target_ranks(scores, torch.tensor([2]), exclude).item() == 2


def test_ties_count_against_the_model():
    assert target_ranks(_row(0.5, 0.5, 0.5, 0.1), torch.tensor([1])).item() == 3
    constant = torch.zeros(1, 6)
    assert target_ranks(constant, torch.tensor([0])).item() == 6  # a constant scorer gets the worst rank
    exclude = sp.csr_matrix(np.array([[0, 1, 1, 0, 0, 0]], dtype=np.float32))
    assert target_ranks(constant, torch.tensor([0]), exclude).item() == 4


def test_nan_scores_and_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        target_ranks(_row(0.1, float("nan")), torch.tensor([0]))
    with pytest.raises(ValueError, match="targets must have shape"):
        target_ranks(_row(0.1, 0.2), torch.tensor([0, 1]))


def _tiny_split(n_users: int = 7, n_items: int = 12, per_user: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for t, item in enumerate(rng.choice(n_items, size=per_user, replace=False)):
            rows.append((f"u{u}", f"i{item}", 1000 + t, 4.0))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)]})
    return leave_one_out(Dataset("tiny", inter, items))


def test_seen_items_are_excluded_through_the_split():
    split = _tiny_split()
    seen = split.seen_matrix("valid").toarray()
    targets = dict(zip(split.valid["user_idx"], split.valid["item_idx"]))

    def seen_first(users, histories):
        # Seen items score highest, the target next: only the exclusion puts the target first.
        scores = torch.tensor(seen[users.numpy()] * 10.0)
        for row, user in enumerate(users.tolist()):
            scores[row, targets[user]] = 5.0
        return scores

    assert evaluate_ranking(seen_first, split, "valid", ks=(1,))["hr@1"] == 1.0


def test_validation_item_is_excluded_at_test_time():
    split = _tiny_split()
    valid_item = dict(zip(split.valid["user_idx"], split.valid["item_idx"]))
    test_item = dict(zip(split.test["user_idx"], split.test["item_idx"]))

    def valid_then_test(users, histories):
        scores = torch.zeros(len(users), split.n_items)
        for row, user in enumerate(users.tolist()):
            scores[row, valid_item[user]] = 2.0
            scores[row, test_item[user]] = 1.0
            assert histories[row][-1] == valid_item[user]  # the test-time history ends with the valid item
        return scores

    assert evaluate_ranking(valid_then_test, split, "test", ks=(1,))["hr@1"] == 1.0


@pytest.mark.parametrize("batch_size", [1, 2, 3, 1000])
def test_chunked_equals_unchunked(batch_size):
    split = _tiny_split(n_users=9)
    table = torch.randn(split.n_users, split.n_items, generator=torch.Generator().manual_seed(1))

    def score(users, histories):
        return table[users]

    whole = evaluate_ranking(score, split, "test", batch_size=10_000)
    assert evaluate_ranking(score, split, "test", batch_size=batch_size) == whole
    users, ranks = rank_targets(score, split, "test", batch_size=batch_size)
    assert sorted(users.tolist()) == list(range(split.n_users))
    assert ranks.min() >= 1 and ranks.max() <= split.n_items


def test_several_cutoffs_in_one_pass_are_monotone():
    ranks = torch.tensor([1, 2, 5, 11, 30])
    metrics = metrics_from_ranks(ranks, ks=(1, 5, 10, 20, 50))
    hr = [metrics[f"hr@{k}"] for k in (1, 5, 10, 20, 50)]
    assert hr == sorted(hr) and hr[-1] == 1.0 and hr[0] == 0.2


def test_score_fn_with_the_wrong_shape_is_reported():
    split = _tiny_split()
    with pytest.raises(ValueError, match="expected"):
        evaluate_ranking(lambda users, histories: torch.zeros(len(users), split.n_items - 1), split, "valid")


def test_scores_keep_their_precision():
    split = _tiny_split()
    targets = dict(zip(split.valid["user_idx"], split.valid["item_idx"]))

    def nearly_tied(users, histories):
        # float64 differences far below float32's resolution at 48: a cast would turn them into ties.
        scores = torch.full((len(users), split.n_items), 48.0, dtype=torch.float64)
        for row, user in enumerate(users.tolist()):
            scores[row, targets[user]] += 1e-9
        return scores

    assert evaluate_ranking(nearly_tied, split, "valid", ks=(1,))["hr@1"] == 1.0
