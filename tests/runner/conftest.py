"""Fixtures for `fusionrec run`: the tiny random bert/llama models (the session fixture in tests/conftest.py),
a small synthetic shop from tests/testkit.py, and manifests over them."""

from __future__ import annotations

import pytest

from testkit import synthetic_frames


@pytest.fixture(scope="session")
def shop(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 30-user shop as CSV files; returns the spec's `data` section."""
    folder = tmp_path_factory.mktemp("shop")
    interactions, items = synthetic_frames(n_users=30, n_items=24, per_user=8)
    interactions.to_csv(folder / "inter.csv", index=False)
    items.to_csv(folder / "items.csv", index=False)
    return {"dataset": None, "path": str(folder), "interactions": "inter.csv", "items": "items.csv"}
