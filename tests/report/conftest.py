"""Fixtures for the report tests: one tiny fused model trained once per module (the tiny random
bert/mpnet/llama models come from the session fixture in tests/conftest.py), and a fresh copy of its
artifact per test, since tests add files to it or tamper with it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from fusionrec.spec import Manifest
from fusionrec.train.job import train_and_evaluate

from testkit import fused_spec, synthetic_frames


@pytest.fixture(scope="module")
def trained_artifact(tiny_models, tmp_path_factory) -> Path:
    """A ranking artifact of the three tiny encoders fused by attention, 3 epochs on 24 synthetic users."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("report-model")
    interactions, items = synthetic_frames()
    interactions.to_csv(root / "interactions.csv", index=False)
    items.to_csv(root / "items.csv", index=False)
    data = {"dataset": None, "path": str(root), "interactions": "interactions.csv", "items": "items.csv"}
    document = fused_spec(tiny_models, epochs=3, data=data)
    manifest = Manifest.model_validate({"metadata": {"name": "report-test"}, "spec": document})
    return train_and_evaluate(manifest, root / "runs", embeddings=root / "embeddings")


@pytest.fixture
def artifact(trained_artifact, tmp_path) -> Path:
    """A private copy of the trained artifact (same version folder name, so it still verifies)."""
    copy = tmp_path / "runs" / trained_artifact.name
    shutil.copytree(trained_artifact, copy)
    return copy
