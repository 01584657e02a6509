"""The training loop: schedules, parameter groups, early stopping with the best weights restored, accumulation,
hooks, metric selection, and that the baselines' settings (RecBole's plain Adam at one rate) mean exactly that."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from fusionrec.baselines.base import RankingModel
from fusionrec.baselines.bpr import BPR
from fusionrec.baselines.lr import LogisticRegression
from fusionrec.baselines.registry import recbole_training
from fusionrec.data.schema import ITEM_IDX, USER_IDX, Dataset
from fusionrec.data.splits import LeaveOneOutSplit, leave_one_out, random_split
from fusionrec.errors import UserError
from fusionrec.protocol import seed_everything
from fusionrec.spec import TrainingSpec
from fusionrec.train.loop import FitHooks, LossModule, fit, parameter_groups, selection_metric
from fusionrec.train.schedules import WarmupDecay, warmup_steps

torch.set_num_threads(1)  # tiny tensors: a thread pool on a 2-core machine only adds overhead


def clustered(n_users: int = 40, n_items: int = 30, per_user: int = 10, seed: int = 0) -> Dataset:
    """Two user groups, each on its own half of the catalogue; ratings high on even items."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        pool = np.arange(n_items // 2) + (n_items // 2 if u % 2 else 0)
        for t, item in enumerate(rng.choice(pool, size=per_user, replace=False)):
            rows.append((f"u{u}", f"i{item}", 1000 + t, 5.0 if (item + u) % 3 else 1.0))
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)], "title": [f"m{i}" for i in range(n_items)],
                          "year": ["1990"] * n_items, "genres": ["A" if i < n_items // 2 else "B"
                                                               for i in range(n_items)]})
    return Dataset("clustered", pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"]), items)


def spec(**changes) -> TrainingSpec:
    base = {"epochs": 4, "batch_size": 64, "learning_rate": 1e-2, "weight_decay": 0.0, "warmup_ratio": 0.0,
            "lr_schedule": "constant", "grad_clip": 0.0, "seed": 7}
    return TrainingSpec(**{**base, **changes})


# --- schedules ----------------------------------------------------------------------------------------------


def test_warmup_then_decay():
    cosine = WarmupDecay("cosine", total_steps=110, warmup_steps=10)
    ramp = [cosine(s) for s in range(10)]
    assert ramp == sorted(ramp) and ramp[0] > 0 and ramp[-1] < 1
    assert cosine(10) == pytest.approx(1.0)
    assert cosine(60) == pytest.approx(0.5)
    assert cosine(110) == pytest.approx(0.0, abs=1e-9)
    linear = WarmupDecay("linear", total_steps=100)
    assert [linear(s) for s in (0, 50, 100)] == pytest.approx([1.0, 0.5, 0.0])
    assert WarmupDecay("constant", 10, 2)(9) == 1.0
    assert warmup_steps(200, 0.05) == 10
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupDecay("linear", 10, 11)
    with pytest.raises(ValueError, match="lr_schedule"):
        WarmupDecay("step", 10)  # type: ignore[arg-type]


# --- parameter groups ---------------------------------------------------------------------------------------


class _WithPretrained(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.head = nn.Linear(4, 2)
        self.frozen = nn.Linear(4, 4).requires_grad_(False)

    def pretrained_parameters(self):
        return list(self.backbone.parameters())


def test_parameter_groups_split_rates_and_decay():
    model = _WithPretrained()
    groups = {g["name"]: g for g in parameter_groups(model, spec(weight_decay=0.1, encoder_learning_rate=2e-5))}
    assert set(groups) == {"pretrained/decay", "pretrained/no_decay", "new/decay", "new/no_decay"}
    assert groups["pretrained/decay"]["lr"] == 2e-5 and groups["new/decay"]["lr"] == 1e-2
    assert groups["pretrained/decay"]["params"] == [model.backbone[0].weight]
    assert groups["new/no_decay"]["params"] == [model.head.bias]
    assert groups["pretrained/no_decay"]["weight_decay"] == 0.0 and groups["new/decay"]["weight_decay"] == 0.1
    everything = [p for g in groups.values() for p in g["params"]]
    assert len(everything) == 6 and not any(p is model.frozen.weight for p in everything)


# --- the baselines' settings ------------------------------------------------------------------------------


def test_a_baseline_with_recbole_settings_trains_as_plain_adam_at_one_rate():
    """The registry's settings (constant rate, no warm-up, clipping or weight decay) give exactly the epochs of a
    bare Adam loop over the model's own batches: the one loop adds nothing to a baseline's optimisation."""
    dataset = clustered()
    split = leave_one_out(dataset)
    training = recbole_training(epochs=3, metric="ndcg@10", batch_size=64).model_copy(update={"seed": 7})
    torch.manual_seed(0)
    ours = BPR.from_data(dataset, split)
    got = fit(ours, split, training, device="cpu")
    assert {r["lr"] for r in got.history} == {1e-3}

    torch.manual_seed(0)
    bare = BPR.from_data(dataset, split)
    seed_everything(7)
    rng = np.random.default_rng(7)
    optimizer = torch.optim.Adam(bare.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        total, count = 0.0, 0
        for batch in bare.training_batches(split, 64, rng):
            loss = bare.calculate_loss(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(batch["user"]), count + len(batch["user"])
        losses.append(total / count)
    assert [r["loss"] for r in got.history] == pytest.approx(losses, rel=1e-6)


def test_pointwise_models_train_through_the_same_loop():
    dataset = clustered(n_users=60)
    split = random_split(dataset, seed=2020)
    torch.manual_seed(0)
    model = LogisticRegression.from_data(dataset, split)
    result = fit(model, split, spec(epochs=3, batch_size=32, early_stopping={"metric": "auc", "patience": 3}),
                 device="cpu")
    assert set(result.best_valid) == {"auc", "logloss"}
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_pointwise_selection_by_logloss_keeps_the_lowest_epoch():
    dataset = clustered(n_users=60)
    split = random_split(dataset, seed=2020)
    torch.manual_seed(0)
    model = LogisticRegression.from_data(dataset, split)
    result = fit(model, split, spec(epochs=5, batch_size=32, learning_rate=0.05,
                                    early_stopping={"metric": "logloss", "patience": 5}), device="cpu")
    losses = [r["valid_logloss"] for r in result.history]
    assert result.best_valid["logloss"] == min(losses)
    assert result.best_epoch == 1 + int(np.argmin(losses))


# --- early stopping -----------------------------------------------------------------------------------------


class Scripted(RankingModel):
    """Validation NDCG follows a script by epoch: the held-out item is put at rank RANKS[epoch]."""

    name = "scripted"
    RANKS = [5, 2, 3, 4, 6, 1, 1]  # best at epoch 2, worse after: patience 2 stops at epoch 4

    def __init__(self, split: LeaveOneOutSplit) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.target = dict(zip(split.valid[USER_IDX], split.valid[ITEM_IDX]))
        self.n_items = split.n_items
        self.epochs_seen = 0

    def training_batches(self, split, batch_size, rng) -> Iterator[dict[str, torch.Tensor]]:
        self.epochs_seen += 1
        yield {"x": torch.ones(4)}

    def calculate_loss(self, batch):
        return ((self.weight - self.epochs_seen) ** 2).sum()  # the weight walks towards the epoch number

    def full_sort_predict(self, users, histories):
        rank = self.RANKS[self.epochs_seen - 2]  # one extra call counts the batches before epoch 1
        scores = torch.arange(self.n_items, 0, -1, dtype=torch.float).repeat(len(users), 1)  # item 0 first
        for row, user in enumerate(users.tolist()):
            target = self.target[user]
            order = [i for i in range(self.n_items) if i != target]
            order.insert(rank - 1, target)
            scores[row, order] = torch.arange(self.n_items, 0, -1, dtype=torch.float)
        return scores


def test_early_stopping_restores_the_best_epoch():
    split = leave_one_out(clustered())
    model = Scripted(split)
    weights = {}

    def remember(report):
        weights[report.epoch] = model.weight.detach().clone()

    result = fit(model, split, spec(epochs=7, learning_rate=0.5, early_stopping={"metric": "ndcg@10", "patience": 2}),
                 device="cpu", hooks=FitHooks(on_epoch_end=remember))
    assert result.best_epoch == 2
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    curve = [r["valid_ndcg@10"] for r in result.history]
    assert result.best_valid["ndcg@10"] == curve[1] == max(curve) and curve[1] > curve[2] > curve[3]
    torch.testing.assert_close(model.weight.detach(), weights[2])
    assert not torch.equal(weights[2], weights[4])
    assert not model.training


def test_eval_every_validates_on_schedule_and_after_the_last_epoch():
    split = leave_one_out(clustered())
    result = fit(Scripted(split), split, spec(epochs=5, early_stopping={"patience": 9}), device="cpu", eval_every=2)
    validated = [r["epoch"] for r in result.history if "valid_ndcg@10" in r]
    assert validated == [2, 4, 5]


# --- hooks, accumulation, errors ----------------------------------------------------------------------------


def test_hooks_wrap_the_loss_module_and_shard_the_batches():
    dataset = clustered()
    split = leave_one_out(dataset)
    seen = {"wrapped": [], "epochs": [], "reports": []}

    def wrap_model(module):
        assert isinstance(module, LossModule)
        seen["wrapped"].append(module)
        return module

    def wrap_batches(batches, epoch):
        seen["epochs"].append(epoch)
        return (b for i, b in enumerate(batches) if i % 2 == 0)  # rank 0 of a world of 2

    torch.manual_seed(0)
    fit(BPR.from_data(dataset, split), split, spec(epochs=2), device="cpu",
        hooks=FitHooks(on_epoch_end=seen["reports"].append, wrap_model=wrap_model, wrap_batches=wrap_batches))
    assert len(seen["wrapped"]) == 1
    assert seen["epochs"] == [1, 1, 2]  # one counting pass, then each epoch
    assert [r.epoch for r in seen["reports"]] == [1, 2] and seen["reports"][0].checkpoint_dir is None
    assert "valid_ndcg@10" in seen["reports"][0].metrics and "lr" in seen["reports"][0].metrics


def test_gradient_accumulation_equals_a_larger_batch():
    dataset = clustered(n_users=60)
    split = random_split(dataset, seed=2020)
    n_train = len(split.train)
    params = []
    for batch_size, accumulation in ((32, 1), (16, 2)):
        torch.manual_seed(0)
        model = LogisticRegression.from_data(dataset, split)
        # shuffled rows differ by batch size only in how they are cut, so one epoch sees the same steps
        fit(model, split, spec(epochs=1, batch_size=batch_size, grad_accumulation=accumulation,
                               early_stopping={"metric": "auc"}), device="cpu")
        params.append([p.detach().clone() for p in model.parameters()])
    assert n_train % 32 == 0
    for a, b in zip(*params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_selection_metric_defaults_per_task_and_refuses_a_mismatch():
    assert selection_metric(TrainingSpec(), "labels") == "auc"
    assert selection_metric(TrainingSpec(), "ratings") == "rmse"
    assert selection_metric(TrainingSpec.model_validate({"earlyStopping": {"metric": "hr@5"}}), "ranks") == "hr@5"
    with pytest.raises(UserError, match="training.earlyStopping.metric"):
        selection_metric(TrainingSpec.model_validate({"earlyStopping": {"metric": "ndcg@10"}}), "labels")


def test_a_diverging_loss_is_a_user_error():
    split = leave_one_out(clustered())

    class Diverging(Scripted):
        def calculate_loss(self, batch):
            return self.weight.sum() * float("nan")

    with pytest.raises(UserError, match="learningRate"):
        fit(Diverging(split), split, spec(epochs=1), device="cpu")


def test_a_split_of_the_wrong_kind_is_refused():
    with pytest.raises(ValueError, match="LeaveOneOutSplit or a RandomSplit"):
        fit(nn.Linear(1, 1), object(), spec(), device="cpu")  # type: ignore[arg-type]
