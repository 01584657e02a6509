"""The pointwise heads' cross network (task.crossLayers): starts as a no-op, learns products, refuses bad depths."""

from __future__ import annotations

import pytest
import torch

from fusionrec.model.heads import build_head
from fusionrec.model.heads.cross import MAX_LAYERS, CrossNetwork


def test_a_head_with_crosses_scores_like_one_without_at_initialisation() -> None:
    torch.manual_seed(0)
    plain = build_head("ctr", dim=8, n_users=3)
    torch.manual_seed(0)
    crossed = build_head("ctr", dim=8, n_users=3, cross_layers=2)
    users, items, index = torch.randn(5, 8), torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1])
    assert crossed.cross is not None and plain.cross is None
    torch.testing.assert_close(crossed.score(users, items, index), plain.score(users, items, index))


def test_one_cross_layer_learns_a_product_of_two_inputs() -> None:
    """x0[0] * x0[1] is a degree-2 cross: one layer represents it exactly, so the fit gets close to zero error."""
    torch.manual_seed(0)
    net = CrossNetwork(4, 1)
    x = torch.randn(512, 4)
    target = x[:, 0] * x[:, 1]
    optimiser = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(600):
        optimiser.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), target)
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.02 * target.var().item()


def test_rating_head_carries_crosses_too() -> None:
    head = build_head("rating", dim=4, n_users=2, cross_layers=1)
    assert head.cross is not None and len(head.cross.layers) == 1


@pytest.mark.parametrize("layers", [0, MAX_LAYERS + 1])
def test_out_of_range_depth_is_refused(layers: int) -> None:
    with pytest.raises(ValueError, match="cross layers"):
        CrossNetwork(4, layers)
