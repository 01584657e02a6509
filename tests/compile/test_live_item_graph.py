"""Live items on a compiled artifact: the replica embeds new text with the compiled item graph (ONNX Runtime),
not the torch item tower, and both give the same vectors (the model has no item-ID table, which the graph
would add)."""

from __future__ import annotations

import numpy as np

from fusionrec.compile import compile_artifact
from fusionrec.model.saved import load_model
from fusionrec.serving.live_items import ItemEmbedder


def test_new_item_text_runs_through_the_compiled_item_graph(text_only_artifact, fresh_copy):
    artifact = fresh_copy(text_only_artifact)
    compile_artifact(artifact, backend="onnxruntime", precision="fp32", threads=1, report=lambda line: None)
    model, loaded = load_model(artifact)
    model.eval()
    compiled = ItemEmbedder.for_artifact(loaded, model)
    assert compiled.backend == "onnxruntime" and compiled.items is None
    texts = ["A film nobody has seen. Genres: Comedy. Year: 1998", "item 3 again, longer: " + "words " * 30]
    vectors = compiled.embed(texts, [None, None])
    reference = ItemEmbedder("torch", items=model.items).embed(texts, [None, None])
    assert vectors.shape == reference.shape == (2, 16)
    np.testing.assert_allclose(vectors, reference, rtol=1e-4, atol=1e-5)
