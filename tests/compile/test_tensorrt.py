"""TensorRT: the pure parts always; a real engine build only where `tensorrt` imports and a GPU is visible."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from fusionrec.compile.graphs import GraphSignature
from fusionrec.compile.tensorrt_backend import profile_shapes

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def test_profile_covers_batch_and_sequence_ranges_and_keeps_fixed_axes():
    signature = GraphSignature(("history_vectors", "history_mask"), {},
                               {"history_vectors": {0: "batch", 1: "history"},
                                "history_mask": {0: "batch", 1: "history"}})
    example = {"history_vectors": np.zeros((2, 5, 16), np.float32), "history_mask": np.ones((2, 5), np.int64)}
    shapes = profile_shapes(signature, example, max_batch=256, opt_batch=32, max_lengths={"history": 50},
                            opt_length=64)
    assert shapes["history_vectors"] == ((1, 1, 16), (32, 50, 16), (256, 50, 16))
    assert shapes["history_mask"] == ((1, 1), (32, 50), (256, 50))
    with pytest.raises(ValueError, match="no maximum for axis 'history'"):
        profile_shapes(signature, example, max_batch=8, opt_batch=4, max_lengths={}, opt_length=8)


@pytest.mark.skipif(not HAVE_TENSORRT, reason="needs the tensorrt package and a CUDA GPU")
def test_tensorrt_engine_builds_and_matches_onnx(text_artifact, fresh_copy):
    from fusionrec.compile import compile_artifact, load_compiled

    path = fresh_copy(text_artifact)
    record = compile_artifact(path, backend="tensorrt", precision="fp16", report=lambda line: None)
    assert all(c["passed"] for c in record["parity"])
    runtime = load_compiled(path, strict=True)
    assert runtime.backend == "tensorrt"
    assert runtime.run(runtime.inputs.tokens(["star war", "cat"])).shape == (2, 16)
