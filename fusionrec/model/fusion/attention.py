"""Per-example attention over models: a query scores each model's embedding, softmax over models.

Follows dynamic meta-embeddings (Kiela et al. 2018): embeddings from several sources are projected to one
space and mixed with weights computed from the embeddings themselves, so the mix can differ per item.
The query is a learned vector, or (with `use_context=True`) a projection of a context such as the user
state, so that different users can lean on different LMs.

Each model also gets a learned key bias (a "model identity" embedding added to its key). Without it a
shared key projection can tell models apart only by what their vectors look like, and encoders projected to
a common space can overlap; with it the attention can also learn a global preference, as `weighted` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from fusionrec.model.fusion.base import FusionMethod, FusionWeights, mix
from fusionrec.spec import FusionSpec


class AttentionFusion(FusionMethod):
    name = "attention"
    pretty_name = "Attention over models (learned or context query)"
    paper = "Kiela, Wang & Cho, Dynamic Meta-Embeddings for Improved Sentence Representations, EMNLP 2018"
    reference_url = "https://arxiv.org/abs/1804.07983"

    def __init__(self, spec: FusionSpec, model_names: Sequence[str], *, use_context: bool = False) -> None:
        super().__init__(spec, model_names, use_context=use_context)
        d = self.dim
        self.key = nn.Linear(d, d, bias=False)
        self.model_key = nn.Parameter(torch.zeros(self.num_models, d))  # [M, D] per-model key bias
        if use_context:
            self.query_proj = nn.Linear(d, d)
        else:
            # Small random query: near-uniform weights at the start, but a non-zero gradient into `key`.
            self.query = nn.Parameter(torch.randn(d) * 0.02)

    def _attention(self, stacked: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """[B, M, D] -> [B, M] softmax weights over models."""
        keys = self.key(stacked) + self.model_key  # [B, M, D]
        if context is None:
            scores = keys @ self.query  # [B, M, D] @ [D] -> [B, M]
        else:
            query = self.query_proj(context)  # [B, D]
            scores = (keys @ query.unsqueeze(-1)).squeeze(-1)  # [B, M, D] @ [B, D, 1] -> [B, M]
        return torch.softmax(scores / math.sqrt(self.dim), dim=-1)

    def forward(self, stacked: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(stacked, context)
        return mix(stacked, self._attention(stacked, context))  # [B, M, D] x [B, M] -> [B, D]

    def weights(self, stacked: torch.Tensor | None = None, context: torch.Tensor | None = None) -> FusionWeights:
        """Per-example attention weights [B, M] and their batch mean; needs the inputs they depend on."""
        if stacked is None:
            raise ValueError("attention weights are per example: pass stacked [B, M, D] (and context if used)")
        self.check_inputs(stacked, context)
        with self._inference():
            return self._per_example_report(self._attention(stacked, context))
