"""Checkpoints: what they hold, that they load without unpickling, and that a run resumed after a crash
ends exactly where an uninterrupted run does."""

from __future__ import annotations

import threading

import pytest
import torch
from safetensors.torch import load_file

from fusionrec.baselines.sasrec import SASRec, SASRecConfig
from fusionrec.data.schema import Dataset
from fusionrec.data.splits import leave_one_out
from fusionrec.data.text import with_item_text
from fusionrec.errors import UserError
from fusionrec.model.fused import FusedRecommender
from fusionrec.spec import FusionRecommenderSpec, TrainingSpec
from fusionrec.train.checkpoint import BEST, LATEST, STATE, WEIGHTS, load_checkpoint, mutable_state, save_checkpoint
from fusionrec.train.loop import FitHooks, fit

from testkit import fused_spec, synthetic_frames

torch.set_num_threads(1)  # tiny tensors: a thread pool on a 2-core machine only adds overhead


class Crash(RuntimeError):
    pass


def crash_after(epoch: int) -> FitHooks:
    def hook(report):
        if report.epoch == epoch:
            raise Crash(f"killed after epoch {epoch}")
    return FitHooks(on_epoch_end=hook)


@pytest.fixture(scope="module")
def dataset():
    interactions, items = synthetic_frames()
    return with_item_text(Dataset("synthetic", interactions, items), "{title}. Genres: {genres}. Year: {year}")


def _sasrec(split):
    torch.manual_seed(3)
    return SASRec(split.n_items, SASRecConfig(dim=16, max_len=8, inner_size=32, dropout=0.3))


def _run(make_model, split, training, folder=None, hooks=None, resume=False):
    model = make_model(split)
    result = fit(model, split, training, device="cpu", checkpoint_dir=folder, hooks=hooks, resume=resume)
    return model, result


def _same(a_model, a_result, b_model, b_result):
    assert [r["loss"] for r in a_result.history] == [r["loss"] for r in b_result.history]
    assert a_result.best_epoch == b_result.best_epoch and a_result.best_valid == b_result.best_valid
    for (name, a), (_, b) in zip(a_model.state_dict().items(), b_model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_resume_after_a_crash_equals_an_uninterrupted_run(dataset, tmp_path):
    """Dropout (torch RNG), shuffling (numpy generator), AdamW moments and the cosine schedule all resume."""
    split = leave_one_out(dataset)
    training = TrainingSpec(epochs=5, batch_size=8, learning_rate=5e-3, warmup_ratio=0.2, lr_schedule="cosine",
                            seed=11, early_stopping={"patience": 50})
    straight = _run(_sasrec, split, training)
    with pytest.raises(Crash):
        _run(_sasrec, split, training, tmp_path, crash_after(2))
    assert load_checkpoint(tmp_path).state["progress"]["epoch"] == 2
    resumed = _run(_sasrec, split, training, tmp_path, resume=True)
    _same(*straight, *resumed)


def test_resuming_a_finished_run_only_restores_its_best_weights(dataset, tmp_path):
    split = leave_one_out(dataset)
    training = TrainingSpec(epochs=2, batch_size=8, seed=1, early_stopping={"patience": 50})
    first = _run(_sasrec, split, training, tmp_path)
    again = _run(_sasrec, split, training, tmp_path, resume=True)
    _same(*first, *again)


def test_resume_refuses_different_training_settings(dataset, tmp_path):
    split = leave_one_out(dataset)
    _run(_sasrec, split, TrainingSpec(epochs=1, batch_size=8), tmp_path)
    with pytest.raises(UserError, match="different training settings"):
        _run(_sasrec, split, TrainingSpec(epochs=2, batch_size=8), tmp_path, resume=True)


def test_a_fine_tuned_fused_model_resumes_exactly_and_frozen_lms_stay_out(tiny_models, dataset, tmp_path):
    spec = FusionRecommenderSpec.model_validate(fused_spec(tiny_models, epochs=3, unfrozen="llama"))
    split = leave_one_out(dataset)

    def make(split):
        torch.manual_seed(0)
        return FusedRecommender.from_spec(spec, dataset, split)

    straight = _run(make, split, spec.training)
    with pytest.raises(Crash):
        _run(make, split, spec.training, tmp_path, crash_after(1))
    weights = load_file(tmp_path / LATEST / WEIGHTS)
    assert not any(key.startswith(("items.encoders.0.backbone", "items.encoders.1.backbone")) for key in weights)
    assert any(key.startswith("items.encoders.2.backbone.layers.2.") for key in weights)
    assert not any(key.startswith("items.encoders.2.backbone.layers.0.") for key in weights)
    resumed = _run(make, split, spec.training, tmp_path, resume=True)
    _same(*straight, *resumed)


def test_checkpoint_files_load_without_pickles_and_writes_are_atomic(tmp_path):
    model = torch.nn.Linear(3, 2)
    state = {"progress": {"epoch": 1}, "rng": torch.get_rng_state(), "big": 2**100}
    folder = save_checkpoint(tmp_path, mutable_state(model), mutable_state(model), state)
    assert sorted(p.name for p in folder.iterdir()) == sorted([WEIGHTS, BEST, STATE])
    torch.load(folder / STATE, weights_only=True)  # plain values and tensors only
    with pytest.raises(TypeError, match="pickle"):  # a lock cannot be saved: the write fails midway
        save_checkpoint(tmp_path, mutable_state(model), mutable_state(model), {"bad": threading.Lock()})
    kept = load_checkpoint(tmp_path)
    assert kept.state["progress"]["epoch"] == 1 and kept.state["big"] == 2**100
    assert [p.name for p in tmp_path.iterdir()] == [LATEST]  # no temp folders left behind
    assert load_checkpoint(tmp_path / "nothing-here") is None
