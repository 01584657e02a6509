"""The spec is the one config every entry point shares: check defaults, camelCase I/O and error messages."""

import pytest
import yaml
from pydantic import ValidationError

from fusionrec.choices import BACKEND_PRECISIONS, MERGE_METHODS, MODEL_SOURCE_SCHEMES, PRECISIONS
from fusionrec.errors import UserError
from fusionrec.spec import MERGE_CLASSES, FusionRecommenderSpec, Manifest, MergeSpec, load_manifest, manifest_from_dict

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
    with pytest.raises(UserError, match=r"spec\.merge\.density: required for method ties"):
        manifest_from_dict(_with("merge", merge))
    merge["density"] = 0.2
    assert manifest_from_dict(_with("merge", merge)).spec.merge.density == 0.2


@pytest.mark.parametrize("method", sorted(MERGE_METHODS))
def test_each_merge_method_takes_exactly_its_own_parameters(method):
    """spec.merge is one model per method, generated from the ParamDefs the merge code reads."""
    info = MERGE_METHODS[method]
    cls = MERGE_CLASSES[method]
    assert cls.info is info
    own = {p.name for p in info.params} | ({"base"} if info.needs_base else set())
    fields = {f.alias or n for n, f in cls.model_fields.items()} - {"method", "name", "models"}
    assert fields == own
    every = {p.name for m in MERGE_METHODS.values() for p in m.params} | {"base"}
    samples = {"lambda": 1.5, "density": 0.5, "rescale": False, "seed": 3, "t": 0.25, "tFilters": {"attn": 0.5},
               "base": "pkg://base"}
    required = {p.name: samples[p.name] for p in info.params if p.required}
    merge = {"method": method, "models": [{"source": "pkg://a"}, {"source": "pkg://b"}], **required,
             **({"base": "pkg://base"} if info.needs_base else {})}
    parsed = manifest_from_dict(_with("merge", merge)).spec.merge
    assert type(parsed) is cls and parsed.parameters() == required
    for name in sorted(every - own):
        with pytest.raises(UserError, match=rf"spec\.merge\.{name}: unknown field for method {method}"):
            manifest_from_dict(_with("merge", {**merge, name: samples[name]}))


@pytest.mark.parametrize("merge, words", [
    ({"method": "ties", "base": "b", "density": 0, "models": [{"source": "a"}]}, "spec.merge.density"),
    ({"method": "ties", "base": "b", "density": 1.5, "models": [{"source": "a"}]}, "spec.merge.density"),
    ({"method": "task_arithmetic", "base": "b", "lambda": 0, "models": [{"source": "a"}]}, "spec.merge.lambda"),
    ({"method": "dare_ties", "base": "b", "density": 0.5, "seed": -1, "models": [{"source": "a"}]},
     "spec.merge.seed"),
    ({"method": "slerp", "t": 0.5, "models": [{"source": "a"}]}, "takes exactly 2 models"),
    ({"method": "slerp", "t": 0.5, "tFilters": {"(": 0.5}, "models": [{"source": "a"}, {"source": "b"}]},
     "not a valid regular expression"),
    ({"method": "soup", "models": [{"source": "a"}]}, "merge.method must be one of linear"),
    ({"models": [{"source": "a"}]}, "merge.method must be one of linear"),
    ({"method": "ties", "base": "ftp://b/base", "density": 0.5, "models": [{"source": "a"}]}, "spec.merge.base"),
    ({"method": "linear", "models": [{"source": "hdfs://b/m"}]}, "spec.merge.models[0].source"),
])
def test_merge_parameters_checked_at_the_edge(merge, words):
    with pytest.raises(UserError) as info:
        manifest_from_dict(_with("merge", merge))
    assert words in str(info.value)


def test_merge_spec_model_validate_picks_the_method():
    spec = MergeSpec.model_validate({"method": "dare_linear", "base": "b", "density": 0.3,
                                     "models": [{"source": "a"}]})
    assert type(spec) is MERGE_CLASSES["dare_linear"] and spec.base_source == "b"
    assert spec.parameters() == {"density": 0.3}


@pytest.mark.parametrize("backend, precision, ok", [
    (backend, precision, precision in precisions)
    for backend, precisions in BACKEND_PRECISIONS.items() for precision in PRECISIONS])
def test_backend_and_precision_checked_from_the_compiler_table(backend, precision, ok):
    doc = _with("compile", {"backend": backend, "precision": precision})
    if ok:
        assert manifest_from_dict(doc).spec.compile.precision == precision
    else:
        with pytest.raises(UserError, match=rf"spec\.compile: compile\.precision: backend {backend} does not "
                                            rf"compile {precision}.*use backend"):
            manifest_from_dict(doc)


@pytest.mark.parametrize("schedule, words", [
    ("0 3 * *", "has 4 fields"),
    ("60 3 * * *", "minute '60' is not a number in 0..59"),
    ("0 24 * * *", "hour '24'"),
    ("0 3 32 * *", "day of month '32'"),
    ("0 3 * 13 *", "month '13'"),
    ("0 3 * * 8", "day of week '8'"),
    ("0 3 * * fri-mon", "runs backwards"),
    ("*/0 * * * *", "minute step '0'"),
    ("0 3 * * mo", "day of week 'mo'"),
])
def test_schedule_parsed_fully(schedule, words):
    with pytest.raises(UserError) as info:
        manifest_from_dict(_with("training", {"schedule": schedule}))
    assert "spec.training.schedule" in str(info.value) and words in str(info.value)


