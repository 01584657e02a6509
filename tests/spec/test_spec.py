"""The spec is the one config every entry point shares: check defaults, camelCase I/O and error messages."""

import pytest
import yaml

from fusionrec.errors import UserError, manifest_from_dict
from fusionrec.spec import FusionRecommenderSpec, Manifest, load_manifest

MINIMAL = {
    "apiVersion": "fusionrec.io/v1alpha1",
    "kind": "FusionRecommender",
    "metadata": {"name": "shop-recs"},
    "spec": {"version": "v1", "encoders": [{"name": "minilm", "source": "./models/minilm"}]},
}


def _with(path: str, value):
    doc = yaml.safe_load(yaml.safe_dump(MINIMAL))
    node = doc["spec"]
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return doc


def test_minimal_manifest_gets_defaults():
    manifest = manifest_from_dict(MINIMAL)
    spec = manifest.spec
    assert spec.training.workers == 1
    assert spec.rollout.steps == [10, 50, 100]
    assert spec.encoders[0].pooling == "mean"
    assert spec.data.dataset == "ml-100k"


def test_round_trip_uses_camel_case():
    spec = manifest_from_dict(_with("training", {"gpusPerWorker": 1, "batchSize": 64})).spec
    dumped = spec.model_dump(by_alias=True, exclude_none=True)
    assert dumped["training"]["gpusPerWorker"] == 1
    assert dumped["training"]["batchSize"] == 64
    assert FusionRecommenderSpec.model_validate(dumped) == spec


@pytest.mark.parametrize(
    ("path", "value", "field", "words"),
    [
        ("training.workers", 0, "spec.training.workers", "greater than or equal to 1"),
        ("serving.minReplicas", -1, "spec.serving.minReplicas", "greater than or equal to 0"),
        ("fusion.method", "average", "spec.fusion.method", "weighted"),
        ("rollout.steps", [10, 50], "spec.rollout.steps", "end at 100"),
        ("rollout.steps", [50, 10, 100], "spec.rollout.steps", "strictly increase"),
        ("encoders", [], "spec.encoders", "at least 1"),
        ("training.batchSise", 3, "spec.training.batchSise", "unknown field"),
        ("training.schedule", "daily", "spec.training.schedule", "cron"),
    ],
)
def test_bad_fields_are_named(path, value, field, words):
    with pytest.raises(UserError) as info:
        manifest_from_dict(_with(path, value))
    message = str(info.value)
    assert field in message
    assert words in message


def test_merge_needs_method_parameters():
    merge = {"method": "ties", "models": [{"source": "a"}, {"source": "b"}], "base": "base"}
    with pytest.raises(UserError, match="density is required"):
        manifest_from_dict(_with("merge", merge))
    merge["density"] = 0.2
    assert manifest_from_dict(_with("merge", merge)).spec.merge.density == 0.2


def test_duplicate_encoder_names_refused():
    encoders = [{"name": "a", "source": "x"}, {"name": "a", "source": "y"}]
    with pytest.raises(UserError, match="repeated: a"):
        manifest_from_dict(_with("encoders", encoders))


def test_unknown_source_scheme_refused():
    with pytest.raises(UserError, match="unknown source scheme 'ftp'"):
        manifest_from_dict(_with("encoders", [{"name": "a", "source": "ftp://x/y"}]))


def test_replica_range_checked():
    with pytest.raises(UserError, match="maxReplicas"):
        manifest_from_dict(_with("serving", {"minReplicas": 5, "maxReplicas": 2}))


def test_load_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_manifest(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed")
    with pytest.raises(UserError, match="not valid YAML"):
        load_manifest(bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(MINIMAL))
    assert isinstance(load_manifest(good), Manifest)


def test_status_from_a_cluster_is_ignored():
    doc = dict(MINIMAL, status={"phase": "Serving"})
    assert manifest_from_dict(doc).spec.version == "v1"


def test_user_errors_survive_pickling():
    """Errors raised on a Ray worker travel back to the driver pickled."""
    import pickle

    from fusionrec.errors import DataError

    error = DataError("not a number", file="inter.csv", line=7, field="rating", fix="use a float")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is DataError
    assert (copy.file, copy.line, copy.field, copy.fix) == ("inter.csv", 7, "rating", "use a float")
    assert str(copy) == str(error)


def test_manifests_read_numbers_as_kubectl_does_and_convert_nothing(tmp_path):
    """`1e-3` is a float for kubectl (YAML 1.2); PyYAML 1.1 alone would make it a string. And nothing is
    converted: a quoted "4" is not an integer for the API server, so not for the CLI either."""
    base = ("apiVersion: fusionrec.io/v1alpha1\nkind: FusionRecommender\nmetadata: {name: m}\n"
            "spec:\n  version: v1\n  encoders: [{name: e, source: ./e}]\n  training: {%s}\n")
    path = tmp_path / "m.yaml"
    path.write_text(base % "learningRate: 1e-3, workers: 2", encoding="utf-8")
    training = load_manifest(path).spec.training
    assert training.learning_rate == 0.001 and training.workers == 2
    path.write_text(base % 'workers: "2"', encoding="utf-8")
    with pytest.raises(UserError, match="spec.training.workers"):
        load_manifest(path)
