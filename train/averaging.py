"""An exponential moving average of the trainable weights (training.emaDecay).

Models with large ID tables overfit within a few epochs (CTR on MovieLens peaks at epoch 3-5), and the weights
of a single step are noisy around the point the schedule is heading to. The average of the recent steps is a
flatter, better-generalising point for free: validation, checkpoint selection and the artifact all use it,
while the optimiser keeps stepping the live weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class WeightAverage:
    """shadow = decay * shadow + (1 - decay) * weights, after every optimiser step.

    Args:
        model: the model being trained (not a DDP wrapper: ranks hold the same weights, so they average alike).
        decay: in [0, 1); about 1 / (1 - decay) recent steps dominate the average.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.shadow = {name: p.detach().clone() for name, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, param in self.params.items():
            self.shadow[name].lerp_(param.detach(), 1.0 - self.decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in place of the live ones for the block (validation, snapshots)."""
        live = {name: p.detach().clone() for name, p in self.params.items()}
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, param in self.params.items():
                    param.copy_(live[name])

    def state_dict(self) -> dict[str, Tensor]:
        return {name: value.clone() for name, value in self.shadow.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if set(state) != set(self.shadow):
            missing, unexpected = sorted(set(self.shadow) - set(state)), sorted(set(state) - set(self.shadow))
            raise ValueError(f"weight average does not fit the model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        for name, value in state.items():
            self.shadow[name].copy_(value)
