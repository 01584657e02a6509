"""Two-tower ranking: score = <user, item>, trained with a softmax over a candidate set.

Candidates are the whole catalogue (`full`: exact, cheap when every encoder is frozen and cached), the batch's
own targets (`in_batch`), or those plus `num_negatives` uniformly sampled items shared by the batch
(`sampled`). The last two are what make fine-tuning an encoder affordable: only the candidates go through the
LM. After Covington et al. (YouTube DNN, 2016) and Yi et al. (sampling-bias-corrected two-tower, 2019).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fusionrec.model.heads.base import Batch, Head

Negatives = Literal["full", "in_batch", "sampled"]


class RankingHead(Head):
    name = "ranking"
    pretty_name = "Two-tower dot product, softmax over candidates"
    loss = "cross-entropy of the target among the candidates (full catalogue, in-batch, or in-batch + sampled)"
    reference_url = "https://research.google/pubs/sampling-bias-corrected-neural-modeling-for-large-corpus-item-recommendations/"
    evaluates = "ranks"

    def __init__(self, negatives: Negatives = "full", num_negatives: int = 256) -> None:
        super().__init__()
        if negatives not in ("full", "in_batch", "sampled"):
            raise ValueError(f"negatives must be 'full', 'in_batch' or 'sampled', got {negatives!r}")
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        self.negatives = negatives
        self.num_negatives = num_negatives

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "negatives": self.negatives, "num_negatives": self.num_negatives}

    def sample_negatives(self, rng: np.random.Generator, n_items: int) -> Tensor | None:
        """[K] uniformly drawn items shared by one batch (`sampled` only), drawn from the loop's generator so
        that a resumed run draws the same ones."""
        if self.negatives != "sampled":
            return None
        return torch.from_numpy(rng.integers(0, n_items, size=self.num_negatives, dtype=np.int64))

    def candidates(self, targets: Tensor, negatives: Tensor | None) -> tuple[Tensor | None, Tensor]:
        """Which items the item tower must embed for one batch.

        Args:
            targets: [Q] the target item of each prediction slot.
            negatives: [K] sampled items, or None.
        Returns:
            candidate item indices [C] (None = the whole catalogue) and each target's position in them [Q].
        """
        if self.negatives == "full":
            return None, targets
        pool = targets if negatives is None else torch.cat([targets, negatives.to(targets.device)])
        # A sampled negative equal to a target collapses into it, so no target is ever its own negative.
        ids, inverse = torch.unique(pool, return_inverse=True)  # [C], [Q + K]
        return ids, inverse[: len(targets)]

    def calculate_loss(self, users: Tensor, items: Tensor, batch: Batch) -> Tensor:
        """users [Q, D], candidates [C, D], batch["target_index"] [Q] -> mean cross-entropy."""
        logits = users @ items.T  # [Q, D] @ [D, C] -> [Q, C]
        return F.cross_entropy(logits.float(), batch["target_index"])

    def predict(self, users: Tensor, items: Tensor, batch: Batch) -> Tensor:
        return (users * items).sum(dim=-1)  # [B, D] -> [B]

    def full_sort_predict(self, users: Tensor, items: Tensor, user_index: Tensor) -> Tensor:
        return users @ items.T  # [B, D] @ [D, N] -> [B, N]
