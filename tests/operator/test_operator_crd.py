"""The committed CRD is the generated one, structural, and what `kubectl get frec` needs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel

from fusionrec.operator import consts, crd
from fusionrec.operator.schema import check_structural, structural_schema
from fusionrec.spec import DATASET_NAME

from _operator_apiserver import Refused, admit

REPO = Path(__file__).resolve().parents[2]
REPO_CRD = crd.CHART_CRD_PATH


@pytest.fixture(scope="module")
def generated() -> dict:
    return crd.build_crd()


def _root(document: dict) -> dict:
    return document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crd_is_the_generated_one():
    committed = (REPO / REPO_CRD).read_text(encoding="utf-8")
    assert committed == crd.render_crd(), (
        f"{REPO_CRD} is stale: run `python -m fusionrec.operator.crd --write {REPO_CRD}`")


def test_crd_is_a_valid_customresourcedefinition(generated):
    kubernetes_validate.validate(generated, "1.37.0", strict=True)


def test_names_scope_and_status_subresource(generated):
    spec = generated["spec"]
    assert generated["metadata"]["name"] == "fusionrecommenders.fusionrec.io"
    assert spec["group"] == "fusionrec.io" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "FusionRecommender" and spec["names"]["shortNames"] == ["frec"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_printer_columns(generated):
    columns = generated["spec"]["versions"][0]["additionalPrinterColumns"]
    default = [c["name"] for c in columns if not c.get("priority")]
    assert default == ["VERSION", "PHASE", "CANARY", "READY", "AGE"]
    by_name = {c["name"]: c for c in columns}
    assert by_name["READY"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert by_name["CANARY"]["type"] == "integer" and by_name["AGE"]["type"] == "date"
    status_props = _root(generated)["properties"]["status"]["properties"]
    for column in columns:
        path = column["jsonPath"]
        if path.startswith(".status."):
            assert path.split(".")[2].split("[")[0] in status_props, f"{column['name']} points at no status field"


def test_schema_is_structural(generated):
    root = _root(generated)
    assert check_structural(root) == []
    text = json.dumps(root)
    for forbidden in ('"$ref"', '"anyOf"', '"allOf"', '"oneOf"', '"const"', '"title"'):
        assert forbidden not in text


def test_preserve_unknown_fields_only_on_status(generated):
    found = []

    def walk(node: dict, path: str) -> None:
        if node.get("x-kubernetes-preserve-unknown-fields"):
            found.append(path)
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(_root(generated), "")
    assert found == [".status"]


def test_spec_schema_carries_enums_bounds_defaults_and_required(generated):
    spec = _root(generated)["properties"]["spec"]
    props = spec["properties"]
    assert spec["required"] == ["version", "encoders"]
    assert props["task"]["properties"]["type"]["enum"] == ["ranking", "ctr", "rating"]
    assert props["rollout"]["properties"]["strategy"]["enum"] == ["canary", "blueGreen"]
    assert props["serving"]["properties"]["minReplicas"]["minimum"] == 0
    assert props["serving"]["properties"]["targetOngoingRequests"] == {
        "type": "number", "default": 2, "minimum": 0, "exclusiveMinimum": True, "maximum": 10_000}
    assert props["rollout"]["properties"]["steps"]["default"] == [10, 50, 100]
    # Complete: the server validates a default as written (its CEL rules too), without nested defaults.
    assert props["serving"]["default"]["maxReplicas"] == 4
    assert props["serving"]["default"]["resources"] == {"cpu": "1", "memory": "2Gi", "gpu": 0}
    assert props["data"]["default"]["dataset"] == "ml-100k"
    assert props["rollout"]["default"]["analysis"]["enabled"] is True
    assert props["merge"]["nullable"] is True and "default" not in props["merge"]


def test_nullable_enums_are_patterns(generated):
    """The API server refuses a null against any `enum` (null listed or not), nullable or not, and CEL skips
    nulls: a nullable string enum is an anchored pattern of its values instead (a null passes a pattern)."""
    dataset = _root(generated)["properties"]["spec"]["properties"]["data"]["properties"]["dataset"]
    assert dataset == {"type": "string", "description": dataset["description"], "nullable": True,
                       "default": "ml-100k", "maxLength": 64, "pattern": DATASET_NAME}

    def walk(node: dict, path: str) -> None:
        assert not (node.get("nullable") and "enum" in node), path
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(_root(generated), "")


def test_every_string_and_list_of_the_spec_is_bounded(generated):
    """CEL cost estimates need bounds, and the manifest travels in a ConfigMap (1 MiB): every string has a
    maxLength (or an enum), every list a maxItems, every map a maxProperties."""
    unbounded = []

    def walk(node: dict, path: str) -> None:
        kind = node.get("type")
        if kind == "string" and "maxLength" not in node and "enum" not in node:
            unbounded.append(path)
        if kind == "array" and "maxItems" not in node:
            unbounded.append(path)
        if kind == "object" and isinstance(node.get("additionalProperties"), dict) and "maxProperties" not in node:
            unbounded.append(path)
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key], f"{path}[]")

    walk(_root(generated)["properties"]["spec"], "spec")
    assert unbounded == []


def test_uniqueness_is_the_servers_list_types(generated):
    props = _root(generated)["properties"]["spec"]["properties"]
    assert props["encoders"]["x-kubernetes-list-type"] == "map"
    assert props["encoders"]["x-kubernetes-list-map-keys"] == ["name"]
    assert props["encoders"]["items"]["required"][0] == "name"  # a map key must be required
    assert props["task"]["properties"]["userFeatures"]["x-kubernetes-list-type"] == "set"
    assert props["rollout"]["properties"]["steps"]["x-kubernetes-list-type"] == "set"
    assert "messageExpression" not in json.dumps(generated)


def test_every_cel_rule_compiles(generated):
    rules = []

    def walk(node: dict) -> None:
        rules.extend(node.get("x-kubernetes-validations", []))
        for child in node.get("properties", {}).values():
            walk(child)
        if isinstance(node.get("items"), dict):
            walk(node["items"])

    walk(_root(generated))
    assert len(rules) >= 10
    import celpy

    for rule in rules:
        celpy.Environment().compile(rule["rule"])
        if "messageExpression" in rule:
            celpy.Environment().compile(rule["messageExpression"])


def _named(name: str) -> dict:
    return {"apiVersion": "fusionrec.io/v1alpha1", "kind": "FusionRecommender", "metadata": {"name": name},
            "spec": {"version": "v1", "encoders": [{"name": "minilm", "source": "pkg://m"}]}}


def test_metadata_name_schema_matches_kuberay_limits(generated):
    metadata = _root(generated)["properties"]["metadata"]
    assert metadata == {"type": "object", "properties": {"name": {
        "type": "string", "maxLength": 47, "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$"}}}
    admit(generated, _named("shop-recs"))
    admit(generated, _named("a" * 47))
    for bad in ("9shop", "a" * 48, "shop-"):
        with pytest.raises(Refused, match="metadata.name"):
            admit(generated, _named(bad))


def test_cli_write_and_check(tmp_path):
    target = tmp_path / "crds" / "frec.yaml"
    assert crd.main(["--write", str(target)]) == 0
    assert yaml.safe_load(target.read_text())["kind"] == "CustomResourceDefinition"
    assert crd.main(["--check", str(target)]) == 0
    target.write_text(target.read_text().replace("frec", "frc"))
    assert crd.main(["--check", str(target)]) == 1


class _Union(BaseModel):
    value: int | str


class _Literal(BaseModel):
    kind: Literal["a"] = "a"
    ratio: float = 0.5


def test_converter_refuses_what_has_no_structural_form():
    with pytest.raises(ValueError, match="_Union.value: a union of 2 non-null types"):
        structural_schema(_Union)
    with pytest.raises(ValueError, match="fields that do not exist"):
        structural_schema(_Literal, {(_Literal, "missing"): {"maxLength": 1}})
    assert structural_schema(_Literal)["properties"]["kind"] == {"type": "string", "default": "a", "enum": ["a"]}


def test_consts_agree_with_the_spec_module():
    from fusionrec import spec

    assert (consts.GROUP, consts.VERSION, consts.KIND) == (spec.API_GROUP, spec.API_VERSION, spec.KIND)
    assert consts.FUSIONRECOMMENDERS.path("recs", "x", "status") == \
        "/apis/fusionrec.io/v1alpha1/namespaces/recs/fusionrecommenders/x/status"
    assert consts.CONFIGMAPS.path("recs") == "/api/v1/namespaces/recs/configmaps"


SCHEDULES = ["0 3 * * *", "*/15 0-6,22-23 1,15 JAN-jun mon-FRI", "00 0/6 */2 * 7", "59 23 31 12 sat",
             "0 3 * *", "0 0 3 * * *", "60 3 * * *", "0 24 * * *", "0 3 0 * *", "0 3 32 * *", "0 3 * 13 *",
             "0 3 * * 8", "*/0 * * * *", "*/60 * * * *", "0 */24 * * *", "0 3 * janu *", "0 3 * * mo", "a b c d e",
             "0 3 * * 1-", "0 3 * * ,1", "1,,2 3 * * *", "  0 3 * * *  ", "0\t3 * * *", "0 3 * * 0-7/2"]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_cron_rule_agrees_with_the_parser(schedule):
    """The CRD's training.schedule rule (an RE2 pattern) and fusionrec.cron accept the same expressions; the one
    gap, a range that runs backwards (fri-mon), is left to pydantic (the operator reports SpecValid=False)."""
    import re

    from fusionrec.cron import CronSchedule

    rule = crd.SPEC_EXTRAS[(crd.TrainingSpec, "schedule")]["x-kubernetes-validations"][0]["rule"]
    pattern = rule[len("self.matches('"):-len("')")].replace("\\\\", "\\")
    try:
        CronSchedule.parse(schedule)
        parsed = True
    except ValueError:
        parsed = False
    assert bool(re.match(pattern, schedule)) == parsed, schedule


@pytest.mark.parametrize("doc_merge", [
    {"method": "linear", "density": 0.5},
    {"method": "ties", "base": "pkg://b"},
    {"method": "slerp", "t": 0.5, "lambda": 2.0},
])
def test_merge_union_is_one_object_with_guarded_rules(generated, doc_merge):
    """spec.merge (a union of one model per method) is flattened: every parameter once, and CEL rules guarded by
    the method say which a method requires and which it does not take."""
    merge = _root(generated)["properties"]["spec"]["properties"]["merge"]
    assert merge["type"] == "object" and "oneOf" not in merge and "anyOf" not in merge
    assert merge["properties"]["method"]["enum"] == ["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties",
                                                     "slerp"]
    assert {"base", "lambda", "density", "rescale", "seed", "t", "tFilters"} <= set(merge["properties"])
    doc = {"apiVersion": "fusionrec.io/v1alpha1", "kind": "FusionRecommender", "metadata": {"name": "m"},
           "spec": {"version": "v1", "encoders": [{"name": "e", "source": "pkg://e"}],
                    "merge": {**doc_merge, "models": [{"source": "pkg://a"}, {"source": "pkg://b"}]}}}
    with pytest.raises(Refused) as refused:
        admit(generated, doc)
    assert any(f"method {doc_merge['method']}" in p for p in refused.value.problems), refused.value.problems
