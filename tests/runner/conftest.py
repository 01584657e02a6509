"""Fixtures for `fusionrec run`: the tiny random bert/llama models of tests/model/conftest.py (the builder is
loaded from there, not copied), a small synthetic shop from tests/testkit.py, and manifests over them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from testkit import synthetic_frames

_BUILDER = Path(__file__).resolve().parents[1] / "model" / "conftest.py"


def _build_tiny_models(root: Path) -> dict[str, Path]:
    spec = importlib.util.spec_from_file_location("_fusionrec_tiny_models_runner", _BUILDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_tiny_models(root)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def shop(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 30-user shop as CSV files; returns the spec's `data` section."""
    folder = tmp_path_factory.mktemp("shop")
    interactions, items = synthetic_frames(n_users=30, n_items=24, per_user=8)
    interactions.to_csv(folder / "inter.csv", index=False)
    items.to_csv(folder / "items.csv", index=False)
    return {"dataset": None, "path": str(folder), "interactions": "inter.csv", "items": "items.csv"}
