"""SequenceEncoder: causality, padding invariance, last-state gathering and shape errors."""

import pytest
import torch

from fusionrec.model.sasrec import SequenceEncoder, SequenceEncoderConfig


@pytest.fixture(params=[True, False], ids=["pre-ln", "post-ln"])
def encoder(request: pytest.FixtureRequest) -> SequenceEncoder:
    torch.manual_seed(0)
    cfg = SequenceEncoderConfig(dim=16, n_layers=2, n_heads=2, max_len=12, dropout=0.1, inner_size=32,
                                norm_first=request.param)
    return SequenceEncoder(cfg).eval()


def test_output_at_t_ignores_later_items(encoder: SequenceEncoder) -> None:
    items = torch.randn(3, 8, 16)
    mask = torch.ones(3, 8, dtype=torch.bool)
    changed = items.clone()
    changed[:, 5:] = torch.randn(3, 3, 16)
    before, after = encoder(items, mask), encoder(changed, mask)
    torch.testing.assert_close(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_earlier_items_do_change_the_output(encoder: SequenceEncoder) -> None:
    items = torch.randn(2, 6, 16)
    mask = torch.ones(2, 6, dtype=torch.bool)
    changed = items.clone()
    changed[:, 0] = torch.randn(2, 16)
    assert not torch.allclose(encoder(items, mask)[:, -1], encoder(changed, mask)[:, -1])


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_does_not_change_real_slots(encoder: SequenceEncoder, side: str) -> None:
    real = torch.randn(1, 5, 16)
    alone = encoder(real, torch.ones(1, 5, dtype=torch.bool))
    junk = torch.randn(1, 4, 16) * 100  # padding slots may hold anything
    padded = torch.cat([junk, real], dim=1) if side == "left" else torch.cat([real, junk], dim=1)
    mask = torch.zeros(1, 9, dtype=torch.bool)
    slots = slice(4, 9) if side == "left" else slice(0, 5)
    mask[:, slots] = True
    out = encoder(padded, mask)
    torch.testing.assert_close(out[:, slots], alone)
    torch.testing.assert_close(SequenceEncoder.last_state(out, mask), alone[:, -1])


def test_all_padding_row_is_finite(encoder: SequenceEncoder) -> None:
    mask = torch.tensor([[False, False, False], [False, True, True]])
    out = encoder(torch.randn(2, 3, 16), mask)
    assert torch.isfinite(out).all()
    assert SequenceEncoder.last_state(out, mask).shape == (2, 16)


def test_last_state_picks_the_newest_real_slot() -> None:
    states = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)  # (B, L, D)
    mask = torch.tensor([[True, True, False, False], [False, True, True, True]])
    torch.testing.assert_close(SequenceEncoder.last_state(states, mask), torch.stack([states[0, 1], states[1, 3]]))


def test_bad_shapes_name_the_actual_values(encoder: SequenceEncoder) -> None:
    with pytest.raises(ValueError, match=r"items must be \[B, L, 16\], got shape \(2, 5, 8\)"):
        encoder(torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \(2, 5\), got torch.int64"):
        encoder(torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"holds 13 items but max_len=12"):
        encoder(torch.randn(1, 13, 16), torch.ones(1, 13, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"got \(2, 5, 16\) and \(2, 4\)"):
        SequenceEncoder.last_state(torch.randn(2, 5, 16), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="dim=10, n_heads=4"):
        SequenceEncoderConfig(dim=10, n_heads=4)


def test_longer_padded_input_than_max_len_is_fine(encoder: SequenceEncoder) -> None:
    # Only real items need positions: a batch padded past max_len is accepted.
    mask = torch.zeros(1, 20, dtype=torch.bool)
    mask[:, -12:] = True
    assert encoder(torch.randn(1, 20, 16), mask).shape == (1, 20, 16)


def test_gradients_reach_every_parameter(encoder: SequenceEncoder) -> None:
    encoder.train()
    encoder(torch.randn(2, 6, 16), torch.ones(2, 6, dtype=torch.bool)).sum().backward()
    missing = [n for n, p in encoder.named_parameters() if p.grad is None and p.requires_grad]
    assert missing == []
