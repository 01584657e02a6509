"""`evaluation.select: best` (issue 18): the training job fits the fused model and each encoder alone and ships
whichever validates best, recording every candidate; and every row's time is split into setup and train."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fusionrec.artifact import load_artifact
from fusionrec.data import load_dataset
from fusionrec.model.saved import load_model
from fusionrec.protocol import evaluate_model, make_split
from fusionrec.spec import FusionRecommenderSpec, Manifest
from fusionrec.train.candidates import (
    best_index,
    candidate_row,
    select_best,
    selects_best,
    shipped_spec,
    single_encoder_spec,
)
from fusionrec.train.evaluate import Evaluated
from fusionrec.train.job import train_and_evaluate
from fusionrec.train.loop import FitResult

from testkit import fused_spec, shop_files

torch.set_num_threads(1)


def _evaluated(valid: dict[str, float], fit_seconds: float = 2.0) -> Evaluated:
    return Evaluated(model=nn.Linear(1, 1), fit=FitResult(best_epoch=1, best_valid=valid, history=[],
                                                          seconds=fit_seconds),
                     test={"ndcg@10": 0.0}, setup_seconds=5.0, test_seconds=0.5)


def _spec(tiny_models, **evaluation) -> FusionRecommenderSpec:
    document = fused_spec(tiny_models)
    document["evaluation"] = evaluation
    return FusionRecommenderSpec.model_validate(document)


def test_time_is_split_into_setup_and_training():
    done = _evaluated({"ndcg@10": 0.1}, fit_seconds=2.0)
    assert done.train_seconds == pytest.approx(2.5) and done.seconds == pytest.approx(7.5)
    row = candidate_row("bert", "single", done)
    assert (row["setup_seconds"], row["train_seconds"], row["seconds"]) == (5.0, 2.5, 7.5)
    run = done.run("bert", "ranking", 7)
    assert (run.setup_seconds, run.train_seconds, run.seconds) == (5.0, 2.5, 7.5)


def test_a_single_that_validates_better_ships_under_its_own_spec(tiny_models):
    spec = _spec(tiny_models, select="best")
    values = {"bert": 0.30, "mpnet": 0.45, "llama": 0.20}
    fitted: list[str] = []

    def fit_single(alone: FusionRecommenderSpec) -> Evaluated:
        fitted.append(alone.encoders[0].name)
        assert alone == single_encoder_spec(spec, alone.encoders[0]) and alone.training.seed == spec.training.seed
        return _evaluated({"ndcg@10": values[alone.encoders[0].name]})

    chosen = select_best(spec, _evaluated({"ndcg@10": 0.40}), fit_single)
    assert fitted == ["bert", "mpnet", "llama"]
    assert chosen.shipped == "mpnet" and [e.name for e in chosen.spec.encoders] == ["mpnet"]
    assert chosen.done.fit.best_valid == {"ndcg@10": 0.45}
    record = chosen.record()
    assert record["select"] == "best" and record["metric"] == "ndcg@10" and record["shipped"] == "mpnet"
    assert [(r["model"], r["group"]) for r in record["candidates"]] == [
        ("fused-attention", "fused"), ("bert", "single"), ("mpnet", "single"), ("llama", "single")]
    assert shipped_spec(spec, "mpnet", "single") == chosen.spec
    assert shipped_spec(spec, "fused-attention", "fused") == spec
    assert record["shipped_group"] == "single"


def test_the_group_not_the_name_says_what_shipped(tiny_models):
    """An encoder may be named like the fused row ("fused-attention"): its single spec ships only as a single."""
    spec = _spec(tiny_models, select="best")
    renamed = spec.model_copy(update={"encoders": [spec.encoders[0].model_copy(update={"name": "fused-attention"}),
                                                   *spec.encoders[1:]]})
    alone = shipped_spec(renamed, "fused-attention", "single")
    assert [e.name for e in alone.encoders] == ["fused-attention"]
    assert shipped_spec(renamed, "fused-attention", "fused") == renamed
    with pytest.raises(ValueError, match="none of the encoders"):
        shipped_spec(renamed, "nope", "single")


def test_the_fused_model_keeps_a_tie_and_lower_is_better_metrics_pick_the_least(tiny_models):
    spec = _spec(tiny_models, select="best")
    chosen = select_best(spec, _evaluated({"ndcg@10": 0.4}), lambda alone: _evaluated({"ndcg@10": 0.4}))
    assert chosen.shipped == "fused-attention" and chosen.spec == spec
    rows = [{"valid": {"rmse": 1.2}}, {"valid": {"rmse": 0.9}}, {"valid": {"rmse": math.nan}}, {"valid": {}}]
    assert best_index(rows, "rmse", higher_is_better=False) == 1
    assert best_index(rows, "rmse", higher_is_better=True) == 0


def test_select_best_needs_two_encoders(tiny_models):
    assert selects_best(_spec(tiny_models, select="best"))
    assert not selects_best(_spec(tiny_models))
    one = _spec(tiny_models, select="best")
    assert not selects_best(single_encoder_spec(one, one.encoders[0]))


def test_the_job_ships_the_candidate_that_validates_best(tiny_models, tmp_path):
    document = fused_spec(tiny_models, epochs=2, data=shop_files(tmp_path))
    document["evaluation"] = {"select": "best"}
    manifest = Manifest.model_validate({"metadata": {"name": "shop-recs"}, "spec": document})
    path = train_and_evaluate(manifest, tmp_path / "runs", embeddings=tmp_path / "embeddings")

    artifact = load_artifact(path)
    selection = artifact.metrics["selection"]
    rows = selection["candidates"]
    assert selection["select"] == "best" and selection["metric"] == "ndcg@10"
    assert [r["model"] for r in rows] == ["fused-attention", "bert", "mpnet", "llama"]
    best = rows[best_index(rows, "ndcg@10", higher_is_better=True)]
    assert selection["shipped"] == best["model"]
    assert artifact.metrics["valid"] == pytest.approx(best["valid"])
    assert artifact.metrics["test"] == pytest.approx(best["test"])
    expected = ["bert", "mpnet", "llama"] if best["group"] == "fused" else [best["model"]]
    assert [e.name for e in artifact.spec.encoders] == expected
    for row in rows:
        assert row["setup_seconds"] >= 0 and row["train_seconds"] > 0
        assert row["seconds"] == pytest.approx(row["setup_seconds"] + row["train_seconds"], abs=0.02)

    model, _ = load_model(path, embeddings=tmp_path / "embeddings")  # the shipped model reloads to its numbers
    split = make_split(load_dataset(artifact.spec.data), artifact.spec.task.type)
    assert evaluate_model(model, split, "test") == pytest.approx(artifact.metrics["test"], abs=1e-9)
