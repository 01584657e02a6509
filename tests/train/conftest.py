"""Fixtures for the training tests: the tiny random bert/mpnet/llama models of tests/model/conftest.py (the
builder is loaded from there, not copied) and a small synthetic catalogue with text."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


_BUILDER = Path(__file__).resolve().parents[1] / "model" / "conftest.py"
GENRES = ("Action", "Drama", "Comedy")
WORDS = "star war king queen cat dog".split()  # words the tiny tokenizers know


def _build_tiny_models(root: Path) -> dict[str, Path]:
    spec = importlib.util.spec_from_file_location("_fusionrec_tiny_models", _BUILDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_tiny_models(root)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


def synthetic_frames(n_users: int = 24, n_items: int = 18, per_user: int = 9,
                     seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(interactions, items): each user sticks to one genre and rates its even items high."""
    rng = np.random.default_rng(seed)
    genre_of = [GENRES[i % 3] for i in range(n_items)]
    rows = []
    for u in range(n_users):
        pool = [i for i in range(n_items) if genre_of[i] == GENRES[u % 3]]
        for t, item in enumerate(rng.choice(pool, size=min(per_user, len(pool)), replace=False)):
            rows.append((f"u{u}", f"i{item}", 1000 + 10 * t, 5.0 if item % 2 == 0 else 2.0))
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)],
                          "title": [f"{WORDS[i % len(WORDS)]} movie {i}" for i in range(n_items)],
                          "genres": genre_of, "year": [str(1990 + i % 4) for i in range(n_items)]})
    return interactions, items


def fused_spec(tiny_models: dict[str, Path], *, task: str = "ranking", epochs: int = 3,
               data: dict | None = None, unfrozen: str | None = None) -> dict:
    """A spec document for the three tiny encoders (one optionally fine-tuned above its bottom 2 layers)."""
    encoders = []
    for family in ("bert", "mpnet", "llama"):
        encoder = {"name": family, "source": str(tiny_models[family]), "maxLength": 24,
                   "pooling": "last" if family == "llama" else "mean"}
        encoder.update({"freezeLayers": 2} if family == unfrozen else {"freeze": True})
        encoders.append(encoder)
    document = {"version": "v1", "encoders": encoders, "fusion": {"method": "attention", "dim": 16, "hidden": 16},
                "task": {"type": task, "historyLength": 6, "numNegatives": 8, "useItemIds": True},
                "training": {"epochs": epochs, "batchSize": 8, "learningRate": 1e-2, "encoderLearningRate": 1e-3,
                             "warmupRatio": 0.2, "lrSchedule": "cosine", "earlyStopping": {"patience": 50}}}
    if data is not None:
        document["data"] = data
    return document
