"""The fused model's data adapters: a split's rows turned into the tensors its two contracts take.

`FusedRecommender` keeps the network (towers, fusion, head); these functions build its inputs, so the module
reads as a model and the batching can be tested and changed on its own:

- ranking: `ranking_batches`, one epoch of (history, next item) windows over the training sequences;
- CTR/rating: `pointwise_rows`, every row of a stage with the user's history before it and its feedback;
- `item_texts_in_order`: the catalogue's texts in vocabulary order, which the item tower encodes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from fusionrec.data.schema import ITEM, ITEM_IDX, LABEL, RATING, USER_IDX, Dataset
from fusionrec.data.splits import LeaveOneOutSplit, RandomSplit
from fusionrec.errors import DataError
from fusionrec.model.heads import RankingHead
from fusionrec.model.towers import histories_before, left_pad

log = logging.getLogger(__name__)

Batch = dict[str, Tensor]


def ranking_windows(train_sequences: list[np.ndarray], history_length: int, targets_per_user: int | None,
                    shuffle_with: np.random.Generator | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(history, targets) windows of item indices over each user's training sequence.

    targets_per_user None (the sequence tower): disjoint windows of `history_length`, newest first, in which every
    prefix predicts its next item (SASRec's all-positions objective). A number (the text tower): one target per
    window, the user's last `targets_per_user` training items, each with the `history_length` items before it.

    `shuffle_with` reorders each user's items first (the order-free pooled tower): every epoch then predicts
    other items from other subsets of the history, instead of always the same prefixes.
    """
    windows: list[tuple[np.ndarray, np.ndarray]] = []
    for seq in train_sequences:
        if shuffle_with is not None:
            seq = shuffle_with.permutation(seq)
        if targets_per_user is None:
            for end in range(len(seq) - 1, 0, -history_length):
                start = max(0, end - history_length)
                windows.append((seq[start:end], seq[start + 1:end + 1]))
        else:
            for t in range(len(seq) - 1, max(0, len(seq) - 1 - targets_per_user), -1):
                windows.append((seq[max(0, t - history_length):t], seq[t:t + 1]))
    return windows


def ranking_batches(split: LeaveOneOutSplit, batch_size: int, rng: np.random.Generator, *, history_length: int,
                    targets_per_user: int | None, pad: int, head: object, n_items: int,
                    shuffle_histories: bool = False) -> Iterator[Batch]:
    """One epoch of `ranking_windows`, shuffled by `rng`, as left-padded [B, L] `items` and `targets` (plus the
    head's sampled `negatives` [K], when it samples them); `shuffle_histories` reorders each user's items too."""
    windows = ranking_windows(split.train_sequences, history_length, targets_per_user,
                              shuffle_with=rng if shuffle_histories else None)
    order = rng.permutation(len(windows))
    for begin in range(0, len(order), batch_size):
        chosen = [windows[i] for i in order[begin:begin + batch_size]]
        batch = {"items": left_pad([w[0] for w in chosen], pad),  # [B, L]
                 "targets": left_pad([w[1] for w in chosen], pad)}  # [B, L] or [B, 1]
        if isinstance(head, RankingHead):
            negatives = head.sample_negatives(rng, n_items)
            if negatives is not None:
                batch["negatives"] = negatives  # [K]
        yield batch


def pointwise_rows(split: RandomSplit, stage: str, *, history_length: int, pad: int) -> Batch:
    """All rows of `stage` with each row's history: the user's training items strictly before the row's
    timestamp (so a training row never sees itself, and train and test rows are built alike) and whether the
    user liked each of them (their label), which the sequence tower reads with the items."""
    part = split.part(stage)
    history, feedback = histories_before(split.train, part, history_length, pad,
                                         feedback=LABEL if LABEL in split.train else None)
    rows = {"user": torch.tensor(part[USER_IDX].to_numpy(dtype=np.int64)),
            "item": torch.tensor(part[ITEM_IDX].to_numpy(dtype=np.int64)),
            "history": history, "history_feedback": feedback}
    if LABEL in part:
        rows["label"] = torch.tensor(part[LABEL].to_numpy(dtype=np.float32))
    if RATING in part:
        rows["rating"] = torch.tensor(part[RATING].to_numpy(dtype=np.float32))
    return rows


def item_texts_in_order(dataset: Dataset, item_ids: np.ndarray) -> list[str]:
    """The `text` of every vocabulary item, in index order; items without text fall back to their id
    (counted in the log), so an item nobody described can still be ranked."""
    if "text" not in dataset.items:
        raise DataError("items have no text column; render one with data.itemTextTemplate",
                        file=dataset.name, field="text")
    texts = dict(zip(dataset.items[ITEM].astype(str), dataset.items["text"], strict=True))
    out, missing = [], 0
    for item_id in item_ids:
        text = texts.get(str(item_id))
        if not isinstance(text, str) or not text.strip():
            missing += 1
            text = str(item_id)
        out.append(text)
    if missing:
        log.warning("%d of %d items have no text; their id stands in for it", missing, len(item_ids))
    return out
