"""Concatenate the models' embeddings and let an MLP map them back to D, plus a residual from their mean.

Concatenation is the standard meta-embedding baseline (Yin & Schuetze 2016): the MLP can combine features
across models, which no mixture of whole vectors can. The residual from the mean, with the MLP's output
layer starting at zero, means the module begins as a plain average and learns a correction, which keeps the
first steps of fine-tuning as stable as the weighted average.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fusionrec.model.fusion.base import FusionMethod, FusionWeights
from fusionrec.spec import FusionSpec


class ConcatMLPFusion(FusionMethod):
    name = "concat_mlp"
    pretty_name = "Concatenation + MLP (residual from the mean)"
    paper = "Yin & Schuetze, Learning Word Meta-Embeddings, ACL 2016"
    reference_url = "https://aclanthology.org/P16-1128/"

    def __init__(self, spec: FusionSpec, model_names: Sequence[str], *, use_context: bool = False) -> None:
        super().__init__(spec, model_names, use_context=use_context)
        inputs = (self.num_models + int(use_context)) * self.dim
        self.mlp = nn.Sequential(
            nn.Linear(inputs, spec.hidden),
            nn.GELU(),
            nn.Dropout(spec.dropout),
            output := nn.Linear(spec.hidden, self.dim),
        )
        nn.init.zeros_(output.weight)
        nn.init.zeros_(output.bias)

    def forward(self, stacked: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(stacked, context)
        features = stacked.flatten(1)  # [B, M, D] -> [B, M*D]
        if context is not None:
            features = torch.cat([features, context], dim=-1)  # [B, (M+1)*D]
        return stacked.mean(dim=1) + self.mlp(features)  # [B, D] + [B, D]

    def weights(self, stacked: torch.Tensor | None = None, context: torch.Tensor | None = None) -> FusionWeights:
        """A gradient-free attribution, not a mixing distribution: no per-model weight exists in this method.

        Each model's score is the Frobenius norm of its [hidden, D] slice of the first layer's weight (how
        strongly the MLP reads that model's block of the concatenation), normalised over the models; the
        context's slice is left out. It ignores the residual mean (equal for all models) and the scale of
        the inputs, so compare it across models of one module, not across modules. `stacked` is only
        checked when given.
        """
        if stacked is not None:
            self.check_inputs(stacked, context)
        with self._inference():
            first_layer = self.mlp[0]
            assert isinstance(first_layer, nn.Linear)  # built in __init__; Sequential's items are typed as Module
            first = first_layer.weight  # [hidden, (M[+1])*D]
            slices = first[:, : self.num_models * self.dim].reshape(first.shape[0], self.num_models, self.dim)
            norms = slices.pow(2).sum(dim=(0, 2)).sqrt().cpu()  # [hidden, M, D] -> [M]
            total = norms.sum()
            share = norms / total if total > 0 else torch.full_like(norms, 1.0 / self.num_models)
        return {"kind": "attribution", "models": list(self.model_names), "per_model": self._per_model(share)}
