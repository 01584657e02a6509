"""Negatives never hit a user's positives, follow the asked distribution, and repeat under a seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from fusionrec.data.sampling import NegativeSampler, histories_from_frame


def _positives(n_users: int = 50, n_items: int = 40, density: float = 0.5, seed: int = 0) -> sp.csr_matrix:
    mask = np.random.default_rng(seed).random((n_users, n_items)) < density
    return sp.csr_matrix(mask.astype(np.float32))


@pytest.mark.parametrize("distribution", ["uniform", "popularity"])
def test_negatives_exclude_positives(distribution):
    positives = _positives()
    sampler = NegativeSampler(positives, distribution=distribution, seed=3)
    users = np.repeat(np.arange(50), 4)
    negatives = sampler.sample(users, 64)
    assert negatives.shape == (200, 64) and negatives.dtype == np.int64
    dense = positives.toarray().astype(bool)
    assert not dense[users[:, None], negatives].any()


def test_nearly_full_users_fall_back_to_exact_draws():
    dense = np.ones((2, 30), dtype=np.float32)
    dense[0, 7] = 0  # user 0 has one negative left; rejection alone would rarely find it
    negatives = NegativeSampler(sp.csr_matrix(dense), seed=0, max_rounds=1).sample(np.array([0, 0]), 50)
    assert (negatives == 7).all()
    with pytest.raises(ValueError, match=r"users \[1\] have no item left"):
        NegativeSampler(sp.csr_matrix(dense)).sample(np.array([0, 1]), 2)


def test_same_seed_same_negatives():
    positives = _positives()
    first = NegativeSampler(positives, seed=11).sample(np.arange(50), 10)
    again = NegativeSampler(positives, seed=11).sample(np.arange(50), 10)
    other = NegativeSampler(positives, seed=12).sample(np.arange(50), 10)
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_popularity_follows_counts():
    positives = sp.csr_matrix((1, 4), dtype=np.float32)  # one user with no positives
    counts = np.array([0, 1, 1, 8])
    sampler = NegativeSampler(positives, distribution="popularity", item_counts=counts, seed=0)
    draws = sampler.sample(np.zeros(1, dtype=np.int64), 20000)
    frequency = np.bincount(draws.ravel(), minlength=4) / draws.size
    assert frequency[0] == 0 and frequency[3] == pytest.approx(0.8, abs=0.02)


def test_from_frame_and_bad_users():
    frame = pd.DataFrame({"user_idx": [0, 0, 1], "item_idx": [0, 1, 2]})
    sampler = NegativeSampler.from_frame(frame, n_users=2, n_items=4, seed=0)
    assert not np.isin(sampler.sample(np.array([0]), 100), [0, 1]).any()
    with pytest.raises(ValueError, match="user indices"):
        sampler.sample(np.array([5]), 1)


def test_histories_from_frame_sort_by_time_keeping_ties_in_row_order():
    frame = pd.DataFrame({"user_idx": [1, 0, 1, 1], "item_idx": [5, 6, 7, 8], "timestamp": [20, 1, 10, 20]})
    assert [s.tolist() for s in histories_from_frame(frame, 3)] == [[6], [7, 5, 8], []]
