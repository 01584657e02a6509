"""Explicit feature crosses over the (user, item) pair: the cross network of DCN-v2 (Wang et al., 2021).

An MLP over [u, i, u*i] learns high-order interactions only implicitly and slowly; RecBole's DCN, the best CTR
model on MovieLens-100K here, adds a cross network whose layer l computes x0 * (W_l x_l + b_l) + x_l, so after L
layers every polynomial of the input of degree <= L + 1 is reachable with few parameters. The pointwise heads add
its read-out to their score.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

MAX_LAYERS = 6


class CrossNetwork(nn.Module):
    """L full-rank cross layers over x0 = [u, i], then a linear read-out to one score.

    The read-out starts at zero, so a head with crosses starts exactly where the head without them does and
    learns the crosses on top (and an artifact's score is unchanged at initialisation).

    Args:
        width: size of x0 (2D for the concatenated towers).
        layers: L, 1 to MAX_LAYERS.
    """

    reference_url = "https://arxiv.org/abs/2008.13535"

    def __init__(self, width: int, layers: int) -> None:
        super().__init__()
        if not 1 <= layers <= MAX_LAYERS:
            raise ValueError(f"cross layers must be in [1, {MAX_LAYERS}], got {layers}")
        linears = [nn.Linear(width, width) for _ in range(layers)]
        self.layers = nn.ModuleList(linears)
        for layer in linears:
            # Small weights: x0 * (W x) multiplies two tower vectors, and their product must not swamp x_l.
            nn.init.normal_(layer.weight, std=width ** -0.5 * 0.1)
            nn.init.zeros_(layer.bias)
        self.readout = nn.Linear(width, 1)
        nn.init.zeros_(self.readout.weight)
        nn.init.zeros_(self.readout.bias)

    def forward(self, x0: Tensor) -> Tensor:
        """[B, width] -> [B] scores."""
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x  # [B, width]
        return self.readout(x).squeeze(-1)


def pair_features(users: Tensor, items: Tensor) -> Tensor:
    """[B, D] users, [B, D] items -> [B, 2D], the cross network's x0."""
    return torch.cat([users, items], dim=-1)
