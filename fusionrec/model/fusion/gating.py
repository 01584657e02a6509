"""Mixture-of-experts gating over models: an MLP reads all embeddings at once and emits softmax gates.

Unlike `attention`, which scores each model's embedding on its own, the gate sees every model's view of the
example together (and the context, when used), so it can learn rules like "trust the decoder when the
encoders disagree". The classic softmax-gated mixture of Jacobs et al. (1991), with the LMs as experts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fusionrec.model.fusion.base import FusionMethod, FusionWeights, mix
from fusionrec.spec import FusionSpec


class GatingFusion(FusionMethod):
    name = "gating"
    pretty_name = "Gated mixture of models (MLP gate)"
    paper = "Jacobs, Jordan, Nowlan & Hinton, Adaptive Mixtures of Local Experts, Neural Computation 1991"
    reference_url = "https://doi.org/10.1162/neco.1991.3.1.79"

    def __init__(self, spec: FusionSpec, model_names: Sequence[str], *, use_context: bool = False) -> None:
        super().__init__(spec, model_names, use_context=use_context)
        inputs = (self.num_models + int(use_context)) * self.dim
        self.gate = nn.Sequential(
            nn.Linear(inputs, spec.hidden),
            nn.GELU(),
            nn.Dropout(spec.dropout),
            output := nn.Linear(spec.hidden, self.num_models),
        )
        # Zero output layer: uniform gates at the start; the hidden layer still learns from the first step on.
        nn.init.zeros_(output.weight)
        nn.init.zeros_(output.bias)

    def _gates(self, stacked: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """[B, M, D] -> [B, M] softmax gates."""
        features = stacked.flatten(1)  # [B, M, D] -> [B, M*D]
        if context is not None:
            features = torch.cat([features, context], dim=-1)  # [B, (M+1)*D]
        return torch.softmax(self.gate(features), dim=-1)

    def forward(self, stacked: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(stacked, context)
        return mix(stacked, self._gates(stacked, context))  # [B, M, D] x [B, M] -> [B, D]

    def weights(self, stacked: torch.Tensor | None = None, context: torch.Tensor | None = None) -> FusionWeights:
        """Per-example gates [B, M] (without dropout) and their batch mean; needs the inputs they depend on."""
        if stacked is None:
            raise ValueError("gating weights are per example: pass stacked [B, M, D] (and context if used)")
        self.check_inputs(stacked, context)
        with self._inference():
            return self._per_example_report(self._gates(stacked, context))
