"""The two splits of the evaluation protocol (design.md section 4). Every number the project reports uses one.

- Ranking: per user, sort by timestamp (ties keep file order); last item -> test, second last -> validation,
  the rest -> train. Users with fewer than 3 interactions keep them all in train (counted in the log).
- CTR / rating: seeded random 80/10/10 split by interaction (seed 2020), label = rating >= 4.

Data whose timestamps carry no usable order (`data.order: none`) gets the same splits over a seeded random
order instead: each user's interactions are shuffled (seed 2020), so the ranking hold-out is a random item per
user, and the split's timestamp column holds that random order, which every later step (training sequences,
histories) then reads as the order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fusionrec.data.schema import ITEM, ITEM_IDX, LABEL, RATING, TIME, USER, USER_IDX, Dataset, Vocab

log = logging.getLogger(__name__)

RANDOM_SPLIT_SEED = 2020  # the protocol's random split is fixed (fusionrec.protocol): seeds vary the model only


@dataclass(frozen=True)
class LeaveOneOutSplit:
    """Chronological leave-one-out. Frames carry user_idx, item_idx, timestamp (and rating when known).

    train: every training interaction, grouped by user in chronological order.
    valid / test: one row per user that has enough history (users with < 3 interactions have none).
    """

    vocab: Vocab
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame

    @property
    def n_users(self) -> int:
        return self.vocab.n_users

    @property
    def n_items(self) -> int:
        return self.vocab.n_items

    @cached_property
    def train_sequences(self) -> list[np.ndarray]:
        """Per user index, the chronological item indices seen in training (an empty array if none)."""
        seqs: list[np.ndarray] = [np.empty(0, dtype=np.int64) for _ in range(self.n_users)]
        for user, items in self.train.groupby(USER_IDX, sort=False)[ITEM_IDX]:
            seqs[int(user)] = items.to_numpy(dtype=np.int64)
        return seqs

    def history(self, stage: str) -> list[np.ndarray]:
        """What a user has seen before `stage` ("valid" or "test"), oldest first: the model's input."""
        if stage == "valid":
            return self.train_sequences
        if stage == "test":
            valid_item = dict(zip(self.valid[USER_IDX].to_numpy(), self.valid[ITEM_IDX].to_numpy()))
            return [
                np.append(seq, valid_item[u]) if u in valid_item else seq
                for u, seq in enumerate(self.train_sequences)
            ]
        raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")

    def seen_matrix(self, stage: str) -> sp.csr_matrix:
        """[n_users, n_items] 0/1 matrix of items to exclude when ranking at `stage`."""
        frames = [self.train] if stage == "valid" else [self.train, self.valid]
        if stage not in ("valid", "test"):
            raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")
        both = pd.concat(frames)
        data = np.ones(len(both), dtype=np.float32)
        matrix = sp.csr_matrix(
            (data, (both[USER_IDX].to_numpy(), both[ITEM_IDX].to_numpy())), shape=(self.n_users, self.n_items)
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0  # repeated interactions collapse to one
        return matrix

    def targets(self, stage: str) -> pd.DataFrame:
        if stage == "valid":
            return self.valid
        if stage == "test":
            return self.test
        raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")


ORDERS = ("time", "none")


def _order_column(frame: pd.DataFrame, order: str, seed: int) -> np.ndarray:
    """The split's timestamp column: the real timestamps, or (order "none") a seeded random permutation of the
    rows, which orders each user's interactions at random and keeps no trace of the file's or the clock's order."""
    if order == "time":
        return frame[TIME].to_numpy(dtype=np.int64)
    if order == "none":
        return np.random.default_rng(seed).permutation(len(frame)).astype(np.int64)
    raise ValueError(f"order must be one of {ORDERS}, got {order!r}")


def leave_one_out(dataset: Dataset, vocab: Vocab | None = None, order: str = "time",
                  seed: int = RANDOM_SPLIT_SEED) -> LeaveOneOutSplit:
    """Chronological leave-one-out, or (order "none") the same hold-out over a seeded random order per user."""
    vocab = vocab or Vocab.from_dataset(dataset)
    frame = dataset.interactions.reset_index(drop=True)
    columns = {USER_IDX: vocab.encode_users(frame[USER]), ITEM_IDX: vocab.encode_items(frame[ITEM]),
               TIME: _order_column(frame, order, seed)}
    if RATING in frame:
        columns[RATING] = frame[RATING].to_numpy(dtype=np.float64)
    table = pd.DataFrame(columns)
    if order == "none":
        # Without an order a repeated item is no "later" event: holding out one of its rows would leave the
        # answer in the user's training history. Each (user, item) pair counts once.
        repeated = table.duplicated([USER_IDX, ITEM_IDX])
        if repeated.any():
            log.info("data.order none: %d repeated (user, item) interactions counted once", int(repeated.sum()))
            table = table[~repeated]
    # Stable sort: timestamp ties keep the order in the file, as the protocol says.
    table = table.sort_values([USER_IDX, TIME], kind="stable").reset_index(drop=True)
    position_from_end = table.groupby(USER_IDX, sort=False).cumcount(ascending=False).to_numpy()
    counts = table.groupby(USER_IDX, sort=False)[ITEM_IDX].transform("size").to_numpy()
    eligible = counts >= 3
    short_users = int(table.loc[~eligible, USER_IDX].nunique())
    if short_users:
        log.warning("%d users have fewer than 3 interactions: all of them stay in train, none is evaluated",
                    short_users)
    is_test = eligible & (position_from_end == 0)
    is_valid = eligible & (position_from_end == 1)
    train = table[~(is_test | is_valid)].reset_index(drop=True)
    valid = table[is_valid].reset_index(drop=True)
    test = table[is_test].reset_index(drop=True)
    return LeaveOneOutSplit(vocab=vocab, train=train, valid=valid, test=test)


@dataclass(frozen=True)
class RandomSplit:
    """Seeded random 80/10/10 split by interaction, for CTR and rating. Frames keep the raw id columns and
    add user_idx, item_idx, label (rating >= threshold when no label column is given)."""

    vocab: Vocab
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    seed: int

    def part(self, stage: str) -> pd.DataFrame:
        return {"train": self.train, "valid": self.valid, "test": self.test}[stage]


def random_split(dataset: Dataset, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
                 seed: int = RANDOM_SPLIT_SEED,
                 positive_threshold: float = 4.0, vocab: Vocab | None = None, order: str = "time") -> RandomSplit:
    """Seeded 80/10/10 by interaction; with order "none" the timestamp column is replaced by a random order, so
    the history before a row (what the user tower reads) is a random subset of the user's training rows."""
    if abs(sum(ratios) - 1.0) > 1e-9 or any(r < 0 for r in ratios):
        raise ValueError(f"split ratios must be non-negative and sum to 1, got {ratios}")
    vocab = vocab or Vocab.from_dataset(dataset)
    frame = dataset.interactions.reset_index(drop=True).copy()
    frame[USER_IDX] = vocab.encode_users(frame[USER])
    frame[ITEM_IDX] = vocab.encode_items(frame[ITEM])
    frame[TIME] = _order_column(frame, order, seed + 1)  # another stream than the split's permutation below
    if LABEL not in frame:
        if RATING not in frame:
            raise ValueError("a CTR/rating split needs a rating or label column")
        frame[LABEL] = (frame[RATING] >= positive_threshold).astype(np.int8)
    shuffled = np.random.default_rng(seed).permutation(len(frame))
    n_train = int(round(ratios[0] * len(frame)))
    n_valid = int(round(ratios[1] * len(frame)))
    parts = np.split(shuffled, [n_train, n_train + n_valid])
    train, valid, test = (frame.iloc[np.sort(idx)].reset_index(drop=True) for idx in parts)
    return RandomSplit(vocab=vocab, train=train, valid=valid, test=test, seed=seed)
