"""training.emaDecay: the moving average is exact, validation and the kept weights use it, the live weights keep
training, and a resumed run averages on exactly as an uninterrupted one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fusionrec.baselines.sasrec import SASRec, SASRecConfig
from fusionrec.data.schema import Dataset
from fusionrec.data.splits import leave_one_out
from fusionrec.data.text import with_item_text
from fusionrec.protocol import evaluate_model
from fusionrec.spec import TrainingSpec
from fusionrec.train.averaging import WeightAverage
from fusionrec.train.checkpoint import load_checkpoint
from fusionrec.train.loop import FitHooks, fit

from testkit import synthetic_frames

torch.set_num_threads(1)


def test_the_average_follows_the_formula_and_swaps_weights_in_and_out():
    model = nn.Linear(2, 1)
    frozen = nn.Parameter(torch.ones(1), requires_grad=False)
    model.register_parameter("frozen", frozen)
    start = model.weight.detach().clone()
    average = WeightAverage(model, decay=0.5)
    assert "frozen" not in average.shadow  # only what the optimiser moves is averaged
    with torch.no_grad():
        model.weight.add_(2.0)
    average.update()  # 0.5 * start + 0.5 * (start + 2)
    with torch.no_grad():
        model.weight.add_(2.0)
    average.update()  # 0.5 * (start + 1) + 0.5 * (start + 4)
    torch.testing.assert_close(average.shadow["weight"], start + 2.5)
    live = model.weight.detach().clone()
    with average.applied():
        torch.testing.assert_close(model.weight.detach(), start + 2.5)
    torch.testing.assert_close(model.weight.detach(), live)
    with pytest.raises(ValueError, match="decay must lie in"):
        WeightAverage(model, decay=1.0)
    with pytest.raises(ValueError, match="missing"):
        average.load_state_dict({})


@pytest.fixture(scope="module")
def split():
    interactions, items = synthetic_frames()
    dataset = with_item_text(Dataset("synthetic", interactions, items), "{title}. Genres: {genres}. Year: {year}")
    return leave_one_out(dataset)


def _sasrec(split):
    torch.manual_seed(3)
    return SASRec(split.n_items, SASRecConfig(dim=16, max_len=8, inner_size=32, dropout=0.3))


def test_validation_and_the_kept_weights_are_the_average(split, tmp_path):
    training = TrainingSpec(epochs=3, batch_size=8, learning_rate=5e-3, seed=11, ema_decay=0.9,
                            early_stopping={"patience": 50})
    live_after = {}

    def remember(report):
        live_after[report.epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    model = _sasrec(split)
    result = fit(model, split, training, device="cpu", checkpoint_dir=tmp_path,
                 hooks=FitHooks(on_epoch_end=remember))
    saved = load_checkpoint(tmp_path)
    # The model ends on the best epoch's *averaged* weights, which differ from the live weights of any epoch.
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, saved.best[name], rtol=0, atol=0, msg=name)
    name = "item_embedding.weight"
    assert all(not torch.allclose(model.state_dict()[name], live[name]) for live in live_after.values())
    # The checkpoint's "latest" holds the live weights (training resumes from those) and the average beside them.
    torch.testing.assert_close(saved.model[name], live_after[3][name], rtol=0, atol=0)
    assert set(saved.state["average"]) == {n for n, p in model.named_parameters() if p.requires_grad}
    # Validation read the averaged model: re-validating the kept weights gives the recorded best.
    assert evaluate_model(model, split, "valid") == pytest.approx(result.best_valid, abs=1e-9)


def test_a_resumed_run_averages_on_like_an_uninterrupted_one(split, tmp_path):
    training = TrainingSpec(epochs=4, batch_size=8, learning_rate=5e-3, seed=11, ema_decay=0.8,
                            early_stopping={"patience": 50})

    class Crash(RuntimeError):
        pass

    def crash(report):
        if report.epoch == 2:
            raise Crash()

    straight = _sasrec(split)
    straight_result = fit(straight, split, training, device="cpu")
    with pytest.raises(Crash):
        fit(_sasrec(split), split, training, device="cpu", checkpoint_dir=tmp_path, hooks=FitHooks(on_epoch_end=crash))
    resumed = _sasrec(split)
    resumed_result = fit(resumed, split, training, device="cpu", checkpoint_dir=tmp_path, resume=True)
    assert [r["valid_ndcg@10"] for r in resumed_result.history] == [r["valid_ndcg@10"]
                                                                   for r in straight_result.history]
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
