"""BPR-MF: matrix factorisation trained with the Bayesian Personalized Ranking loss.

Reference: S. Rendle, C. Freudenthaler, Z. Gantner and L. Schmidt-Thieme, "BPR: Bayesian Personalized Ranking
from Implicit Feedback", UAI 2009, https://arxiv.org/abs/1205.2618.

Each training interaction (u, i) is paired with one item j drawn uniformly from the items u has not
interacted with in training; the loss is -log sigmoid(s(u, i) - s(u, j)) with s the dot product of the
user's and the item's embeddings.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fusionrec.baselines.base import RankingModel
from fusionrec.data.schema import ITEM_IDX, USER_IDX, Dataset
from fusionrec.data.splits import LeaveOneOutSplit


@dataclass
class BPRConfig:
    embedding_size: int = 64


def sample_negatives(users: np.ndarray, positive_keys: np.ndarray, n_items: int,
                     rng: np.random.Generator) -> np.ndarray:
    """One uniform item per user that the user has no training interaction with.

    Args:
        users: [N] user indices.
        positive_keys: sorted unique user * n_items + item of every training interaction.
    Returns:
        [N] item indices.
    """
    negatives = rng.integers(0, n_items, size=len(users))
    redraw = np.arange(len(users))
    # Rejection sampling: a user has seen a small share of the catalogue, so a few rounds clear every row.
    for _ in range(1000):
        keys = users[redraw] * n_items + negatives[redraw]
        where = np.searchsorted(positive_keys, keys)
        hit = (where < len(positive_keys)) & (positive_keys[np.minimum(where, len(positive_keys) - 1)] == keys)
        redraw = redraw[hit]
        if len(redraw) == 0:
            return negatives
        negatives[redraw] = rng.integers(0, n_items, size=len(redraw))
    raise ValueError(f"could not draw negatives for {len(redraw)} interactions: users "
                     f"{np.unique(users[redraw])[:5].tolist()} have seen (almost) every one of the {n_items} items")


class BPR(RankingModel):
    name = "bpr"
    paper = "https://arxiv.org/abs/1205.2618"

    def __init__(self, n_users: int, n_items: int, config: BPRConfig | None = None) -> None:
        super().__init__()
        self.config = config or BPRConfig()
        if n_users < 1 or n_items < 1 or self.config.embedding_size < 1:
            raise ValueError(f"n_users, n_items and embedding_size must be positive, got {n_users}, {n_items}, "
                             f"{self.config.embedding_size}")
        self.n_users, self.n_items = n_users, n_items
        self.user_embedding = nn.Embedding(n_users, self.config.embedding_size)
        self.item_embedding = nn.Embedding(n_items, self.config.embedding_size)
        nn.init.xavier_normal_(self.user_embedding.weight)
        nn.init.xavier_normal_(self.item_embedding.weight)

    @classmethod
    def from_data(cls, dataset: Dataset, split: LeaveOneOutSplit, config: BPRConfig | None = None) -> BPR:
        return cls(split.n_users, split.n_items, config)

    def training_batches(self, split: LeaveOneOutSplit, batch_size: int,
                         rng: np.random.Generator) -> Iterator[dict[str, torch.Tensor]]:
        users = split.train[USER_IDX].to_numpy(dtype=np.int64)
        items = split.train[ITEM_IDX].to_numpy(dtype=np.int64)
        positive_keys = np.unique(users * self.n_items + items)
        order = rng.permutation(len(users))
        users, items = users[order], items[order]
        negatives = sample_negatives(users, positive_keys, self.n_items, rng)
        for start in range(0, len(users), batch_size):
            end = start + batch_size
            yield {"user": torch.from_numpy(users[start:end]), "pos_item": torch.from_numpy(items[start:end]),
                   "neg_item": torch.from_numpy(negatives[start:end])}

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        user = self.user_embedding(batch["user"])  # [B, D]
        pos = (user * self.item_embedding(batch["pos_item"])).sum(dim=-1)  # [B]
        neg = (user * self.item_embedding(batch["neg_item"])).sum(dim=-1)  # [B]
        return -F.logsigmoid(pos - neg).mean()

    def full_sort_predict(self, users: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        return self.user_embedding(users) @ self.item_embedding.weight.T  # [B, n_items]
