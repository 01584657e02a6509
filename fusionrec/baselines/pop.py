"""Most-popular: every user gets the items with the most training interactions.

The floor every personalised model must clear; on MovieLens it is a surprisingly strong one. Fitted by
counting, so it has no gradient steps (`trainable = False`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from fusionrec.baselines.base import RankingModel
from fusionrec.data.schema import ITEM_IDX, Dataset
from fusionrec.data.splits import LeaveOneOutSplit


class Popularity(RankingModel):
    name = "pop"
    paper = ""
    trainable = False
    counts: torch.Tensor  # buffer [n_items]

    def __init__(self, n_items: int) -> None:
        super().__init__()
        if n_items < 1:
            raise ValueError(f"n_items must be positive, got {n_items}")
        self.n_items = n_items
        self.register_buffer("counts", torch.zeros(n_items, dtype=torch.float32))  # [n_items]

    @classmethod
    def from_data(cls, dataset: Dataset, split: LeaveOneOutSplit) -> Popularity:
        return cls(split.n_items)

    def fit_without_gradients(self, split: LeaveOneOutSplit) -> None:
        if split.n_items != self.n_items:
            raise ValueError(f"split has {split.n_items} items, the model was built for {self.n_items}")
        counts = np.bincount(split.train[ITEM_IDX].to_numpy(), minlength=self.n_items)
        self.counts.copy_(torch.as_tensor(counts, dtype=torch.float32))

    def training_batches(self, split: LeaveOneOutSplit, batch_size: int,
                         rng: np.random.Generator) -> Iterator[dict[str, torch.Tensor]]:
        return iter(())

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError("Popularity is fitted by counting (fit_without_gradients), not by a loss")

    def full_sort_predict(self, users: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        return self.counts.unsqueeze(0).expand(len(users), -1)  # [B, n_items], the same row for everyone
