"""The contract every representation-fusion method follows.

Fusion sits between the encoders and the task head: it receives the M encoders' pooled embeddings, already
projected to the common dimension and stacked as [B, M, D], and returns one [B, D] vector per example. Each
method also reports how much each language model counts (`weights()`), because "which LM carries the
recommendation" is a question users ask of a fused model (design.md section 3) and the serving app shows the
answer on `GET /v1/model`.

Context (e.g. a user state [B, D]) is opt-in at construction (`use_context=True`) rather than silently
optional per call: a module whose context parameters are sometimes unused breaks DDP's gradient reduction,
and a model trained with context should never quietly run without it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Literal, TypedDict

import torch
from torch import nn

from fusionrec.spec import FusionSpec

WeightKind = Literal["global", "per_example", "attribution"]


class FusionWeights(TypedDict, total=False):
    """What `weights()` returns.

    kind: "global" (one learned distribution), "per_example" (a distribution per input row) or
        "attribution" (a gradient-free importance score, not a mixing distribution).
    models: the model names, in the order of the M axis.
    per_model: name -> weight; for per-example methods the mean over the batch. Sums to 1.
    per_example: [B, M] weights, each row summing to 1 (per-example methods only; detached, on CPU).
    """

    kind: WeightKind
    models: list[str]
    per_model: dict[str, float]
    per_example: torch.Tensor


class FusionMethod(nn.Module):
    """Base class: shape checks, the description of the method, and the weights report.

    Subclasses set the class attributes, build their layers in `__init__` (after calling this one) and
    implement `forward` and `weights`.
    """

    name: ClassVar[str]
    pretty_name: ClassVar[str]
    paper: ClassVar[str]  # citation of the idea the method follows
    reference_url: ClassVar[str]
    supports_context: ClassVar[bool] = True

    def __init__(self, spec: FusionSpec, model_names: Sequence[str], *, use_context: bool = False) -> None:
        super().__init__()
        names = list(model_names)
        if not names:
            raise ValueError("model_names is empty: fusion needs at least one encoder")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model_names must be unique; repeated: {duplicates} in {names}")
        if use_context and not self.supports_context:
            raise ValueError(
                f"fusion method {self.name!r} has one global weight per model and cannot condition on a "
                f"context vector; use attention, gating or concat_mlp, or build it with use_context=False"
            )
        self.spec = spec
        self.model_names = names
        self.dim = spec.dim
        self.use_context = use_context

    @property
    def num_models(self) -> int:
        return len(self.model_names)

    def describe(self) -> dict[str, Any]:
        """What ran, for reports written next to a model and for `GET /v1/model`."""
        return {
            "method": self.name,
            "pretty_name": self.pretty_name,
            "paper": self.paper,
            "reference_url": self.reference_url,
            "models": list(self.model_names),
            "dim": self.dim,
            "hidden": self.spec.hidden,
            "dropout": self.spec.dropout,
            "use_context": self.use_context,
        }

    def check_inputs(self, stacked: torch.Tensor, context: torch.Tensor | None) -> None:
        """Raise ValueError with the actual shapes when the inputs do not fit this module."""
        if not isinstance(stacked, torch.Tensor):
            raise ValueError(f"stacked must be a tensor [B, M, D], got {type(stacked).__name__}")
        expected = f"[B, M={self.num_models}, D={self.dim}] (models {self.model_names})"
        if stacked.dim() != 3:
            raise ValueError(f"stacked must be {expected}, got shape {list(stacked.shape)}")
        if stacked.shape[1] != self.num_models:
            raise ValueError(
                f"stacked has {stacked.shape[1]} models on axis 1 but the fusion was built for "
                f"{self.num_models} {self.model_names}: shape {list(stacked.shape)}, expected {expected}"
            )
        if stacked.shape[2] != self.dim:
            raise ValueError(
                f"stacked has dim {stacked.shape[2]} on axis 2 but fusion.dim is {self.dim}: "
                f"shape {list(stacked.shape)}, expected {expected}"
            )
        if not stacked.is_floating_point():
            raise ValueError(f"stacked must be a floating-point tensor, got dtype {stacked.dtype}")
        if context is None:
            if self.use_context:
                raise ValueError(f"{self.name} fusion was built with use_context=True: pass context [B, D]")
            return
        if not self.use_context:
            raise ValueError(
                f"{self.name} fusion was built with use_context=False but got a context of shape "
                f"{list(context.shape)}; build it with use_context=True to condition on it"
            )
        if context.shape != (stacked.shape[0], self.dim):
            raise ValueError(
                f"context must be [B={stacked.shape[0]}, D={self.dim}] to match stacked "
                f"{list(stacked.shape)}, got shape {list(context.shape)}"
            )

    def forward(self, stacked: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Fuse the models' embeddings.

        Args:
            stacked: [B, M, D] the M encoders' pooled embeddings, projected to D = fusion.dim.
            context: [B, D] optional conditioning vector (only when built with use_context=True).
        Returns:
            [B, D] fused embeddings.
        """
        raise NotImplementedError

    def weights(self, stacked: torch.Tensor | None = None, context: torch.Tensor | None = None) -> FusionWeights:
        """How much each model counts; see `FusionWeights` for the keys."""
        raise NotImplementedError

    # --- helpers for subclasses -------------------------------------------------------------------------

    @contextmanager
    def _inference(self) -> Iterator[None]:
        """No gradients and no dropout while reporting weights, restoring the caller's train/eval mode."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def _per_model(self, weights: torch.Tensor) -> dict[str, float]:
        """[M] -> {name: weight}."""
        return {name: float(w) for name, w in zip(self.model_names, weights.tolist())}

    def _per_example_report(self, per_example: torch.Tensor) -> FusionWeights:
        """[B, M] mixing weights -> the report, with the batch mean as the per-model summary."""
        per_example = per_example.detach().float().cpu()
        return {
            "kind": "per_example",
            "models": list(self.model_names),
            "per_model": self._per_model(per_example.mean(dim=0)),
            "per_example": per_example,
        }


def mix(stacked: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum over the model axis: [B, M, D] x ([B, M] or [M]) -> [B, D]."""
    if weights.dim() == 1:
        weights = weights.unsqueeze(0)  # [M] -> [1, M], broadcast over the batch
    return (stacked * weights.unsqueeze(-1).to(stacked.dtype)).sum(dim=1)  # [B, M, 1] * [B, M, D] -> [B, D]
