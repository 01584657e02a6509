"""The pipeline end to end on tiny models: manifest in, verified artifact out, and the reloaded artifact
scores exactly as the trained model did."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from fusionrec.artifact import load_artifact
from fusionrec.data import load_dataset
from fusionrec.model.saved import USERS_NAME, load_model
from fusionrec.protocol import evaluate_model, make_split
from fusionrec.spec import Manifest
from fusionrec.train.job import train_and_evaluate

from testkit import fused_spec, shop_files

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    return shop_files(tmp_path_factory.mktemp("shop"))


@pytest.mark.parametrize("task", ["ranking", "ctr"])
def test_pipeline_writes_an_artifact_that_reloads_to_the_same_scores(tiny_models, data_files, tmp_path, task):
    document = fused_spec(tiny_models, task=task, epochs=2, data=data_files)
    manifest = Manifest.model_validate({"metadata": {"name": "shop-recs"}, "spec": document})
    path = train_and_evaluate(manifest, tmp_path / "runs", embeddings=tmp_path / "embeddings")

    artifact = load_artifact(path)  # verifies every file against the manifest
    assert artifact.version == "v1"
    for name in ("model.safetensors", "spec.yaml", "item_index.npy", "items.parquet", USERS_NAME, "metrics.json"):
        assert name in artifact.files
    for encoder in ("bert", "mpnet", "llama"):
        assert (artifact.tokenizer_dir(encoder) / "tokenizer_config.json").is_file()
    metrics = artifact.metrics
    assert metrics["task"] == task and metrics["best_epoch"] >= 1 and len(metrics["history"]) == 2
    assert set(metrics["test"]) >= ({"ndcg@10", "hr@10", "mrr@10"} if task == "ranking" else {"auc", "logloss"})
    weights = metrics["fusion_weights"]
    assert weights["models"] == ["bert", "mpnet", "llama"]
    assert sum(weights["global"].values()) == pytest.approx(1.0, abs=1e-5)
    assert weights["per_user"]["users"] == 24
    json.dumps(metrics)  # plain JSON all the way down

    model, _ = load_model(path, embeddings=tmp_path / "embeddings")
    spec = artifact.spec
    split = make_split(load_dataset(spec.data), spec.task.type)
    assert evaluate_model(model, split, "test") == pytest.approx(metrics["test"], abs=1e-9)
    np.testing.assert_allclose(model.item_embeddings(), artifact.load_item_index(), rtol=0, atol=1e-6)
    items = pd.read_parquet(artifact.items_path)
    assert items["item_id"].tolist() == list(split.vocab.item_ids)
    assert items["title"].iloc[0].endswith("movie 0")


def test_pipeline_refuses_to_overwrite_a_version(tiny_models, data_files, tmp_path):
    document = fused_spec(tiny_models, epochs=1, data=data_files)
    train_and_evaluate(Manifest.model_validate({"metadata": {"name": "a"}, "spec": document}), tmp_path,
                       embeddings=tmp_path / "embeddings")
    from fusionrec.errors import UserError

    with pytest.raises(UserError, match="already exists"):
        train_and_evaluate(Manifest.model_validate({"metadata": {"name": "a"}, "spec": document}), tmp_path,
                           embeddings=tmp_path / "embeddings")
