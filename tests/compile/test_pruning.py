"""--prune-layers: the top layers go, the graph shrinks, and the quality cost is measured and recorded."""

from __future__ import annotations

import onnx
import pytest

from fusionrec.compile import compile_artifact, load_compiled
from fusionrec.compile.pruning import drop_top_layers, layer_stack
from fusionrec.errors import UserError
from fusionrec.model.saved import load_model

from helpers import snapshot


def test_drop_top_layers_shortens_every_encoder(text_artifact):
    model, _ = load_model(text_artifact)
    report = drop_top_layers(model, 1)
    assert report == {"bert": [3, 2], "mpnet": [3, 2], "llama": [3, 2]}
    assert all(len(layer_stack(e.backbone)) == 2 for e in model.items.encoders)
    assert model.item_embeddings().shape == (model.n_items, 16)  # still runs


def test_too_many_layers_is_a_user_error(text_artifact):
    model, _ = load_model(text_artifact)
    with pytest.raises(UserError, match="prune_layers is 3 but encoder 'bert' has only 3 layers"):
        drop_top_layers(model, 3)


def test_pruned_compile_measures_its_quality_cost(text_artifact, fresh_copy):
    path = fresh_copy(text_artifact)
    record = compile_artifact(path, threads=1, prune_layers=1, report=lambda line: None)
    quality = record["quality"]
    assert quality["layers"]["bert"] == [3, 2]
    assert {"unpruned_ndcg@10", "compiled_ndcg@10", "pruning_relative_drop"} <= set(quality)
    assert record["prune_layers"] == 1 and all(c["passed"] for c in record["parity"])
    graph = onnx.load(str(path / "encoder.onnx")).graph
    softmaxes = sum(node.op_type == "Softmax" for node in graph.node)
    assert softmaxes == 2 * 3 + 1  # 2 attention layers per encoder, plus the fusion's softmax
    runtime = load_compiled(path, threads=1)
    assert runtime.run(runtime.inputs.tokens(["star"])).shape == (1, 16)


def test_pruning_too_deep_writes_nothing(text_artifact, fresh_copy):
    path = fresh_copy(text_artifact)
    before = snapshot(path)
    with pytest.raises(UserError, match="prune_layers"):
        compile_artifact(path, prune_layers=5, report=lambda line: None)
    assert snapshot(path) == before
