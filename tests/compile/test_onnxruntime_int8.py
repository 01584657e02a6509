"""int8 quantisation with outlier-aware exclusions. On a hand-built graph (two MatMuls around a LayerNorm, and
one with a 1-D weight): the outlier ratios are the ones numpy computes, the product whose input holds a massive
activation stays fp32 while the rest is quantised per channel, and keeping it fp32 is what keeps every row of
the output close to fp32. On the tiny bert + mpnet + llama tower: the exported graph quantises and runs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fusionrec.compile.onnxruntime_backend import (
    OUTLIER_RATIO,
    activation_channels,
    int8_coverage,
    outlier_ratios,
    quantize_int8,
)

from helpers import export_tiny_user_tower

WIDTH = 64
QUANTISED_OPS = {"DynamicQuantizeMatMul", "MatMulInteger"}


def ratio(x: np.ndarray, axis: int | None = None) -> np.ndarray:
    x = x.astype(np.float64)
    return np.abs(x).max(axis=axis) / np.sqrt(np.mean(x * x, axis=axis))


def two_matmul_graph(path: Path) -> dict[str, np.ndarray]:
    """x -> MatMul "first" (W1) -> LayerNormalization -> MatMul "second" (W2) -> y, like a block of an LM
    (the norm squashes the outlier, so only "first" sees it); returns the weights."""
    rng = np.random.default_rng(0)
    weights = {"w1": (rng.normal(size=(WIDTH, WIDTH)) / 8).astype(np.float32),
               "gamma": np.ones(WIDTH, np.float32), "beta": np.zeros(WIDTH, np.float32),
               "w2": (rng.normal(size=(WIDTH, WIDTH)) / 8).astype(np.float32)}
    weights["v"] = rng.normal(size=WIDTH).astype(np.float32)  # a 1-D weight, like the fusion's query
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
             helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["n"], name="norm", axis=-1),
             helper.make_node("MatMul", ["n", "w2"], ["y"], name="second"),
             helper.make_node("MatMul", ["y", "v"], ["s"], name="dot")]
    graph = helper.make_graph(nodes, "two_matmuls",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH]),
                               helper.make_tensor_value_info("s", TensorProto.FLOAT, ["batch"])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return weights


def outlier_input(rows: int = 512, seed: int = 1) -> np.ndarray:
    """Normal activations plus one value 3000x their RMS, like an LLM's massive activation on the first token
    (max/rms ~ 180 over 512 x 64 values)."""
    x = np.random.default_rng(seed).normal(size=(rows, WIDTH)).astype(np.float32)
    x[0, 5] = 3000.0
    return x


def row_error(got: np.ndarray, expected: np.ndarray) -> float:
    """The worst row's relative error: each row is one token or user, and a row lost to rounding matters
    even when the outlier row dominates the tensor's maximum."""
    return float((np.linalg.norm(got - expected, axis=1) / np.linalg.norm(expected, axis=1)).max())


def run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def op_of(path: Path) -> dict[str, str]:
    """{node name: op type}, quantised nodes reported under the name of the MatMul they replace."""
    return {n.name: n.op_type for n in onnx.load(str(path)).graph.node}


