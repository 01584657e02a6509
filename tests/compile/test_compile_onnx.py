"""Export + ONNX Runtime on tiny trained artifacts: fp32 parity of both towers, dynamic axes, the runtime
serving uses, the int8 ranking gate (pass, and a forced failure that writes nothing)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fusionrec.artifact import load_artifact
from fusionrec.compile import ParityError, compile_artifact, load_compiled
from fusionrec.compile.graphs import build_graph
from fusionrec.compile.parity import max_relative_error
from fusionrec.model.saved import load_model

from helpers import siblings, snapshot

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def compiled_text(text_artifact, tmp_path_factory):
    """The text-tower artifact compiled once with ONNX Runtime fp32 (a private copy)."""
    import shutil

    dest = tmp_path_factory.mktemp("compiled-text") / "v1"
    shutil.copytree(text_artifact, dest)
    record = compile_artifact(dest, backend="onnxruntime", precision="fp32", threads=1)
    return dest, record


def test_fp32_compile_records_backend_precision_opset_and_parity(compiled_text):
    path, record = compiled_text
    artifact = load_artifact(path)  # the new files are in the manifest and verify
    for name in ("encoder.onnx", "item_encoder.onnx", "compile.json"):
        assert name in artifact.files
    stored = json.loads((path / "compile.json").read_text())
    assert stored == record
    assert (record["backend"], record["precision"], record["opset"], record["threads"]) == ("onnxruntime", "fp32",
                                                                                             17, 1)
    checks = {c["graph"]: c for c in record["parity"]}
    assert set(checks) == {"user", "item"}
    for check in checks.values():
        assert check["passed"] and check["value"] < 1e-4 and check["tolerance"] == 1e-4
    inputs = record["graphs"]["user"]["signature"]["inputs"]
    assert inputs == [f"{f}_{t}" for f in ("bert", "mpnet", "llama") for t in ("input_ids", "attention_mask")]


def test_compiled_towers_match_torch_at_other_batch_and_sequence_sizes(compiled_text):
    path, _ = compiled_text
    model, _ = load_model(path)
    user = load_compiled(path, "user", threads=1)
    item = load_compiled(path, "item", threads=1)
    assert (user.backend, user.precision) == ("onnxruntime", "fp32")
    texts = ["star", "war king queen cat dog star war king queen cat dog star war. Genres: Drama", "cat movie"]
    feed = user.inputs.tokens(texts)  # batch 3 and token lengths unlike the export example
    assert feed["bert_input_ids"].shape[0] == 3
    module, signature = build_graph(model, "user")
    with torch.no_grad():
        expected = module(*[torch.from_numpy(feed[n]) for n in signature.inputs]).numpy()
    assert max_relative_error(expected, user.run(feed)) < 1e-4
    catalogue = np.concatenate([item.run(item.inputs.item_inputs(np.array([i]))) for i in range(model.n_items)])
    assert max_relative_error(model.item_embeddings(), catalogue) < 1e-4  # batch 1, one text at a time


def test_compiled_user_tower_scores_like_full_sort_predict(compiled_text):
    path, _ = compiled_text
    model, artifact = load_model(path)
    user = load_compiled(artifact, "user", threads=1)
    histories = [np.array([0, 3, 6]), np.array([1]), np.array([2, 5, 8, 11, 14, 17, 4, 7])]
    users = torch.arange(3)
    vectors = user.run(user.inputs.user_inputs(histories))
    scores = torch.from_numpy(vectors) @ torch.from_numpy(artifact.load_item_index()).T  # [3, N]
    with torch.no_grad():
        expected = model.full_sort_predict(users, histories)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tower", ["sequence", "pooled"])
def test_vector_towers_compile_with_history_vectors(tower, request, fresh_copy):
    path = fresh_copy(request.getfixturevalue(f"{tower}_artifact"))
    record = compile_artifact(path, threads=1, report=lambda line: None)
    assert record["graphs"]["user"]["signature"]["inputs"] == ["history_vectors", "history_mask"]
    assert record["graphs"]["item"]["signature"]["inputs"][-1] == "item_index"  # the hybrid's ID embedding
    model, artifact = load_model(path)
    user = load_compiled(artifact, "user", threads=1)
    histories = [np.array([4, 1, 7]), np.array([2, 5])]
    vectors = user.run(user.inputs.user_inputs(histories, artifact.load_item_index()))
    with torch.no_grad():
        expected = model.full_sort_predict(torch.arange(2), histories)
    got = torch.from_numpy(vectors) @ torch.from_numpy(artifact.load_item_index()).T
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_int8_passes_the_ranking_gate_and_records_ndcg(text_artifact, fresh_copy):
    path = fresh_copy(text_artifact)
    lines = []
    record = compile_artifact(path, precision="int8", threads=1, report=lines.append)
    gate = [c for c in record["parity"] if c["metric"] == "ndcg@10_relative_drop"]
    assert len(gate) == 1 and gate[0]["passed"] and gate[0]["tolerance"] == 0.01
    assert record["quality"]["torch_ndcg@10"] > 0
    int8 = record["int8"]  # the default ratio passed: one attempt, stored with its numbers
    assert int8["outlier_ratio"] == 100.0 and [a["outlier_ratio"] for a in int8["attempts"]] == [100.0]
    assert int8["attempts"][0]["passed"] and int8["attempts"][0]["relative_drop"] == gate[0]["value"]
    assert any("ndcg@10_relative_drop" in line for line in lines)  # the numbers are printed too
    json.loads((path / "compile.json").read_text(), parse_constant=pytest.fail)  # strict JSON: no Infinity/NaN
    runtime = load_compiled(path, threads=1)
    assert runtime.precision == "int8"
    import onnx

    ops = {node.op_type for node in onnx.load(str(path / "encoder.onnx")).graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}  # really quantised


@pytest.mark.parametrize(("precision", "tolerance"), [("int8", 0.0), ("fp32", 1e-12)])
def test_a_failed_parity_gate_leaves_the_artifact_untouched(text_artifact, fresh_copy, precision, tolerance):
    path = fresh_copy(text_artifact)
    before, around = snapshot(path), siblings(path)
    with pytest.raises(ParityError, match="parity gate"):
        compile_artifact(path, precision=precision, threads=1, tolerance=tolerance, report=lambda line: None)
    assert snapshot(path) == before
    assert siblings(path) == around
    load_artifact(path)


def test_a_bf16_torch_compile_that_fails_its_gate_points_to_fp16(text_artifact, fresh_copy):
    path = fresh_copy(text_artifact)
    with pytest.raises(ParityError, match="max_relative_error") as failure:
        compile_artifact(path, backend="torch", precision="bf16", tolerance=1e-6, report=lambda line: None)
    assert failure.value.field == "compile.precision" and failure.value.fix.startswith("use fp16")


def test_torch_backend_records_settings_and_runs(text_artifact, fresh_copy):
    path = fresh_copy(text_artifact)
    record = compile_artifact(path, backend="torch", precision="fp32", report=lambda line: None)
    assert record["backend"] == "torch" and "onnx" not in record["graphs"]["user"]
    assert record["graphs"]["user"]["cuda_graph_blockers"] == record["graphs"]["item"]["cuda_graph_blockers"] == []
    assert "encoder.onnx" not in load_artifact(path).files
    runtime = load_compiled(path, compile_mode="eager")
    assert runtime.backend == "torch"
    model, _ = load_model(path)
    feed = runtime.inputs.tokens(["star war", "cat"])
    module, signature = build_graph(model, "user")
    with torch.no_grad():
        expected = module(*[torch.from_numpy(feed[n]) for n in signature.inputs]).numpy()
    np.testing.assert_allclose(runtime.run(feed), expected, rtol=1e-5, atol=1e-6)
