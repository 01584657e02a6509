"""The shared fit loops: early stopping, restoring the best weights, non-trainable models, bad settings."""

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from fusionrec.baselines import FitConfig, RankingModel, fit_pointwise, fit_ranking
from fusionrec.baselines.lr import LogisticRegression
from fusionrec.data.splits import LeaveOneOutSplit, leave_one_out, random_split

import planted

torch.set_num_threads(1)  # 2-core machines: a thread pool makes these tiny ops slower, not faster


class ScheduledScores(RankingModel):
    """Item scores that the n-th epoch sets from a schedule: validation NDCG peaks at a known epoch.

    `quality[e]` says how far epoch e+1 puts each user's validation target: 1.0 on top, 0.0 at the bottom.
    """

    name = "scheduled"

    def __init__(self, split: LeaveOneOutSplit, quality: list[float]) -> None:
        super().__init__()
        self.quality = quality
        self.epoch = 0
        self.targets = dict(zip(split.valid["user_idx"].tolist(), split.valid["item_idx"].tolist()))
        self.level = nn.Parameter(torch.zeros(1))

    def training_batches(self, split, batch_size, rng) -> Iterator[dict[str, torch.Tensor]]:
        self.epoch += 1
        with torch.no_grad():
            self.level.fill_(self.quality[min(self.epoch, len(self.quality)) - 1])
        yield {"x": torch.zeros(1)}

    def calculate_loss(self, batch):
        return (self.level * 0.0).sum() + 1.0  # no gradient: the schedule alone moves `level`

    def full_sort_predict(self, users, histories):
        scores = torch.linspace(0, 1, 40).repeat(len(users), 1)
        for row, user in enumerate(users.tolist()):
            scores[row, self.targets[user]] = self.level.item() * 2 - 0.5
        return scores


def _split():
    return leave_one_out(planted.clustered(n_items=40))


def test_early_stopping_restores_the_best_epoch():
    split = _split()
    model = ScheduledScores(split, [0.2, 0.6, 1.0, 0.4, 0.3, 0.2, 0.9, 0.9])
    result = fit_ranking(model, split, FitConfig(epochs=8, patience=3))
    assert result.best_epoch == 3
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4, 5, 6]  # stopped 3 epochs after the best
    assert model.level.item() == pytest.approx(1.0)  # the best epoch's weights, not the last epoch's
    assert result.best_valid["ndcg@10"] == 1.0
    assert result.history[2]["valid_ndcg@10"] == 1.0 and result.history[-1]["valid_ndcg@10"] < 1.0


def test_eval_every_skips_validation_but_always_validates_the_last_epoch():
    split = _split()
    result = fit_ranking(ScheduledScores(split, [0.1, 1.0, 0.2, 0.3, 0.5]), split,
                         FitConfig(epochs=5, eval_every=2, patience=10))
    evaluated = [r["epoch"] for r in result.history if "valid_ndcg@10" in r]
    assert evaluated == [2, 4, 5]
    assert result.best_epoch == 2


def test_selection_metric_must_fit_the_task():
    split = _split()
    with pytest.raises(ValueError, match="ranking metric"):
        fit_ranking(ScheduledScores(split, [1.0]), split, FitConfig(epochs=1), metric="auc")
    with pytest.raises(ValueError, match="FitConfig.patience"):
        fit_ranking(ScheduledScores(split, [1.0]), split, FitConfig(epochs=1, patience=0))


def test_diverging_loss_names_the_learning_rate():
    split = _split()
    model = ScheduledScores(split, [1.0])
    model.calculate_loss = lambda batch: (model.level * float("nan")).sum()
    with pytest.raises(ValueError, match="learning_rate"):
        fit_ranking(model, split, FitConfig(epochs=2))


def test_pointwise_fit_selects_by_logloss_when_asked():
    dataset = planted.ctr("item_quality", n_users=40, per_user=15)
    split = random_split(dataset, seed=2020)
    model = LogisticRegression.from_data(dataset, split)
    result = fit_pointwise(model, split, FitConfig(epochs=5, batch_size=128, learning_rate=0.05), metric="logloss")
    losses = [r["valid_logloss"] for r in result.history]
    assert result.best_valid["logloss"] == min(losses)
    assert result.best_epoch == 1 + int(np.argmin(losses))
    with pytest.raises(ValueError, match="pointwise metric"):
        fit_pointwise(model, split, FitConfig(epochs=1), metric="ndcg@10")
