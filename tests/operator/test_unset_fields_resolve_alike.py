"""A field left out means the same on the CLI, a Ray Train worker and a cluster.

The three see one manifest differently: the CLI validates it as written (the field unset); the local runner's
Ray worker validates again a full `model_dump` of it (every field set, to its value or null); the API server
fills every default of the CRD, and the operator hands the pods that object rendered in full (then the pod's
own Ray workers dump it again). So no behaviour may hang on *whether* a field was set (`model_fields_set`):
`training.earlyStopping.metric`, `task.negatives`, `data.columns.rating` (and `.label`) are nullable with no
default, null meaning "the task's / the model's / the file's default", resolved by one helper each.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from fusionrec.errors import UserError
from fusionrec.operator import crd
from fusionrec.operator.builders.training import render_for_pod
from fusionrec.operator.controller import parse_manifest
from fusionrec.protocol import DEFAULT_METRIC
from fusionrec.spec import (
    SELECTION_METRIC_DEFAULTS,
    FusionRecommenderSpec,
    manifest_from_dict,
    upgrade_artifact_spec,
)

from _operator_apiserver import admit

CRD = crd.build_crd()
NEEDS = {"ranking": "ranks", "ctr": "labels", "rating": "ratings"}
# A cluster-ready FusionRecommender that leaves every field under test out.
BASE: dict[str, Any] = {
    "apiVersion": "fusionrec.io/v1alpha1", "kind": "FusionRecommender",
    "metadata": {"name": "shop-recs", "namespace": "recs"},
    "spec": {"version": "v1", "encoders": [{"name": "minilm", "source": "pvc://models/minilm", "freeze": True}],
             "data": {"interactions": "s3://bucket/inter.csv"},
             "serving": {"auth": {"secretRef": "recs-tokens"}}, "storage": {"uri": "pvc://artifacts/runs"}},
}


def _doc(**spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    for key, value in spec.items():
        doc["spec"][key] = {**doc["spec"].get(key, {}), **value} if isinstance(value, dict) else value
    return doc


def _worker(spec: FusionRecommenderSpec) -> FusionRecommenderSpec:
    """As train/distributed.py hands the spec to a Ray Train worker: a full dump, validated again."""
    return FusionRecommenderSpec.model_validate(spec.model_dump(mode="json", by_alias=True))


def _cluster(doc: dict[str, Any]) -> FusionRecommenderSpec:
    """The object as the API server stores it (defaults filled), read by the operator, rendered into the
    manifest ConfigMap the training pod reads, parsed there and dumped to the pod's Ray workers."""
    manifest = parse_manifest(admit(CRD, doc))
    rendered, _ = render_for_pod(manifest, manifest.spec.version)
    in_pod = manifest_from_dict(yaml.safe_load(yaml.safe_dump(rendered)), source="pod")
    return _worker(in_pod.spec)


def ways(doc: dict[str, Any]) -> dict[str, FusionRecommenderSpec]:
    """The same manifest as the CLI, a local Ray worker and a cluster's worker see it."""
    cli = manifest_from_dict(copy.deepcopy(doc)).spec
    return {"cli": cli, "ray-worker": _worker(cli), "cluster": _cluster(doc)}


def test_the_crd_fills_none_of_the_task_dependent_defaults():
    spec = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    negatives = spec["task"]["properties"]["negatives"]
    assert "default" not in negatives and negatives["nullable"] and negatives["pattern"] == "^(in_batch|sampled|full)$"
    assert "enum" not in negatives  # a nullable enum is a pattern (the API server refuses null against an enum)
    assert "negatives" not in spec["task"]["default"]
    metric = spec["training"]["properties"]["earlyStopping"]["properties"]["metric"]
    assert "default" not in metric and metric["nullable"]
    assert "metric" not in spec["training"]["default"]["earlyStopping"]
    rating = spec["data"]["properties"]["columns"]["properties"]["rating"]
    assert "default" not in rating and rating["nullable"]
    assert "rating" not in spec["data"]["default"]["columns"]
    stored = admit(CRD, BASE)["spec"]
    assert "metric" not in stored["training"]["earlyStopping"] and "negatives" not in stored["task"]
    assert "rating" not in stored["data"]["columns"]


