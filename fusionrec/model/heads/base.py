"""The contract every task head follows, after RecBole's abstract recommender: `calculate_loss` for training,
`predict` for (user, item) pairs and `full_sort_predict` for a user against the whole catalogue.

A head sees only tower outputs (user vectors [B, D], item vectors [.., D]) and the batch fields it declares,
never the encoders, so the fused model can swap towers and heads independently and the training loop stays
the same for every combination.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

Batch = dict[str, Tensor]


class Head(nn.Module):
    """Base class: describes itself and declares the three scoring methods."""

    name: ClassVar[str]
    pretty_name: ClassVar[str]
    loss: ClassVar[str]  # human-readable objective, for reports
    reference_url: ClassVar[str]
    # The pointwise evaluator reads "labels" (CTR) or "ratings"; ranking heads are evaluated by full ranking.
    evaluates: ClassVar[str]

    def describe(self) -> dict[str, Any]:
        return {"head": self.name, "pretty_name": self.pretty_name, "loss": self.loss,
                "reference_url": self.reference_url}

    def calculate_loss(self, users: Tensor, items: Tensor, batch: Batch) -> Tensor:
        """Scalar training loss.

        Args:
            users: [B, D] user vectors (ranking: one per prediction slot).
            items: item vectors: ranking heads get the candidate set [C, D], pointwise heads one per row [B, D].
            batch: the fields the head reads (targets, labels, ratings, user indices).
        """
        raise NotImplementedError

    def predict(self, users: Tensor, items: Tensor, batch: Batch) -> Tensor:
        """[B, D] users x [B, D] items (row-aligned) -> [B] scores, probabilities or ratings."""
        raise NotImplementedError

    def full_sort_predict(self, users: Tensor, items: Tensor, user_index: Tensor) -> Tensor:
        """[B, D] users x [N, D] catalogue -> [B, N] scores (higher is better).

        `user_index` [B] lets heads with per-user terms (biases) look them up.
        """
        raise NotImplementedError
