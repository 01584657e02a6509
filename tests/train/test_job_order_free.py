"""`data.order: none` end to end on tiny models: the job splits by a seeded random per-user order, `userTower: auto`
builds the order-free pooled tower, the artifact says which protocol its numbers follow, and the reloaded model
scores as the trained one did on the same split."""

from __future__ import annotations

import pytest
import torch

from fusionrec.artifact import load_artifact
from fusionrec.data import load_dataset
from fusionrec.model.saved import load_model
from fusionrec.model.towers import PooledUserTower
from fusionrec.protocol import evaluate_model, make_split
from fusionrec.spec import Manifest
from fusionrec.train.job import train_and_evaluate

from testkit import fused_spec, shop_files

torch.set_num_threads(1)


def test_an_order_free_run_ships_a_pooled_tower_and_says_so(tiny_models, tmp_path):
    (tmp_path / "shop").mkdir()
    data = {**shop_files(tmp_path / "shop"), "order": "none"}
    document = fused_spec(tiny_models, epochs=2, data=data)
    manifest = Manifest.model_validate({"metadata": {"name": "shop-recs"}, "spec": document})
    assert manifest.spec.task.user_tower == "auto" and manifest.spec.user_tower == "pooled"
    path = train_and_evaluate(manifest, tmp_path / "runs", embeddings=tmp_path / "embeddings")

    artifact = load_artifact(path)
    metrics = artifact.metrics
    assert metrics["order"] == "none" and "random" in metrics["protocol"]
    assert metrics["model"]["user_tower"] == "pooled"
    model, _ = load_model(path, embeddings=tmp_path / "embeddings")
    assert isinstance(model.user_tower, PooledUserTower)
    split = make_split(load_dataset(artifact.spec.data), "ranking", "none")
    assert evaluate_model(model, split, "test") == pytest.approx(metrics["test"], abs=1e-9)
    chronological = make_split(load_dataset(artifact.spec.data), "ranking")
    assert not chronological.test.equals(split.test)  # the hold-out really differs from the newest item