@pytest.mark.parametrize("schedule", ["0 3 * * *", "*/15 0-6,22-23 1,15 jan-jun MON-fri", "0 0 29 2 *",
                                      "5 4 * * 7", "0 0/6 * * *"])
def test_valid_schedules_accepted(schedule):
    assert manifest_from_dict(_with("training", {"schedule": schedule})).spec.training.schedule == schedule


def test_model_sizes_are_spec_fields():
    task = manifest_from_dict(_with("task", {"type": "ctr", "sequenceLayers": 1, "sequenceHeads": 4,
                                             "headHidden": 64})).spec.task
    assert (task.sequence_layers, task.sequence_heads, task.head_hidden) == (1, 4, 64)
    defaults = manifest_from_dict(MINIMAL).spec.task
    assert (defaults.sequence_layers, defaults.sequence_heads, defaults.head_hidden) == (2, 1, 128)
    with pytest.raises(UserError, match=r"sequenceHeads=3 must divide fusion\.dim=256"):
        manifest_from_dict(_with("task", {"sequenceHeads": 3}))
    with pytest.raises(UserError, match="apply to userTower sequence"):  # the text tower has no heads
        manifest_from_dict(_with("task", {"sequenceHeads": 3, "userTower": "text"}))
    with pytest.raises(UserError, match="a ranking head is a dot product"):  # nor a ranking head a hidden layer
        manifest_from_dict(_with("task", {"headHidden": 64}))


def test_duplicate_encoder_names_refused():
    encoders = [{"name": "a", "source": "x"}, {"name": "a", "source": "y"}]
    with pytest.raises(UserError, match="repeated: a"):
        manifest_from_dict(_with("encoders", encoders))


@pytest.mark.parametrize("source", ["ftp://x/y", "hdfs://namenode/model", "abfs://container/model"])
def test_unsupported_source_scheme_refused_with_the_fix(source):
    scheme = source.split(":")[0]
    with pytest.raises(UserError, match=rf"spec\.encoders\[0\]\.source: models are not loaded from {scheme}:// "
                                        r"sources; use a local folder.*fusionrec models pull"):
        manifest_from_dict(_with("encoders", [{"name": "a", "source": source}]))


def test_model_source_schemes_are_the_loaders():
    """One list: every scheme the spec lets through, fusionrec.model.sources resolves (no 'unknown scheme')."""
    from fusionrec.model import sources

    for scheme in MODEL_SOURCE_SCHEMES:
        with pytest.raises(UserError) as info:
            sources.resolve_source(f"{scheme}://")
        assert "models are not loaded" not in str(info.value)


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


def test_the_tables_are_torch_free_and_name_every_method():
    """The spec (imported by the operator, which has no torch) reads its tables from fusionrec.choices; the merge
    registry and the compiler read the same ones."""
    import subprocess
    import sys
    from typing import get_args

    from fusionrec.spec import MergeMethod

    code = ("import sys, fusionrec.spec, fusionrec.choices, fusionrec.cron, fusionrec.operator.crd; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers') "
            "or m.startswith('fusionrec.model')); print(bad); sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert get_args(MergeMethod) == tuple(MERGE_METHODS) == tuple(MERGE_CLASSES)

    from fusionrec.compile.registry import BACKENDS
    from fusionrec.model.merge import REGISTRY

    assert sorted(REGISTRY) == sorted(MERGE_METHODS)
    for name, method in REGISTRY.items():
        assert method.parameters() == list(MERGE_METHODS[name].params)
        assert method.needs_base() == MERGE_METHODS[name].needs_base
    assert {name: b.precisions for name, b in BACKENDS.items()} == BACKEND_PRECISIONS


def test_artifact_specs_from_before_the_merge_union_still_load():
    """spec.yaml files written before spec.merge was one model per method carry every method's parameter."""
    from fusionrec.spec import upgrade_artifact_spec

    old = {**MINIMAL["spec"], "merge": {
        "method": "linear", "name": "merged", "base": None, "models": [{"source": "a", "weight": 1.0}],
        "density": None, "lambda": None, "rescale": True, "t": None, "tFilters": None, "seed": 0}}
    with pytest.raises(ValidationError):
        FusionRecommenderSpec.model_validate(old)
    spec = FusionRecommenderSpec.model_validate(upgrade_artifact_spec(old))
    assert spec.merge.method == "linear" and spec.merge.parameters() == {}
    ties = {**old, "merge": {**old["merge"], "method": "ties", "base": "b", "density": 0.2, "lambda": 1.5}}
    assert FusionRecommenderSpec.model_validate(upgrade_artifact_spec(ties)).merge.parameters() == {
        "lambda": 1.5, "density": 0.2}
    changed = {**old, "merge": {**old["merge"], "seed": 7}}  # a value someone set is not dropped
    with pytest.raises(ValidationError):
        FusionRecommenderSpec.model_validate(upgrade_artifact_spec(changed))
