"""The int8 gate: its torch reference is the model itself (the catalogue it holds, not one more LM pass over
every item), which matches the eager graphs; a pruned model is still measured through its pruned graphs;
the ladder starts on smoothed graphs; when a rung fails the ranking gate, the next is tried and every attempt
is reported and stored; when all fail, nothing is written."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch

from fusionrec.compile import ParityError, compile_artifact, compiler
from fusionrec.compile import onnxruntime_backend as ort_backend
from fusionrec.compile.graphs import build_graph
from fusionrec.compile.inputs import TowerInputs
from fusionrec.compile.parity import max_relative_error
from fusionrec.compile.pruning import drop_top_layers
from fusionrec.compile.scoring import (
    Ranking,
    encode_catalogue,
    graph_ranking_metrics,
    model_ranking_metrics,
    model_vectors,
)
from fusionrec.compile.smoothing import SMOOTH_ALPHA
from fusionrec.compile.torch_backend import TorchRuntime
from fusionrec.model.saved import load_model

from helpers import siblings, snapshot

# Each case quantises and measures a tiny fused model several times (10-25 s apiece): the slow tier.
pytestmark = pytest.mark.slow

torch.set_num_threads(1)


def eager(model) -> dict[str, TorchRuntime]:
    return {kind: TorchRuntime(copy.deepcopy(module), signature, "fp32", "cpu", "eager")
            for kind, (module, signature) in ((k, build_graph(model, k)) for k in ("user", "item"))}


@pytest.mark.parametrize("tower", ["text", "sequence"])
def test_the_model_reference_matches_the_eager_graphs(tower, text_artifact, sequence_artifact):
    model, artifact = load_model(text_artifact if tower == "text" else sequence_artifact)
    split = compiler._load_split(artifact)
    inputs, runtimes = TowerInputs.from_model(model), eager(model)
    catalogue, users = model_vectors(model)
    graph_catalogue = encode_catalogue(runtimes["item"], inputs, model.n_items)
    assert max_relative_error(graph_catalogue, catalogue.numpy()) < 1e-5
    histories = split.history("valid")
    ids = np.arange(len(histories))
    from_graph = runtimes["user"].run(inputs.user_inputs(histories, graph_catalogue, ids))
    assert max_relative_error(from_graph, users(torch.from_numpy(ids), histories).numpy()) < 1e-5
    expected = graph_ranking_metrics(model, runtimes["user"], runtimes["item"], inputs, split)
    assert model_ranking_metrics(model, split) == pytest.approx(expected, abs=1e-12)
    assert expected["ndcg@10"] > 0


def spy_rankings(monkeypatch) -> list[tuple[str, float]]:
    """Record (backend of the item runtime, NDCG@10) for every graph ranking pass compile makes."""
    calls = []

    def spied(model, user_runtime, item_runtime, inputs, split, stage="valid"):
        metrics = graph_ranking_metrics(model, user_runtime, item_runtime, inputs, split, stage)
        calls.append((item_runtime.backend, metrics["ndcg@10"]))
        return metrics

    monkeypatch.setattr(compiler, "graph_ranking_metrics", spied)
    return calls


def test_an_unpruned_int8_gate_never_runs_the_eager_item_graph_over_the_catalogue(text_artifact, fresh_copy,
                                                                                 monkeypatch):
    calls = spy_rankings(monkeypatch)
    record = compile_artifact(fresh_copy(text_artifact), precision="int8", threads=1, report=lambda line: None)
    assert [backend for backend, _ in calls] == ["onnxruntime"]  # the compiled graphs only
    model, artifact = load_model(text_artifact)
    quality = record["quality"]
    assert quality["torch_reference"] == "model"
    assert quality["torch_ndcg@10"] == model_ranking_metrics(model, compiler._load_split(artifact))["ndcg@10"]


def test_a_pruned_int8_model_is_measured_through_its_pruned_graphs(text_artifact, fresh_copy, monkeypatch):
    calls = spy_rankings(monkeypatch)
    record = compile_artifact(fresh_copy(text_artifact), precision="int8", threads=1, prune_layers=1,
                              tolerance=float("inf"), report=lambda line: None)
    assert [backend for backend, _ in calls] == ["torch", "onnxruntime"]
    model, artifact = load_model(text_artifact)
    split = compiler._load_split(artifact)
    unpruned = model_ranking_metrics(model, split)["ndcg@10"]
    drop_top_layers(model, 1)
    runtimes = eager(model)
    pruned = graph_ranking_metrics(model, runtimes["user"], runtimes["item"], TowerInputs.from_model(model), split)
    quality = record["quality"]
    assert quality["torch_reference"] == "pruned eager graphs"
    assert quality["torch_ndcg@10"] == pruned["ndcg@10"] == calls[0][1]
    assert quality["unpruned_ndcg@10"] == unpruned


def penalise_quantised(monkeypatch, always: bool = False) -> None:
    """A stand-in gate that int8 cannot pass: the compiled NDCG@10 is the measured one halved whenever the
    user graph holds a quantised MatMul (or always), so only a rung that keeps every product fp32 passes."""
    def judged(model, user_runtime, item_runtime, inputs, split, stage="valid"):
        measured = graph_ranking_metrics(model, user_runtime, item_runtime, inputs, split, stage)
        metrics = Ranking(measured, measured.ranks)
        if always or ort_backend.int8_coverage(user_runtime.path)[0]:
            metrics["ndcg@10"] *= 0.5
        return metrics

    monkeypatch.setattr(compiler, "graph_ranking_metrics", judged)


def test_a_failing_default_ratio_retries_stricter_ones_and_records_each(text_artifact, fresh_copy, monkeypatch):
    # smoothed first; then 1e9 keeps no product fp32, 1e8 keeps the same ones (skipped), 1.0 keeps every
    # one (max/rms >= 1).
    monkeypatch.setattr(ort_backend, "SMOOTHED_LADDER", (1e9,))
    monkeypatch.setattr(ort_backend, "OUTLIER_LADDER", (1e9, 1e8, 1.0))
    penalise_quantised(monkeypatch)
    path = fresh_copy(text_artifact)
    lines: list[str] = []
    record = compile_artifact(path, precision="int8", threads=1, report=lines.append)
    int8 = record["int8"]
    assert int8["outlier_ratio"] == 1.0 and int8["smooth_alpha"] is None
    assert int8["ladder"] == [{"outlier_ratio": 1e9, "smooth_alpha": SMOOTH_ALPHA}] + [
        {"outlier_ratio": ratio, "smooth_alpha": None} for ratio in (1e9, 1e8, 1.0)]
    smoothed, first, second = int8["attempts"]
    assert [(a["outlier_ratio"], a["smooth_alpha"], a["passed"]) for a in int8["attempts"]] == [
        (1e9, SMOOTH_ALPHA, False), (1e9, None, False), (1.0, None, True)]
    assert first["relative_drop"] == pytest.approx(0.5) and second["relative_drop"] == pytest.approx(0.0, abs=0.01)
    assert smoothed["relative_drop"] == pytest.approx(0.5)
    assert first["torch_ndcg@10"] == second["torch_ndcg@10"] == record["quality"]["torch_ndcg@10"]
    assert record["quality"]["compiled_ndcg@10"] == second["compiled_ndcg@10"]
    quantised, kept = ort_backend.int8_coverage(path / "encoder.onnx")  # the passing rung's graph was written
    assert quantised == 0 and kept == second["fp32_matmuls"]["user"] > first["fp32_matmuls"]["user"]
    assert not any(n.op_type == "Mul" and n.name.endswith("_smooth")  # ... and it is the unsmoothed one
                   for n in onnx.load(str(path / "encoder.onnx")).graph.node)
    assert any("ratio 1e+09 smoothed (alpha 0.5)" in line and "FAILED" in line for line in lines)
    assert any("ratio 1e+09 (" in line and "FAILED" in line for line in lines)
    assert any("ratio 1e+08" in line and "skipped" in line for line in lines)
    assert any("ratio 1 " in line and line.endswith("ok") for line in lines)
    assert json.loads((path / "compile.json").read_text()) == record


def test_the_default_ladder_starts_smoothed_and_a_passing_smoothed_rung_is_what_is_written(text_artifact,
                                                                                         fresh_copy):
    path = fresh_copy(text_artifact)
    record = compile_artifact(path, precision="int8", threads=1, report=lambda line: None)
    assert compiler.int8_rungs()[0] == (ort_backend.OUTLIER_RATIO, SMOOTH_ALPHA)
    int8 = record["int8"]
    assert (int8["outlier_ratio"], int8["smooth_alpha"]) == (ort_backend.OUTLIER_RATIO, SMOOTH_ALPHA)
    assert [a["smooth_alpha"] for a in int8["attempts"]] == [SMOOTH_ALPHA]  # the tiny LMs pass at once
    low, high = int8["attempts"][0]["drop_95_interval"]  # how finely this split measures the drop
    assert low <= int8["attempts"][0]["relative_drop"] <= high
    # their activations have no outliers (max/rms <= 8), so nothing was worth smoothing
    nodes = onnx.load(str(path / "encoder.onnx")).graph.node
    assert not any(n.op_type == "Mul" and n.name.endswith("_smooth") for n in nodes)
    assert ort_backend.int8_coverage(path / "encoder.onnx")[0] > 0


def test_when_every_ratio_fails_the_error_names_the_numbers_and_nothing_is_written(text_artifact, fresh_copy,
                                                                                  monkeypatch):
    monkeypatch.setattr(ort_backend, "SMOOTHED_LADDER", (1.0,))
    monkeypatch.setattr(ort_backend, "OUTLIER_LADDER", (1e9, 1.0))
    penalise_quantised(monkeypatch, always=True)
    path = fresh_copy(text_artifact)
    before, around = snapshot(path), siblings(path)
    with pytest.raises(ParityError, match="every outlier ratio tried") as failure:
        compile_artifact(path, precision="int8", threads=1, report=lambda line: None)
    message, fix = failure.value.message, failure.value.fix
    assert "outlier ratio 1 smoothed (alpha 0.5)" in message and message.count("FAILED") == 3
    assert "outlier ratio 1e+09" in message and "outlier ratio 1 (" in message
    assert "drop +50.00%" in message
    assert "--precision fp32" in fix and "--tolerance 0.51" in fix
    assert snapshot(path) == before and siblings(path) == around
