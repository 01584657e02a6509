"""What training batches are built from: each user's recent history, and negatives a user has not seen.

Negatives are drawn for a whole batch at once and only the draws that hit a user's positives are redrawn
(rejection resampling), so a batch of thousands costs a few numpy calls. BPR takes one negative per positive,
sampled softmax a few hundred per batch; both use `NegativeSampler.sample`.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fusionrec.data.schema import ITEM_IDX, TIME, USER_IDX


def histories_from_frame(frame: pd.DataFrame, n_users: int) -> list[np.ndarray]:
    """Per user index, the item indices of `frame` (user_idx, item_idx, timestamp) oldest first.

    Timestamp ties keep the frame's row order, as the evaluation protocol does.
    """
    ordered = frame.sort_values([USER_IDX, TIME], kind="stable")
    sequences = [np.empty(0, dtype=np.int64) for _ in range(n_users)]
    for user, items in ordered.groupby(USER_IDX, sort=False)[ITEM_IDX]:
        sequences[int(user)] = items.to_numpy(dtype=np.int64)
    return sequences


class NegativeSampler:
    """Draws items each user has no positive interaction with, uniformly or by popularity.

    Args:
        positives: [n_users, n_items] sparse matrix; any stored non-zero is a positive to exclude.
        distribution: "uniform" over all items, or "popularity": P(item) proportional to count ** alpha.
        item_counts: [n_items] counts for "popularity"; defaults to the positives per item.
        alpha: popularity exponent (0.75 is word2vec's smoothing; 1 is plain popularity).
        seed: seed or Generator; the same seed gives the same negatives.
        max_rounds: vectorised redraws before the few remaining draws are made exactly, per user.

    Draws are with replacement: a user's negatives may repeat, as in BPR's usual sampler.
    """

    def __init__(self, positives: sp.spmatrix, *, distribution: Literal["uniform", "popularity"] = "uniform",
                 item_counts: np.ndarray | None = None, alpha: float = 1.0,
                 seed: int | np.random.Generator = 0, max_rounds: int = 20) -> None:
        if distribution not in ("uniform", "popularity"):
            raise ValueError(f"distribution must be 'uniform' or 'popularity', got {distribution!r}")
        matrix = sp.csr_matrix(positives, copy=True)
        matrix.eliminate_zeros()
        matrix.sum_duplicates()
        matrix.sort_indices()
        self.n_users, self.n_items = matrix.shape
        self.positives = matrix
        self.distribution = distribution
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.max_rounds = max_rounds
        rows = np.repeat(np.arange(self.n_users, dtype=np.int64), np.diff(matrix.indptr))
        self._keys = rows * self.n_items + matrix.indices.astype(np.int64)  # sorted: CSR rows, sorted columns
        self.probabilities: np.ndarray | None = None
        if distribution == "popularity":
            counts = np.asarray(matrix.sum(axis=0)).ravel() if item_counts is None else np.asarray(item_counts, float)
            if counts.shape != (self.n_items,) or (counts < 0).any() or counts.sum() <= 0:
                raise ValueError(f"item_counts must be {self.n_items} non-negative counts with a positive sum")
            weights = counts.astype(np.float64) ** alpha
            self.probabilities = weights / weights.sum()
            mass = np.asarray(matrix.multiply(self.probabilities[None, :]).sum(axis=1)).ravel()
            self._blocked = mass >= 1.0 - 1e-9
        else:
            self._blocked = np.diff(matrix.indptr) >= self.n_items

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, n_users: int, n_items: int, **kwargs: Any) -> NegativeSampler:
        """A sampler whose positives are the (user_idx, item_idx) pairs of `frame`, e.g. a split's train."""
        users = frame[USER_IDX].to_numpy(dtype=np.int64)
        items = frame[ITEM_IDX].to_numpy(dtype=np.int64)
        matrix = sp.csr_matrix((np.ones(len(frame), dtype=np.float32), (users, items)), shape=(n_users, n_items))
        if kwargs.get("distribution") == "popularity" and "item_counts" not in kwargs:
            kwargs["item_counts"] = np.bincount(items, minlength=n_items)  # repeats count towards popularity
        return cls(matrix, **kwargs)

    def _draw(self, size: int | tuple[int, ...]) -> np.ndarray:
        if self.probabilities is None:
            return self.rng.integers(0, self.n_items, size=size, dtype=np.int64)
        return self.rng.choice(self.n_items, size=size, p=self.probabilities).astype(np.int64)

    def _is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.n_items + items
        at = np.searchsorted(self._keys, keys)
        return self._keys[np.minimum(at, len(self._keys) - 1)] == keys if len(self._keys) else np.zeros_like(keys, bool)

    def sample(self, users: np.ndarray, n: int) -> np.ndarray:
        """Negatives for a batch.

        Args:
            users: [B] user indices (repeats allowed, e.g. one row per positive for BPR).
            n: negatives per row.

        Returns:
            [B, n] int64 item indices, none of them a positive of that row's user.
        """
        users = np.asarray(users, dtype=np.int64)
        if users.ndim != 1:
            raise ValueError(f"users must be a 1-d array of user indices, got shape {users.shape}")
        if len(users) and (users.min() < 0 or users.max() >= self.n_users):
            raise ValueError(f"user indices must be in [0, {self.n_users}), got min {users.min()} max {users.max()}")
        blocked = np.unique(users[self._blocked[users]])
        if len(blocked):
            raise ValueError(f"users {blocked[:10].tolist()} have no item left to sample as a negative "
                             f"(their positives cover every item the {self.distribution} sampler can draw)")
        user_grid = np.broadcast_to(users[:, None], (len(users), n))  # [B, n]
        negatives = self._draw((len(users), n))  # [B, n]
        bad = self._is_positive(user_grid, negatives)
        for _ in range(self.max_rounds):
            if not bad.any():
                return negatives
            negatives[bad] = self._draw(int(bad.sum()))
            bad[bad] = self._is_positive(user_grid[bad], negatives[bad])
        for row, col in zip(*np.nonzero(bad)):  # users with almost every item positive: draw exactly
            negatives[row, col] = self._draw_exact(int(users[row]))
        return negatives

    def _draw_exact(self, user: int) -> int:
        allowed = np.ones(self.n_items, dtype=bool)
        allowed[self.positives.indices[self.positives.indptr[user]: self.positives.indptr[user + 1]]] = False
        weights = allowed if self.probabilities is None else self.probabilities * allowed
        return int(self.rng.choice(self.n_items, p=weights / weights.sum()))
