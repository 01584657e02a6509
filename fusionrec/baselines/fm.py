"""Factorization machine: logistic regression plus every pairwise field interaction, each modelled as the
dot product of two learned factor vectors, so pairs never seen together still get a weight.

Reference: S. Rendle, "Factorization Machines", ICDM 2010, https://doi.org/10.1109/ICDM.2010.127.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fusionrec.baselines.features import FeatureConfig, FeatureTable, FieldCTRModel, FieldEmbedding
from fusionrec.data.schema import Dataset
from fusionrec.data.splits import RandomSplit


@dataclass
class FMConfig:
    embedding_size: int = 10


def pairwise_interactions(factors: torch.Tensor) -> torch.Tensor:
    """Sum over field pairs i < j of <v_i, v_j>, in O(F * D) by Rendle's identity.

    Args:
        factors: [B, F, D] one factor vector per field.
    Returns:
        [B] interaction terms.
    """
    square_of_sum = factors.sum(dim=1).pow(2)  # [B, D]
    sum_of_squares = factors.pow(2).sum(dim=1)  # [B, D]
    return 0.5 * (square_of_sum - sum_of_squares).sum(dim=1)


class FactorizationMachine(FieldCTRModel):
    name = "fm"
    paper = "https://doi.org/10.1109/ICDM.2010.127"

    def __init__(self, table: FeatureTable, config: FMConfig | None = None) -> None:
        super().__init__()
        self.config = config or FMConfig()
        if self.config.embedding_size < 1:
            raise ValueError(f"FMConfig.embedding_size must be positive, got {self.config.embedding_size}")
        self.fields = list(table.fields)
        self.weights = FieldEmbedding(table, dim=1)
        self.factors = FieldEmbedding(table, dim=self.config.embedding_size)
        nn.init.zeros_(self.weights.embedding.weight)
        nn.init.xavier_normal_(self.factors.embedding.weight)
        with torch.no_grad():
            self.factors.embedding.weight[0].zero_()  # padding stays zero
        self.bias = nn.Parameter(torch.zeros(1))

    @classmethod
    def from_data(cls, dataset: Dataset, split: RandomSplit, config: FMConfig | None = None,
                  features: FeatureConfig | None = None) -> FactorizationMachine:
        return cls(FeatureTable(dataset, split.vocab, features), config)

    def logits(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        linear = self.bias + self.weights(user, item).sum(dim=(1, 2))  # [B]
        return linear + pairwise_interactions(self.factors(user, item))
