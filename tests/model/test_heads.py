"""Task heads: the three-method contract, candidate sets, losses against hand-computed values, and that each
head learns a planted signal from fixed tower outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fusionrec.model.heads import HEADS, CTRHead, RankingHead, RatingHead, build_head

DIM, USERS, ITEMS = 8, 6, 10


def _batch(head_name: str, n: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"user": torch.randint(0, USERS, (n,), generator=g),
            "label": torch.randint(0, 2, (n,), generator=g).float(),
            "rating": torch.randint(1, 6, (n,), generator=g).float(),
            "target_index": torch.randint(0, ITEMS, (n,), generator=g)}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_every_registered_head_follows_the_contract(name):
    torch.manual_seed(0)
    head = build_head(name, dim=DIM, n_users=USERS)
    assert head.name == name
    assert set(head.describe()) >= {"head", "pretty_name", "loss", "reference_url"}
    assert head.evaluates in ("ranks", "labels", "ratings")
    users, items = torch.randn(12, DIM), torch.randn(ITEMS, DIM)
    batch = _batch(name)
    scores = head.full_sort_predict(users, items, batch["user"])
    assert scores.shape == (12, ITEMS)
    pairs = head.predict(users, items[batch["target_index"]], batch)
    assert pairs.shape == (12,)
    # full-sort scores and pairwise predictions are the same function of (user, item)
    torch.testing.assert_close(scores[torch.arange(12), batch["target_index"]], pairs)
    loss = head.calculate_loss(users, items if name == "ranking" else items[batch["target_index"]], batch)
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_unknown_head_names_the_choices():
    with pytest.raises(ValueError, match="known heads"):
        build_head("regression", dim=DIM, n_users=USERS)


def test_ranking_loss_is_cross_entropy_over_the_candidates():
    head = RankingHead("full")
    users, items = torch.randn(4, DIM), torch.randn(ITEMS, DIM)
    targets = torch.tensor([1, 3, 3, 9])
    expected = F.cross_entropy(users @ items.T, targets)
    torch.testing.assert_close(head.calculate_loss(users, items, {"target_index": targets}), expected)


def test_full_negatives_embed_the_whole_catalogue():
    ids, index = RankingHead("full").candidates(torch.tensor([4, 2]), None)
    assert ids is None and index.tolist() == [4, 2]


def test_in_batch_candidates_are_the_unique_targets():
    targets = torch.tensor([7, 2, 7, 5])
    ids, index = RankingHead("in_batch").candidates(targets, None)
    assert ids.tolist() == [2, 5, 7]
    assert ids[index].tolist() == targets.tolist()


def test_sampled_candidates_add_negatives_and_never_duplicate_a_target():
    head = RankingHead("sampled", num_negatives=5)
    rng = np.random.default_rng(0)
    negatives = head.sample_negatives(rng, ITEMS)
    assert negatives.shape == (5,) and negatives.dtype == torch.long
    assert negatives.tolist() == RankingHead("sampled", 5).sample_negatives(np.random.default_rng(0), ITEMS).tolist()
    targets = torch.tensor([negatives[0].item(), 1])  # one target also drawn as a negative
    ids, index = head.candidates(targets, negatives)
    assert len(ids) == len(set(ids.tolist()))
    assert ids[index].tolist() == targets.tolist()
    assert set(ids.tolist()) == set(targets.tolist()) | set(negatives.tolist())
    assert RankingHead("in_batch").sample_negatives(rng, ITEMS) is None


def test_ranking_head_rejects_bad_settings():
    with pytest.raises(ValueError, match="negatives must be"):
        RankingHead("everything")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_negatives"):
        RankingHead("sampled", 0)


def test_ctr_head_predicts_probabilities_and_starts_from_the_dot_product():
    head = CTRHead(DIM, USERS)
    users, items = torch.randn(5, DIM), torch.randn(5, DIM)
    batch = {"user": torch.arange(5)}
    probabilities = head.predict(users, items, batch)
    assert ((probabilities > 0) & (probabilities < 1)).all()
    # zero-initialised biases and MLP output: the first predictions are sigmoid(<u, i>)
    torch.testing.assert_close(probabilities, torch.sigmoid((users * items).sum(-1)))


def test_rating_head_centres_on_the_mean_and_clips_to_the_scale():
    head = RatingHead(DIM, USERS)
    head.set_rating_range(3.5, 1.0, 5.0)
    zeros = torch.zeros(3, DIM)
    torch.testing.assert_close(head.predict(zeros, zeros, {"user": torch.arange(3)}), torch.full((3,), 3.5))
    huge = torch.full((1, DIM), 10.0)
    assert head.predict(huge, huge, {"user": torch.tensor([0])}).item() == 5.0
    with pytest.raises(ValueError, match="rating mean"):
        head.set_rating_range(7.0, 1.0, 5.0)


@pytest.mark.parametrize("name", ["ctr", "rating"])
def test_pointwise_heads_learn_a_user_bias_from_fixed_towers(name):
    """Users 0-2 like everything, users 3-5 nothing: only the per-user bias can tell them apart."""
    torch.manual_seed(0)
    head = build_head(name, dim=DIM, n_users=USERS)
    if isinstance(head, RatingHead):
        head.set_rating_range(3.0, 1.0, 5.0)
    users, items = torch.randn(60, DIM) * 0.01, torch.randn(60, DIM) * 0.01
    user = torch.arange(60) % USERS
    batch = {"user": user, "label": (user < 3).float(), "rating": torch.where(user < 3, 5.0, 1.0)}
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    first = head.calculate_loss(users, items, batch).item()
    for _ in range(200):
        optimizer.zero_grad()
        head.calculate_loss(users, items, batch).backward()
        optimizer.step()
    assert head.calculate_loss(users, items, batch).item() < 0.1 * first
