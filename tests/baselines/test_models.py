"""Each baseline learns the signal planted in a tiny dataset, and beats what chance would give."""

import numpy as np
import pytest
import torch

from fusionrec.baselines import recbole_training
from fusionrec.baselines.bpr import BPR, sample_negatives
from fusionrec.baselines.features import FeatureTable
from fusionrec.baselines.fm import FactorizationMachine, pairwise_interactions
from fusionrec.baselines.lr import LogisticRegression
from fusionrec.baselines.pop import Popularity
from fusionrec.data.splits import leave_one_out, random_split
from fusionrec.metrics import evaluate_pointwise, evaluate_ranking
from fusionrec.train.loop import fit

import planted

torch.set_num_threads(1)  # 2-core machines: a thread pool makes these tiny ops slower, not faster


def _random_scores(users, histories, n_items=0):
    return torch.rand(len(users), n_items, generator=torch.Generator().manual_seed(len(users)))


def test_popularity_counts_training_interactions_and_beats_random():
    split = leave_one_out(planted.skewed_popularity())
    model = Popularity.from_data(None, split)
    result = fit(model, split, recbole_training(1, "ndcg@10"), device="cpu")
    assert result.best_epoch == 0
    expected = np.bincount(split.train["item_idx"], minlength=split.n_items)
    assert model.counts.tolist() == expected.tolist()
    pop = evaluate_ranking(model.full_sort_predict, split, "test")["hr@10"]
    chance = evaluate_ranking(lambda u, h: _random_scores(u, h, split.n_items), split, "test")["hr@10"]
    assert pop > chance + 0.15


def test_bpr_negatives_are_never_positives():
    rng = np.random.default_rng(0)
    n_items = 5
    users = np.repeat(np.arange(3), 200)
    positives = {0: {0, 1, 2, 3}, 1: {4}, 2: set()}  # user 0 has exactly one possible negative
    keys = np.unique([u * n_items + i for u, items in positives.items() for i in items])
    negatives = sample_negatives(users, keys, n_items, rng)
    assert all(neg not in positives[u] for u, neg in zip(users, negatives))
    assert set(negatives[users == 0]) == {4}
    assert set(negatives[users == 2]) == set(range(n_items))  # uniform over every allowed item


def test_bpr_negative_sampling_reports_users_who_saw_everything():
    keys = np.arange(3)  # user 0 saw items 0, 1, 2 of 3
    with pytest.raises(ValueError, match="every one of the 3 items"):
        sample_negatives(np.zeros(4, dtype=np.int64), keys, 3, np.random.default_rng(0))


def test_bpr_learns_clusters():
    split = leave_one_out(planted.clustered())
    torch.manual_seed(0)
    model = BPR.from_data(None, split)
    result = fit(model, split, recbole_training(60, "ndcg@10", 128, 0.02, 60), device="cpu")
    test = evaluate_ranking(model.full_sort_predict, split, "test")
    chance = evaluate_ranking(lambda u, h: _random_scores(u, h, split.n_items), split, "test")
    # 20 in-cluster items minus 10 seen leaves ~10 candidates: a model that learned the clusters hits often.
    assert test["hr@10"] > 0.8 > chance["hr@10"] + 0.3
    assert result.best_valid["ndcg@10"] > 0.3


@pytest.mark.parametrize("cls", [LogisticRegression, FactorizationMachine])
def test_ctr_models_learn_a_main_effect(cls):
    dataset = planted.ctr("item_quality")
    split = random_split(dataset, seed=2020)
    torch.manual_seed(0)
    model = cls.from_data(dataset, split)
    fit(model, split, recbole_training(40, "auc", 256, 0.05, 5), device="cpu")
    test = evaluate_pointwise(model.predict, model.encode_rows(split, "test"))
    assert test["auc"] > 0.8


def test_fm_learns_a_pure_interaction_that_lr_cannot():
    dataset = planted.ctr("gender_genre")
    split = random_split(dataset, seed=2020)
    scores = {}
    for cls in (LogisticRegression, FactorizationMachine):
        torch.manual_seed(0)
        model = cls.from_data(dataset, split)
        fit(model, split, recbole_training(40, "auc", 256, 0.05, 5), device="cpu")
        scores[cls.name] = evaluate_pointwise(model.predict, model.encode_rows(split, "test"))["auc"]
    assert scores["fm"] > 0.8
    assert scores["lr"] < 0.65


def test_feature_table_reads_side_features_and_pads_missing_values():
    dataset = planted.ctr("item_quality", n_users=6, n_items=8, per_user=4)
    dataset.users.loc[0, "gender"] = None
    table = FeatureTable(dataset, random_split(dataset).vocab)
    assert table.fields == ["user_id", "user.age", "user.gender", "user.occupation", "user.zip_code", "item_id",
                            "item.year", "item.genres"]
    assert table.user_tokens.shape == (6, 5) and table.item_tokens.shape == (8, 2)
    user0 = random_split(dataset).vocab.user_index("u0")
    assert table.user_tokens[user0, 2] == 0  # missing gender -> padding
    assert len(table.item_multi) == 1 and table.item_multi[0].shape == (8, 1)
    assert int(table.user_tokens.max()) < table.n_features


def test_genres_as_a_comma_joined_string_become_several_values():
    dataset = planted.ctr("item_quality", n_users=4, n_items=4, per_user=3)
    dataset.items["genres"] = ["Action, Comedy", "Drama", "", "Comedy"]
    table = FeatureTable(dataset, random_split(dataset).vocab)
    multi = table.item_multi[0]
    assert multi.shape == (4, 2)
    assert (multi > 0).sum(dim=1).tolist() == [2, 1, 0, 1]
    assert multi[0, 1] == multi[3, 0]  # the same "Comedy" id


def test_pairwise_interactions_match_the_explicit_sum():
    factors = torch.randn(3, 4, 5)
    explicit = sum((factors[:, i] * factors[:, j]).sum(-1) for i in range(4) for j in range(i + 1, 4))
    assert torch.allclose(pairwise_interactions(factors), explicit, atol=1e-5)
