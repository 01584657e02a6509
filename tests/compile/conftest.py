"""Tiny trained artifacts to compile: the tiny random bert/mpnet/llama models (the session fixture
in tests/conftest.py), a synthetic catalogue written as CSV (so the int8 gate can reload the
validation split from the spec's data section) and one epoch of training through the real pipeline."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fusionrec.spec import Manifest
from fusionrec.train.job import train_and_evaluate

torch.set_num_threads(1)

GENRES = ("Action", "Drama", "Comedy")
WORDS = ["star", "war", "king", "queen", "cat", "dog"]  # words the tiny tokenizers know


def write_data(folder: Path, n_users: int = 24, n_items: int = 18, per_user: int = 8) -> dict:
    """Users stick to one genre; returns the spec's data section for the CSV files written."""
    rng = np.random.default_rng(0)
    genre_of = [GENRES[i % 3] for i in range(n_items)]
    rows = []
    for u in range(n_users):
        pool = [i for i in range(n_items) if genre_of[i] == GENRES[u % 3]]
        for t, item in enumerate(rng.choice(pool, size=min(per_user, len(pool)), replace=False)):
            rows.append((f"u{u}", f"i{item}", 1000 + 10 * t, 4.0))
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"]).to_csv(
        folder / "interactions.csv", index=False)
    pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)],
                  "title": [f"{WORDS[i % len(WORDS)]} movie {i}" for i in range(n_items)],
                  "genres": genre_of, "year": ["1995"] * n_items}).to_csv(folder / "items.csv", index=False)
    return {"path": str(folder), "interactions": "interactions.csv", "items": "items.csv"}


def spec_document(tiny_models: dict[str, Path], data: dict, *, tower: str, families=("bert", "mpnet", "llama"),
                  version: str = "v1", item_ids: bool = True) -> dict:
    encoders = [{"name": f, "source": str(tiny_models[f]), "maxLength": 24, "freeze": True,
                 "pooling": "last" if f == "llama" else "mean"} for f in families]
    return {"version": version, "encoders": encoders, "fusion": {"method": "attention", "dim": 16, "hidden": 16},
            "task": {"type": "ranking", "userTower": tower, "historyLength": 6, "useItemIds": item_ids},
            "data": data,
            "training": {"epochs": 1, "batchSize": 8, "learningRate": 1e-2, "warmupRatio": 0.0,
                         "lrSchedule": "constant"}}


def train_artifact(root: Path, tiny_models, *, tower: str, **kwargs) -> Path:
    data = write_data(root / "data")
    manifest = Manifest.model_validate({"metadata": {"name": "shop"},
                                        "spec": spec_document(tiny_models, data, tower=tower, **kwargs)})
    return train_and_evaluate(manifest, root / "runs", embeddings=root / "embeddings")


@pytest.fixture(scope="session")
def text_artifact(tiny_models, tmp_path_factory) -> Path:
    """A trained ranking artifact whose user tower reads text (the LMs run per request)."""
    return train_artifact(tmp_path_factory.mktemp("text"), tiny_models, tower="text")


@pytest.fixture(scope="session")
def sequence_artifact(tiny_models, tmp_path_factory) -> Path:
    """A trained ranking artifact with the sequence user tower (item vectors in, LMs only in the item graph)."""
    return train_artifact(tmp_path_factory.mktemp("sequence"), tiny_models, tower="sequence")


@pytest.fixture(scope="session")
def pooled_artifact(tiny_models, tmp_path_factory) -> Path:
    """A trained ranking artifact with the order-free pooled user tower."""
    return train_artifact(tmp_path_factory.mktemp("pooled"), tiny_models, tower="pooled")


@pytest.fixture(scope="session")
def text_only_artifact(tiny_models, tmp_path_factory) -> Path:
    """A sequence-tower artifact without item IDs: its compiled item graph computes the whole item vector."""
    return train_artifact(tmp_path_factory.mktemp("text-only"), tiny_models, tower="sequence", item_ids=False)


@pytest.fixture()
def fresh_copy(tmp_path):
    """Copy an artifact folder so a test can compile it without touching the shared one."""
    def copy(path: Path) -> Path:
        dest = tmp_path / "runs" / path.name
        shutil.copytree(path, dest)
        return dest
    return copy
