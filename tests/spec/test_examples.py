"""Every example manifest users copy from must parse against the spec."""

from pathlib import Path

import pytest

from fusionrec.spec import load_manifest

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_manifest_is_valid(path):
    manifest = load_manifest(path)
    assert manifest.kind == "FusionRecommender"
    assert manifest.spec.encoders
