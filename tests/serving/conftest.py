"""Fixtures for the serving tests: real artifacts written by the pipeline from tiny random bert/mpnet/llama
models (the session fixture `tiny_models` of tests/conftest.py) and a small synthetic shop.

Versions: `v1` and `v2` rank (different seeds, so they answer differently), `c1` predicts clicks (ctr).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

torch.set_num_threads(1)

N_USERS, N_ITEMS, PER_USER = 30, 40, 8
WORDS = "star war king queen cat dog".split()  # words the tiny tokenizers know


def write_shop(folder: Path, seed: int = 0) -> dict:
    """A small shop as CSV files; returns the spec's `data` section. Users lean to one of three genres."""
    rng = np.random.default_rng(seed)
    genres = ["Action", "Drama", "Comedy"]
    rows = []
    for u in range(N_USERS):
        pool = [i for i in range(N_ITEMS) if i % 3 == u % 3]
        for t, item in enumerate(rng.choice(pool, size=PER_USER, replace=False)):
            rows.append((f"u{u}", f"i{item}", 1000 + 10 * t, float(rng.integers(1, 6))))
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"]).to_csv(folder / "inter.csv", index=False)
    pd.DataFrame({"item_id": [f"i{i}" for i in range(N_ITEMS)],
                  "title": [f"{WORDS[i % len(WORDS)]} movie {i}" for i in range(N_ITEMS)],
                  "genres": [genres[i % 3] for i in range(N_ITEMS)],
                  "year": [str(1990 + i % 5) for i in range(N_ITEMS)]}).to_csv(folder / "items.csv", index=False)
    return {"dataset": None, "path": str(folder), "interactions": "inter.csv", "items": "items.csv"}


def spec_document(models: dict[str, Path], data: dict, *, version: str, task: str = "ranking",
                  seed: int = 2020) -> dict:
    encoders = [{"name": family, "source": str(models[family]), "maxLength": 16, "freeze": True,
                 "pooling": "last" if family == "llama" else "mean"} for family in ("bert", "mpnet", "llama")]
    return {"version": version, "encoders": encoders, "fusion": {"method": "attention", "dim": 16, "hidden": 16},
            "task": {"type": task, "historyLength": 6, "numNegatives": 8, "useItemIds": task != "ranking"},
            "training": {"epochs": 1, "batchSize": 16, "seed": seed}, "data": data}


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Iterator[dict[str, Path]]:
    """{"v1" | "v2" | "c1": artifact folder}, trained for one epoch by `train_and_evaluate`."""
    from fusionrec.spec import Manifest
    from fusionrec.train.job import train_and_evaluate

    root = tmp_path_factory.mktemp("serving")
    previous = os.environ.get("FUSIONREC_EMBEDDING_CACHE")
    os.environ["FUSIONREC_EMBEDDING_CACHE"] = str(root / "embeddings")  # Ray replicas inherit it
    models = tiny_models
    data = write_shop(root / "shop")
    out = {}
    for version, task, seed in (("v1", "ranking", 1), ("v2", "ranking", 2), ("c1", "ctr", 3)):
        manifest = Manifest.model_validate({"metadata": {"name": "shop-recs"},
                                            "spec": spec_document(models, data, version=version, task=task,
                                                                  seed=seed)})
        out[version] = train_and_evaluate(manifest, root / "runs", embeddings=root / "embeddings")
    yield out
    if previous is None:
        os.environ.pop("FUSIONREC_EMBEDDING_CACHE", None)
    else:
        os.environ["FUSIONREC_EMBEDDING_CACHE"] = previous
