"""The int8 gate's paired interval: how finely a validation split measures an NDCG@10 drop."""

from __future__ import annotations

import numpy as np
import pytest

from fusionrec.compile.parity import paired_drop_interval, ranking_check


def _ndcg(ranks: np.ndarray) -> float:
    return float(np.where(ranks <= 10, 1 / np.log2(ranks + 1.0), 0.0).sum())


def test_identical_rankings_have_no_spread():
    ranks = np.array([1, 3, 12, 7, 40, 2])
    assert paired_drop_interval(ranks, ranks) == (0.0, 0.0)


def test_a_model_worse_for_every_user_gets_an_interval_above_zero_around_its_drop():
    rng = np.random.default_rng(1)
    reference = rng.integers(1, 10, size=500)  # every held-out item inside the top 10
    compiled = reference + 1  # each one a place lower
    low, high = paired_drop_interval(reference, compiled)
    drop = 1 - _ndcg(compiled) / _ndcg(reference)
    assert 0 < low < drop < high < 2 * drop


def test_few_users_give_a_wide_interval_and_many_a_narrow_one():
    rng = np.random.default_rng(2)

    def width(users: int) -> float:
        reference = rng.integers(1, 40, size=users)
        compiled = np.where(rng.random(users) < 0.5, reference, rng.integers(1, 40, size=users))  # reorders half
        low, high = paired_drop_interval(reference, compiled)
        return high - low

    assert width(100) > 2 * width(5000)


def test_rank_arrays_must_pair_up():
    with pytest.raises(ValueError, match="one shape"):
        paired_drop_interval(np.array([1, 2, 3]), np.array([1, 2]))


def test_the_interval_is_recorded_beside_the_gated_drop():
    check = ranking_check("ranking", 0.1, 0.098, interval=(-0.05, 0.09))
    assert check.passed is False and check.value == pytest.approx(0.02)  # gated on the drop alone
    assert check.as_json()["detail"]["drop_95_interval"] == [-0.05, 0.09]
