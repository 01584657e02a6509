"""Logistic regression over one-hot user, item and side features: the linear CTR baseline.

Reference: M. Richardson, E. Dominowska and R. Ragno, "Predicting Clicks: Estimating the Click-Through Rate for
New Ads", WWW 2007, https://doi.org/10.1145/1242572.1242643.
"""

from __future__ import annotations

import torch
from torch import nn

from fusionrec.baselines.features import FeatureConfig, FeatureTable, FieldCTRModel, FieldEmbedding
from fusionrec.data.schema import Dataset
from fusionrec.data.splits import RandomSplit


class LogisticRegression(FieldCTRModel):
    name = "lr"
    paper = "https://doi.org/10.1145/1242572.1242643"

    def __init__(self, table: FeatureTable) -> None:
        super().__init__()
        self.fields = list(table.fields)
        self.weights = FieldEmbedding(table, dim=1)  # one scalar weight per feature value
        nn.init.zeros_(self.weights.embedding.weight)
        self.bias = nn.Parameter(torch.zeros(1))

    @classmethod
    def from_data(cls, dataset: Dataset, split: RandomSplit,
                  features: FeatureConfig | None = None) -> LogisticRegression:
        return cls(FeatureTable(dataset, split.vocab, features))

    def logits(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return self.bias + self.weights(user, item).sum(dim=(1, 2))  # [B, F, 1] -> [B]
