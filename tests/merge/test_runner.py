"""`run_merge` end to end on tiny random BERT and Llama folders: the output loads, runs and is reported."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from pydantic import ValidationError
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from fusionrec.errors import UserError
from fusionrec.model.merge import REGISTRY, load_merge_config, run_merge
from fusionrec.model.merge.io import sha256_file
from fusionrec.spec import MergeSpec

SAMPLE_SPEC_VALUES = {"density": 0.5, "t": 0.3}


def spec_for(name: str, base, models, **overrides) -> MergeSpec:
    """A valid MergeSpec for any registered method: required parameters get sample values."""
    method = REGISTRY[name]
    fields = {p.name: SAMPLE_SPEC_VALUES[p.name] for p in method.parameters() if p.required}
    fields.update(method=name, models=[{"source": str(m)} for m in models])
    if method.needs_base():
        fields["base"] = str(base)
    fields.update(overrides)
    return MergeSpec.model_validate(fields)


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_method_writes_a_folder_that_loads_and_runs(name, bert, tmp_path):
    out = tmp_path / "merged"
    report = run_merge(spec_for(name, bert.base, [bert.a, bert.b]), out)

    model = AutoModel.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["w1 w2 w3", "w4"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape == (2, 5, 32) and torch.isfinite(hidden).all()

    merged, base, a = weights(out), weights(bert.base), weights(bert.a)
    assert merged.keys() == base.keys()
    assert any(not torch.equal(merged[k], a[k]) for k in merged), "the merge returned an input unchanged"

    written = json.loads((out / "merge_report.json").read_text())
    assert written["method"] == name and written["referenceUrl"].startswith("https://")
    assert written["summary"]["tensorsMerged"] == len(merged) == report.tensors_merged
    assert written["summary"]["meanAbsDelta"] > 0
    assert written["tensors"].keys() == merged.keys()
    assert all(entry["meanAbsDelta"] > 0 for entry in written["tensors"].values())
    assert written["output"]["sha256"]["model.safetensors"] == sha256_file(out / "model.safetensors")
    sources = {i["source"]: i["sha256"]["model.safetensors"] for i in written["inputs"]}
    assert sources[str(bert.a)] == sha256_file(bert.a / "model.safetensors")
    assert ("config.json" in written["output"]["copiedFiles"]) and (out / "tokenizer_config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"], "a staging folder was left behind"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_merging_identical_llamas_returns_them(name, llama, tmp_path):
    run_merge(spec_for(name, llama.base, [llama.base, llama.base]), tmp_path / "out")
    merged, base = weights(tmp_path / "out"), weights(llama.base)
    for key in base:
        torch.testing.assert_close(merged[key], base[key], rtol=1e-6, atol=1e-6)
    assert AutoModel.from_pretrained(tmp_path / "out")(torch.tensor([[1, 2, 3]])).last_hidden_state.isfinite().all()


def test_linear_with_weights_one_zero_returns_the_first(bert, tmp_path):
    models = [{"source": str(bert.a), "weight": 1}, {"source": str(bert.b), "weight": 0}]
    spec = MergeSpec.model_validate(dict(method="linear", models=models))
    run_merge(spec, tmp_path / "out")
    merged, a = weights(tmp_path / "out"), weights(bert.a)
    assert all(torch.equal(merged[k], a[k]) for k in a)


@pytest.mark.parametrize("t,expected", [(0.0, "a"), (1.0, "b")])
def test_slerp_endpoints_return_the_models(t, expected, llama, tmp_path):
    run_merge(MergeSpec.model_validate(dict(method="slerp", models=[{"source": str(llama.a)}, {"source": str(llama.b)}],
                                            t=t)), tmp_path / "out")
    merged, target = weights(tmp_path / "out"), weights(getattr(llama, expected))
    for key in target:
        torch.testing.assert_close(merged[key], target[key], rtol=1e-5, atol=1e-5)


def test_slerp_t_filters_split_attention_from_mlp(bert, tmp_path):
    spec = MergeSpec.model_validate(dict(method="slerp", models=[{"source": str(bert.a)}, {"source": str(bert.b)}],
                                   t=0.5))
    report = run_merge(spec, tmp_path / "out", t_filters={"attention": 0.0, r"intermediate|layer\.\d+\.output": 1.0})
    merged, a, b = weights(tmp_path / "out"), weights(bert.a), weights(bert.b)
    query, up = "encoder.layer.0.attention.self.query.weight", "encoder.layer.1.intermediate.dense.weight"
    torch.testing.assert_close(merged[query], a[query], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged[up], b[up], rtol=1e-5, atol=1e-5)
    pooler = "pooler.dense.weight"  # no filter matches: t = 0.5, strictly between the two
    assert not torch.allclose(merged[pooler], a[pooler]) and not torch.allclose(merged[pooler], b[pooler])
    assert report.parameters["tFilters"] == {"attention": 0.0, r"intermediate|layer\.\d+\.output": 1.0}


def test_ties_report_counts_sign_conflicts(bert, tmp_path):
    report = run_merge(spec_for("ties", bert.base, [bert.a, bert.b], density=0.3), tmp_path / "out")
    summary = report.summary()
    assert summary["signConflictsResolved"] > 0
    assert summary["keptFraction"] == pytest.approx(0.3, abs=0.01)
    assert report.parameters == {"lambda": 1.0, "density": 0.3}


def test_non_float_tensors_are_copied_from_the_base_and_may_be_absent_elsewhere(tmp_path):
    from safetensors.torch import save_file

    folders = []
    for i in range(3):
        folder = tmp_path / f"m{i}"
        folder.mkdir()
        tensors = {"w": torch.full((3,), float(i)), "position_ids": torch.arange(4) + 10 * i}
        if i == 2:  # newer transformers do not save non-persistent buffers at all
            del tensors["position_ids"]
        save_file(tensors, folder / "model.safetensors")
        (folder / "config.json").write_text('{"model_type": "toy"}')
        folders.append(folder)
    report = run_merge(spec_for("task_arithmetic", folders[0], folders[1:]), tmp_path / "out")
    merged = weights(tmp_path / "out")
    assert torch.equal(merged["position_ids"], torch.arange(4))
    torch.testing.assert_close(merged["w"], torch.full((3,), 0.0 + 1.0 + 2.0))
    assert report.tensors_copied == 1 and report.tensors_merged == 1


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"method": "linear", "density": 0.5}, r"merge\.density: unknown field for method linear"),
        ({"method": "linear", "base": "BASE"}, r"merge\.base: unknown field for method linear"),
        ({"method": "ties", "base": "BASE", "density": 0.5, "rescale": False},
         r"merge\.rescale: unknown field for method ties"),
    ],
)
def test_parameters_the_method_does_not_take_are_refused_by_the_spec(fields, match, tmp_path):
    """Each method's spec member takes exactly its parameters: refused when the merge config is read."""
    config = tmp_path / "merge.yaml"
    config.write_text(yaml.safe_dump({**fields, "models": [{"source": "A"}, {"source": "B"}]}))
    with pytest.raises(UserError, match=match):
        load_merge_config(config)


def test_weights_on_slerp_are_refused_when_read_but_a_rendered_default_merges(bert, tmp_path):
    with pytest.raises(ValidationError, match=r"merge\.models\[0\]\.weight: slerp does not use per-model weights"):
        MergeSpec.model_validate({"method": "slerp", "t": 0.5, "models": [
            {"source": str(bert.a), "weight": 2.0}, {"source": str(bert.b)}]})
    # The operator writes the training pod's manifest with every default filled in (weight: 1.0): no weight at all.
    spec = MergeSpec.model_validate({"method": "slerp", "t": 0.5, "models": [
        {"source": str(bert.a), "weight": 1.0}, {"source": str(bert.b), "weight": 1.0}]})
    run_merge(spec, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_encoder_names_resolve_through_the_manifest(bert, tmp_path):
    spec = spec_for("task_arithmetic", "minilm", ["ranking", "ctr"])
    encoders = {"minilm": str(bert.base), "ranking": str(bert.a), "ctr": str(bert.b)}
    report = run_merge(spec, tmp_path / "out", encoders=encoders)
    assert [i.path for i in report.inputs] == [str(p) for p in (bert.base, bert.a, bert.b)]
