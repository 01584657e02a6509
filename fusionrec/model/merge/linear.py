"""Linear merge (a "model soup"): the weighted average of same-shape checkpoints.

Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves accuracy without
increasing inference time", ICML 2022. Weights are normalised to sum to one, so `(2, 2)` and `(1, 1)` give the
same soup and a weight of 0 removes a model: the soup always stays on the segment between the checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fusionrec.errors import UserError
from fusionrec.model.merge.base import MergeDetail, MergeMethod


class LinearMerge(MergeMethod):
    def name(self) -> str:
        return "linear"

    def pretty_name(self) -> str:
        return "Linear (model soup)"

    def reference_url(self) -> str:
        return "https://arxiv.org/abs/2203.05482"

    def check_weights(self, weights: Sequence[float]) -> None:
        if sum(weights) <= 0:
            raise UserError(f"a linear merge needs at least one positive weight, got {list(weights)}",
                            field="merge.models[].weight")

    def _merge(
        self,
        name: str,
        tensors: list[torch.Tensor],
        base: torch.Tensor | None,
        weights: list[float],
        params: Mapping[str, Any],
    ) -> tuple[torch.Tensor, MergeDetail]:
        total = sum(weights)
        if total <= 0 or any(w < 0 for w in weights):
            raise ValueError(f"{name}: linear merge needs non-negative weights with a positive sum, got {weights}")
        stacked = torch.stack(tensors)  # (n_models, *shape)
        w = torch.tensor(weights, dtype=stacked.dtype).view(-1, *([1] * (stacked.dim() - 1)))  # (n_models, 1, ...)
        return (stacked * w).sum(dim=0) / total, MergeDetail()
