"""examples/fusionrecommender-cluster.yaml is what the chart's CRD admits and the operator can run."""

from __future__ import annotations

import re
import sys

import jsonschema
import pytest
import yaml

from fusionrec.operator.builders import ServedVersion, build_rayjob, build_rayservice
from fusionrec.operator.config import OperatorConfig
from fusionrec.operator.controller import parse_manifest

from _chart_helpers import CHART, REPO

EXAMPLE = REPO / "examples" / "fusionrecommender-cluster.yaml"

# The operator tests' stand-in for the API server's admission (defaults, strict schema, CEL rules).
sys.path.insert(0, str(REPO / "tests" / "operator"))
from _operator_apiserver import Refused, admit  # noqa: E402  (found through the path added above)


@pytest.fixture(scope="module")
def crd() -> dict:
    return yaml.safe_load((CHART / "crds" / "fusionrecommenders.yaml").read_text())


@pytest.fixture(scope="module")
def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_example_validates_against_the_crd_schema(crd, example):
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.Draft4Validator(schema).validate(example)
    admit(crd, example)  # unknown fields refused, defaults applied, CEL rules evaluated


def test_a_broken_copy_is_refused(crd, example):
    """The check above can fail: a typo'd field and a bad rollout step do not pass."""
    broken = yaml.safe_load(EXAMPLE.read_text())
    broken["spec"]["serving"]["maxReplica"] = 3
    with pytest.raises(Refused, match="maxReplica"):
        admit(crd, broken)
    broken = yaml.safe_load(EXAMPLE.read_text())
    broken["spec"]["rollout"]["steps"] = [50, 10, 100]
    with pytest.raises(Refused):
        admit(crd, broken)


def test_the_operator_accepts_it_and_builds_its_children(example):
    manifest = parse_manifest(example)  # the cluster checks too: shared storage, DNS-safe name
    config = OperatorConfig()
    rayjob = build_rayjob(manifest, manifest.spec.version, config)
    rayservice = build_rayservice(manifest, [ServedVersion(manifest.spec.version, 100)], config)
    assert rayjob["metadata"]["namespace"] == rayservice["metadata"]["namespace"] == "recs"


def test_every_claim_it_mounts_is_listed_in_its_header(example):
    text = EXAMPLE.read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    claims = set(re.findall(r"pvc://([a-z0-9-]+)", yaml.safe_dump(example)))
    assert claims, "the cluster example should use shared storage"
    for claim in claims:
        assert f"`{claim}`" in header, f"claim {claim} is used but the header does not say to create it"
    secret = example["spec"]["serving"]["auth"]["secretRef"]
    assert f"`{secret}`" in header
