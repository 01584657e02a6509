"""Fixtures for `fusionrec run`: the tiny random bert/llama models (the session fixture in tests/conftest.py),
a small synthetic shop from tests/testkit.py, and manifests over them."""

from __future__ import annotations

import pytest

from testkit import shop_csv


@pytest.fixture(scope="session")
def shop(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 30-user shop as CSV files; returns the spec's `data` section."""
    return shop_csv(tmp_path_factory.mktemp("shop"))