# --- training.earlyStopping.metric ------------------------------------------------------------------------------


def test_selection_metric_defaults_are_the_protocols():
    assert SELECTION_METRIC_DEFAULTS == {task: DEFAULT_METRIC[needs] for task, needs in NEEDS.items()}


@pytest.mark.parametrize("task", ["ranking", "ctr", "rating"])
def test_an_unset_selection_metric_is_the_tasks_own_every_way(task):
    from fusionrec.train.candidates import selection_metric_of
    from fusionrec.train.loop import selection_metric

    expected = SELECTION_METRIC_DEFAULTS[task]
    for way, spec in ways(_doc(task={"type": task})).items():
        assert spec.training.early_stopping.metric is None, way
        assert spec.training.early_stopping.metric_for(task) == expected, way
        assert selection_metric(spec.training, NEEDS[task]) == expected, way
        assert selection_metric_of(spec)[0] == expected, way


def test_a_ctr_models_selection_metric_through_a_dumped_spec_is_auc():
    """It used to fail on the Ray worker ("needs ranks"): the dump set the old default ndcg@10 explicitly."""
    from fusionrec.train.candidates import selection_metric_of

    spec = FusionRecommenderSpec.model_validate({"version": "v1", "task": {"type": "ctr"},
                                                 "encoders": [{"name": "a", "source": "./a"}]})
    dumped = _worker(spec)
    assert selection_metric_of(dumped) == ("auc", True)
    assert selection_metric_of(_worker(dumped)) == ("auc", True)


def test_an_explicit_selection_metric_is_kept_and_checked_every_way():
    from fusionrec.train.loop import selection_metric

    for way, spec in ways(_doc(task={"type": "ctr"}, training={"earlyStopping": {"metric": "logloss"}})).items():
        assert selection_metric(spec.training, "labels") == "logloss", way
    for spec in ways(_doc(task={"type": "ctr"}, training={"earlyStopping": {"metric": "ndcg@10"}})).values():
        with pytest.raises(UserError, match="needs ranks but this task is evaluated on labels"):
            selection_metric(spec.training, "labels")


@pytest.mark.parametrize("task,recorded", [("ranking", "ndcg@10"), ("ctr", "auc"), ("rating", "rmse")])
def test_the_report_names_the_metric_that_selected_every_way(task, recorded):
    from fusionrec.report.inputs import _selection_metric

    history = [{"epoch": 1, f"valid_{recorded}": 0.5}]
    for way, spec in ways(_doc(task={"type": task})).items():
        assert _selection_metric(SimpleNamespace(spec=spec), task, history) == recorded, way
    assert _selection_metric(SimpleNamespace(spec=spec), "unknown-task", history) is None


# --- task.negatives -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("freeze,expected", [(True, "full"), (False, "sampled")], ids=["frozen", "fine-tuned"])
def test_unset_negatives_resolve_alike_every_way(freeze, expected):
    doc = _doc(encoders=[{"name": "minilm", "source": "pvc://models/minilm", "freeze": freeze}])
    for way, spec in ways(doc).items():
        assert spec.task.negatives is None, way
        assert spec.task.negatives_for(fine_tuned=not spec.encoders[0].freeze) == expected, way


def test_explicit_negatives_are_kept_every_way():
    doc = _doc(task={"negatives": "full"}, encoders=[{"name": "minilm", "source": "pvc://models/minilm"}])
    for way, spec in ways(doc).items():
        assert spec.task.negatives_for(fine_tuned=True) == "full", way
    doc = _doc(task={"negatives": "in_batch"})
    assert {way: s.task.negatives_for(fine_tuned=False) for way, s in ways(doc).items()} == dict.fromkeys(
        ("cli", "ray-worker", "cluster"), "in_batch")