def test_outlier_ratios_are_max_over_rms_of_activation_or_weight(tmp_path):
    source = tmp_path / "fp32.onnx"
    weights = two_matmul_graph(source)
    x = outlier_input()
    ratios = outlier_ratios(source, {"x": x})
    h = x @ weights["w1"]
    normed = (h - h.mean(1, keepdims=True)) / np.sqrt(h.var(1, keepdims=True) + 1e-5)
    assert set(ratios) == {"first", "second"}  # "dot" has a 1-D weight: never quantised
    columns = {name: ratio(weights[name], axis=0).max() for name in ("w1", "w2")}  # (K, N): one scale per column
    assert ratios["first"] == pytest.approx(max(ratio(x), columns["w1"]), rel=1e-4)  # x is a graph input
    assert ratios["second"] == pytest.approx(max(ratio(normed), columns["w2"]), rel=1e-3)
    assert ratios["first"] > OUTLIER_RATIO > ratios["second"]  # the outlier makes only "first" risky
    assert [o.name for o in onnx.load(str(source)).graph.output] == ["y", "s"]  # the file is not modified
    channels = activation_channels(source, {"x": x})  # what smoothing needs: per-channel peaks
    np.testing.assert_allclose(channels["second"].peak, np.abs(normed).max(axis=0), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(channels["first"].power, np.mean(x.astype(np.float64) ** 2, axis=0), rtol=1e-6)
    assert outlier_ratios(source, channels=channels) == pytest.approx(ratios, rel=1e-6)


def test_a_matmul_with_outliers_stays_fp32_and_the_rest_is_quantised(tmp_path):
    source = tmp_path / "fp32.onnx"
    two_matmul_graph(source)
    x = outlier_input()
    kept = quantize_int8(source, tmp_path / "int8.onnx", {"x": x})
    everything = quantize_int8(source, tmp_path / "all.onnx", {"x": x}, outlier_ratio=1e9)
    ops = op_of(kept)
    assert ops["first"] == ops["dot"] == "MatMul"  # left in fp32, by name
    assert "second" not in ops and QUANTISED_OPS & set(ops.values())
    assert "first" not in op_of(everything)
    scales = [t for t in onnx.load(str(kept)).graph.initializer if t.name.endswith("_scale") and "w2" in t.name]
    assert [list(t.dims) for t in scales] == [[WIDTH]]  # one weight scale per output column
    reference = run(source, x)
    assert row_error(run(kept, x), reference) < 0.05
    assert row_error(run(everything, x), reference) > 0.5  # the outlier ruins the per-tensor scale of "first"
    other = outlier_input(seed=2)
    assert row_error(run(kept, other), run(source, other)) < 0.05  # not just on the rows it was measured on


def test_ratios_measured_once_serve_every_threshold_and_the_file_says_what_was_kept(tmp_path):
    source = tmp_path / "fp32.onnx"
    two_matmul_graph(source)
    ratios = outlier_ratios(source, {"x": outlier_input()})
    strict = quantize_int8(source, tmp_path / "strict.onnx", outlier_ratio=1.0, ratios=ratios)  # no example
    default = quantize_int8(source, tmp_path / "default.onnx", ratios=ratios)
    assert op_of(strict)["first"] == op_of(strict)["second"] == "MatMul"
    assert op_of(default)["first"] == "MatMul" and "second" not in op_of(default)
    # (quantised, kept fp32): "dot" has a 1-D weight and always stays fp32
    assert int8_coverage(strict) == (0, 3) and int8_coverage(default) == (1, 2)
    with pytest.raises(ValueError, match=r"ratios name MatMuls \['third'\]"):
        quantize_int8(source, tmp_path / "bad.onnx", ratios={**ratios, "third": 1.0})


def test_a_linear_exported_as_gemm_is_measured_and_kept_fp32_like_a_matmul(tmp_path):
    """torch exports Linear on 2-D inputs (the projections, the adapter) as Gemm(transB=1), which ORT's
    quantiser turns into a MatMul of its own naming: it must be measured and excluded all the same."""
    rng = np.random.default_rng(0)
    weight = (rng.normal(size=(WIDTH, WIDTH)) / 8).astype(np.float32)  # (N, K): transB
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="linear", transB=1)], "linear",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
                              [numpy_helper.from_array(weight, "w"),
                               numpy_helper.from_array(np.zeros(WIDTH, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    source = tmp_path / "gemm.onnx"
    onnx.save(model, str(source))
    x = outlier_input()
    ratios = outlier_ratios(source, {"x": x})
    assert ratios == {"linear": pytest.approx(max(ratio(x), ratio(weight.T, axis=0).max()), rel=1e-4)}
    kept = quantize_int8(source, tmp_path / "kept.onnx", {"x": x})
    quantised = quantize_int8(source, tmp_path / "all.onnx", {"x": x}, outlier_ratio=1e9)
    assert int8_coverage(kept) == (0, 1) and int8_coverage(quantised) == (1, 0)
    session = ort.InferenceSession(str(kept), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ weight.T, rtol=1e-4, atol=1e-3)


def test_without_an_example_every_matmul_is_quantised_and_says_so(tmp_path, caplog):
    source = tmp_path / "fp32.onnx"
    two_matmul_graph(source)
    with caplog.at_level(logging.WARNING, logger="fusionrec.compile.onnxruntime_backend"):
        dest = quantize_int8(source, tmp_path / "int8.onnx")
    assert not {"first", "second"} & set(op_of(dest))
    assert "activation outliers are not checked" in caplog.text


def test_bad_examples_and_thresholds_are_refused(tmp_path):
    source = tmp_path / "fp32.onnx"
    two_matmul_graph(source)
    with pytest.raises(ValueError, match=r"example inputs \['x'\] are missing"):
        quantize_int8(source, tmp_path / "int8.onnx", {"tokens": np.zeros((2, WIDTH), np.float32)})
    with pytest.raises(ValueError, match="outlier_ratio must be > 0, got 0"):
        quantize_int8(source, tmp_path / "int8.onnx", {"x": outlier_input()}, outlier_ratio=0)
    assert not (tmp_path / "int8.onnx").exists()


def test_the_tiny_fused_tower_quantises_and_still_runs_at_other_shapes(text_artifact, tmp_path):
    """The real export path: bert + mpnet + llama user tower, example rows as compile builds them."""
    from fusionrec.compile.onnxruntime_backend import OnnxRuntime
    source, example, other = export_tiny_user_tower(text_artifact, tmp_path)
    ratios = outlier_ratios(source, example)
    matmuls = {n.name for n in onnx.load(str(source)).graph.node if n.op_type in ("MatMul", "Gemm")}
    assert ratios and set(ratios) <= matmuls and all(np.isfinite(list(ratios.values())))
    dest = quantize_int8(source, tmp_path / "int8" / "encoder.onnx", example)
    kept = {name for name, value in ratios.items() if value > OUTLIER_RATIO}
    ops = op_of(dest)
    assert all("MatMul" in (ops.get(name), ops.get(f"{name}_MatMul")) for name in kept)  # a Gemm as ORT renames it
    assert QUANTISED_OPS & set(ops.values())
    fp32, int8 = OnnxRuntime(source, threads=1).run(other), OnnxRuntime(dest, threads=1).run(other)
    assert int8.shape == fp32.shape and fp32.shape[0] == 3 and np.isfinite(int8).all()
    cosine = np.sum(int8 * fp32, axis=1) / np.linalg.norm(int8, axis=1) / np.linalg.norm(fp32, axis=1)
    assert cosine.min() > 0.99  # measured 0.9999: the tiny random LMs have no massive activations
