"""Pointwise heads over (user, item) pairs: CTR (a click probability, BCE) and rating (a score, MSE).

Both score a pair the same way: a global offset, a per-user bias, an item bias read from the item vector, the
two towers' dot product and a small MLP over [u, i, u*i] for what a dot product cannot express. The per-user
bias is there because raters differ in how generous they are, which no item text can tell; it is the "biased
MF" of Koren, Bell & Volinsky (2009). The MLP's output layer starts at zero, so training starts from the
biased dot product and learns the rest. `cross_layers` adds DCN-v2's explicit crosses (see `cross.py`), also
starting at zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusionrec.model.heads.base import Batch, Head
from fusionrec.model.heads.cross import CrossNetwork, pair_features

_PAIR_BUDGET = 1 << 22  # floats of [b, N, 3D] pair features materialised at once in full_sort_predict


class PointwiseHead(Head):
    """Shared scoring of the CTR and rating heads; subclasses choose the link and the loss.

    Args:
        dim: tower dimension D.
        n_users: users with a bias (the training vocabulary).
        hidden: width of the interaction MLP.
        dropout: inside the MLP.
        cross_layers: explicit cross layers over [u, i] (0: none).
    """

    reference_url = "https://doi.org/10.1109/MC.2009.263"

    offset: Tensor  # buffer []: the scores' non-learned centre

    def __init__(self, dim: int, n_users: int, hidden: int = 128, dropout: float = 0.0,
                 cross_layers: int = 0) -> None:
        super().__init__()
        if n_users < 1:
            raise ValueError(f"n_users must be >= 1, got {n_users}")
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Linear(dim, 1)
        self.global_bias = nn.Parameter(torch.zeros(()))
        self.mlp = nn.Sequential(nn.Linear(3 * dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 mlp_out := nn.Linear(hidden, 1))
        for weight in (self.user_bias.weight, self.item_bias.weight, mlp_out.weight):
            nn.init.zeros_(weight)
        nn.init.zeros_(self.item_bias.bias)
        nn.init.zeros_(mlp_out.bias)
        # Non-learned centre of the scores: the mean training rating for the rating head, 0 for CTR.
        self.register_buffer("offset", torch.zeros(()))
        self.cross = CrossNetwork(2 * dim, cross_layers) if cross_layers else None

    def score(self, users: Tensor, items: Tensor, user_index: Tensor) -> Tensor:
        """[B, D] users, [B, D] items (row-aligned), [B] user indices -> [B] raw scores (logits or ratings)."""
        pairs = torch.cat([users, items, users * items], dim=-1)  # [B, 3D]
        biases = self.offset + self.global_bias + self.user_bias(user_index).squeeze(-1)  # [B]
        scores = biases + self.item_bias(items).squeeze(-1) + (users * items).sum(-1) + self.mlp(pairs).squeeze(-1)
        return scores if self.cross is None else scores + self.cross(pair_features(users, items))

    def link(self, scores: Tensor) -> Tensor:
        """Raw scores -> what `predict` returns."""
        raise NotImplementedError

    def predict(self, users: Tensor, items: Tensor, batch: Batch) -> Tensor:
        return self.link(self.score(users, items, batch["user"]))

    def full_sort_predict(self, users: Tensor, items: Tensor, user_index: Tensor) -> Tensor:
        """[B, D] users x [N, D] items -> [B, N], scored in chunks of users so the pair features fit."""
        n_items, dim = items.shape
        chunk = max(1, _PAIR_BUDGET // max(n_items * 3 * dim, 1))
        out = []
        for start in range(0, len(users), chunk):
            u = users[start:start + chunk]  # [b, D]
            b = len(u)
            flat_users = u.unsqueeze(1).expand(b, n_items, dim).reshape(b * n_items, dim)  # [b*N, D]
            flat_items = items.unsqueeze(0).expand(b, n_items, dim).reshape(b * n_items, dim)  # [b*N, D]
            flat_index = user_index[start:start + chunk].repeat_interleave(n_items)  # [b*N]
            out.append(self.link(self.score(flat_users, flat_items, flat_index)).view(b, n_items))
        return torch.cat(out) if out else users.new_zeros(0, n_items)


class CTRHead(PointwiseHead):
    name = "ctr"
    pretty_name = "Click-through rate (biased two-tower + interaction MLP)"
    loss = "binary cross-entropy on the 0/1 label"
    evaluates = "labels"

    def calculate_loss(self, users: Tensor, items: Tensor, batch: Batch) -> Tensor:
        return F.binary_cross_entropy_with_logits(self.score(users, items, batch["user"]).float(),
                                                  batch["label"].float())

    def link(self, scores: Tensor) -> Tensor:
        return torch.sigmoid(scores)


class RatingHead(PointwiseHead):
    name = "rating"
    pretty_name = "Rating regression (biased two-tower + interaction MLP)"
    loss = "mean squared error on the rating"
    evaluates = "ratings"

    low: Tensor  # buffer []: the lowest rating seen in training
    high: Tensor  # buffer []: the highest

    def __init__(self, dim: int, n_users: int, hidden: int = 128, dropout: float = 0.0,
                 cross_layers: int = 0) -> None:
        super().__init__(dim, n_users, hidden, dropout, cross_layers)
        self.register_buffer("low", torch.tensor(float("-inf")))
        self.register_buffer("high", torch.tensor(float("inf")))

    def set_rating_range(self, mean: float, low: float, high: float) -> None:
        """Centre scores on the training mean and clip predictions to the rating scale seen in training;
        without the centre, an optimiser at lr 1e-3 needs thousands of steps just to reach a mean of 3.5."""
        if not low <= mean <= high:
            raise ValueError(f"rating mean {mean} must lie in [low={low}, high={high}]")
        self.offset.fill_(mean)
        self.low.fill_(low)
        self.high.fill_(high)

    def calculate_loss(self, users: Tensor, items: Tensor, batch: Batch) -> Tensor:
        return F.mse_loss(self.score(users, items, batch["user"]).float(), batch["rating"].float())

    def link(self, scores: Tensor) -> Tensor:
        return scores.clamp(self.low, self.high)