def test_a_pointwise_head_keeps_full_negatives_when_fine_tuned():
    for way, spec in ways(_doc(task={"type": "ctr"}, encoders=[{"name": "m", "source": "pvc://models/m"}])).items():
        assert spec.task.negatives_for(fine_tuned=True) == "full", way


def test_the_fused_model_built_from_a_dumped_spec_samples_negatives_when_fine_tuned(tiny_models, tmp_path):
    from fusionrec.model.fused import FusedRecommender

    spec = FusionRecommenderSpec.model_validate({
        "version": "v1", "encoders": [{"name": "bert", "source": str(tiny_models["bert"]), "maxLength": 16,
                                       "freezeLayers": 1}],
        "fusion": {"method": "attention", "dim": 16, "hidden": 16}, "task": {"historyLength": 4}})
    texts = [f"item {i}" for i in range(6)]
    for way, built in {"cli": spec, "ray-worker": _worker(spec)}.items():
        model = FusedRecommender.build(built, texts, 3, embedding_cache_dir=tmp_path)
        assert model.head.negatives == "sampled", way
    frozen = spec.model_copy(update={"encoders": [spec.encoders[0].model_copy(update={"freeze": True})]})
    assert FusedRecommender.build(_worker(frozen), texts, 3, embedding_cache_dir=tmp_path).head.negatives == "full"


# --- data.columns.rating (and label) ----------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("user_id,item_id,timestamp\nu,a,1\nu,b,2\n", encoding="utf-8")
    rated = tmp_path / "rated.csv"
    rated.write_text("user_id,item_id,timestamp,rating,label\nu,a,1,4,1\nu,b,2,2,0\n", encoding="utf-8")
    stars = tmp_path / "stars.csv"
    stars.write_text("user_id,item_id,timestamp,stars\nu,a,1,5\nu,b,2,3\n", encoding="utf-8")
    return {"plain": plain, "rated": rated, "stars": stars}


def test_an_unset_rating_column_is_used_when_the_file_has_one_every_way(files):
    from fusionrec.data.readers import read_table

    for way, spec in ways(_doc()).items():
        assert spec.data.columns.rating is None, way
        plain = read_table(files["plain"], columns=spec.data.columns).interactions
        assert "rating" not in plain.columns and "label" not in plain.columns, way
        rated = read_table(files["rated"], columns=spec.data.columns).interactions
        assert list(rated["rating"]) == [4.0, 2.0] and list(rated["label"]) == [1, 0], way


def test_a_named_rating_column_must_exist_every_way(files):
    from fusionrec.data.readers import read_table

    for way, spec in ways(_doc(data={"columns": {"rating": "stars"}})).items():
        rated = read_table(files["stars"], columns=spec.data.columns).interactions
        assert list(rated["rating"]) == [5.0, 3.0], way
        with pytest.raises(UserError, match="stars"):
            read_table(files["plain"], columns=spec.data.columns)


# --- artifacts written before: their spec.yaml holds the old defaults explicitly ------------------------------


def test_an_old_artifacts_spec_with_the_old_explicit_defaults_loads_and_behaves_as_before(tmp_path, files):
    from fusionrec.artifact.layout import parse_spec
    from fusionrec.data.readers import read_table
    from fusionrec.train.loop import selection_metric

    old = manifest_from_dict(BASE).spec.model_dump(mode="json", by_alias=True)
    old["task"]["negatives"] = "full"
    old["training"]["earlyStopping"]["metric"] = "ndcg@10"
    old["data"]["columns"]["rating"] = "rating"
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(old, sort_keys=False), encoding="utf-8")
    spec = parse_spec(path)
    assert spec == FusionRecommenderSpec.model_validate(upgrade_artifact_spec(old))
    assert spec.task.negatives_for(fine_tuned=True) == "full"  # as built before: the field was set
    assert selection_metric(spec.training, "ranks") == "ndcg@10"
    assert spec.data.columns.optional_column("rating", ()) == "rating"  # a set rating column must exist
    with pytest.raises(UserError, match="rating"):
        read_table(files["plain"], columns=spec.data.columns)
    assert _worker(spec) == spec  # and the dump round-trips unchanged
