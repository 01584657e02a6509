"""Learned global weights over models: one logit per model, softmax, weighted sum.

The simplest fusion that still learns which LM matters, in the manner of ELMo's scalar mix over layers
(Peters et al. 2018). Its weights are the same for every example, so they read directly as "how much each
model counts", which makes it the baseline the per-example methods are compared against.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fusionrec.model.fusion.base import FusionMethod, FusionWeights, mix
from fusionrec.spec import FusionSpec


class WeightedFusion(FusionMethod):
    name = "weighted"
    pretty_name = "Weighted average (learned softmax weights)"
    paper = "Peters et al., Deep contextualized word representations (ELMo scalar mix), NAACL 2018"
    reference_url = "https://arxiv.org/abs/1802.05365"
    supports_context = False

    def __init__(self, spec: FusionSpec, model_names: Sequence[str], *, use_context: bool = False) -> None:
        super().__init__(spec, model_names, use_context=use_context)
        # Zero logits: training starts from the plain mean, so no model is favoured before data says so.
        self.logits = nn.Parameter(torch.zeros(self.num_models))

    def forward(self, stacked: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(stacked, context)
        return mix(stacked, torch.softmax(self.logits, dim=0))  # [B, M, D] x [M] -> [B, D]

    def weights(self, stacked: torch.Tensor | None = None, context: torch.Tensor | None = None) -> FusionWeights:
        """The global softmax weights; `stacked` is checked when given but does not change them."""
        if stacked is not None:
            self.check_inputs(stacked, context)
        with self._inference():
            w = torch.softmax(self.logits, dim=0).cpu()
        return {"kind": "global", "models": list(self.model_names), "per_model": self._per_model(w)}
