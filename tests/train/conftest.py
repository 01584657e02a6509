"""Fixtures for the training tests: the tiny random bert/mpnet/llama models of tests/model/conftest.py (the
builder is loaded from there, not copied) and the shared builders live in tests/testkit.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


_BUILDER = Path(__file__).resolve().parents[1] / "model" / "conftest.py"


def _build_tiny_models(root: Path) -> dict[str, Path]:
    spec = importlib.util.spec_from_file_location("_fusionrec_tiny_models", _BUILDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_tiny_models(root)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _build_tiny_models(tmp_path_factory.mktemp("tiny-models"))
