"""SmoothQuant-style smoothing before int8. On a hand-built graph (one activation read by a MatMul, a Gemm
with transB and a plain Gemm; a weight tied between two products): the smoothed fp32 graph computes what the
original does, one Mul per activation is shared by its readers, every weight is scaled along the axis it
contracts with, and the smoothed statistics predict what a fresh run of the smoothed graph measures. On a
graph with one outlier channel: smoothed int8 is several times closer to fp32 than plain int8 with the same
(empty) set of fp32 products. On the tiny bert + mpnet + llama tower: the exported graph smooths exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fusionrec.compile.onnxruntime_backend import (
    activation_channels,
    int8_coverage,
    outlier_ratios,
    quantize_int8,
)
from fusionrec.compile.smoothing import (
    SCALE_EXPONENT,
    SMOOTH_MIN_RATIO,
    ChannelStats,
    smooth,
    smooth_file,
    smoothing_scales,
)

from helpers import export_tiny_user_tower

WIDTH = 64


def save(nodes, weights: dict[str, np.ndarray], outputs: dict[str, int], path: Path) -> Path:
    graph = helper.make_graph(nodes, "smoothing",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width])
                               for name, width in outputs.items()],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def branching_graph(path: Path) -> dict[str, np.ndarray]:
    """x is read by MatMul "a" (64 -> 48), Gemm "b" (transB, 64 -> 32, with bias) and Gemm "c" (64 -> 40);
    relu(a) and sigmoid(a) are read by "d" and "e", which share (tie) one weight. Non-square weights, so a
    weight scaled along the wrong axis cannot go unnoticed."""
    rng = np.random.default_rng(0)
    weights = {"wa": rng.normal(size=(WIDTH, 48)) / 8, "wb": rng.normal(size=(32, WIDTH)) / 8,
               "bias": rng.normal(size=32), "wc": rng.normal(size=(WIDTH, 40)) / 8,
               "tied": rng.normal(size=(48, 24)) / 8}
    weights = {k: v.astype(np.float32) for k, v in weights.items()}
    weights["wb"][:, 7] *= 20  # one large weight row (input channel 7 of "b")
    nodes = [helper.make_node("MatMul", ["x", "wa"], ["ha"], name="a"),
             helper.make_node("Gemm", ["x", "wb", "bias"], ["hb"], name="b", transB=1),
             helper.make_node("Gemm", ["x", "wc"], ["hc"], name="c"),
             helper.make_node("Relu", ["ha"], ["r"], name="relu"),
             helper.make_node("Sigmoid", ["ha"], ["g"], name="sigmoid"),
             helper.make_node("MatMul", ["r", "tied"], ["hd"], name="d"),
             helper.make_node("MatMul", ["g", "tied"], ["he"], name="e")]
    save(nodes, weights, {"hb": 32, "hc": 40, "hd": 24, "he": 24}, path)
    return weights


def channel_outliers(rows: int = 256, seed: int = 1, massive: bool = True) -> np.ndarray:
    """Activations whose channel 5 is ~100x the others on every row (an LM's outlier channel), plus (if
    `massive`) one value 800x their RMS on one row."""
    x = np.random.default_rng(seed).normal(size=(rows, WIDTH)).astype(np.float32)
    x[:, 5] *= 100.0
    if massive:
        x[0, 9] = 800.0
    return x


def run(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_scales_balance_activation_and_weight_peaks_in_powers_of_two():
    peak, weight_peak = np.array([400.0, 4.0, 0.0, 3.0, 1e12]), np.array([0.25, 1.0, 0.5, 0.0, 1e-12])
    scales = smoothing_scales(peak, weight_peak, 0.5)
    # sqrt(400 / 0.25) = 40 -> 32; sqrt(4 / 1) = 2; no activation / no weight -> 1; 1e12 -> clamped
    np.testing.assert_array_equal(scales, [32.0, 2.0, 1.0, 1.0, 2.0 ** SCALE_EXPONENT])
    assert scales.dtype == np.float32
    np.testing.assert_array_equal(smoothing_scales(peak[:2], weight_peak[:2], 1.0), [512.0, 4.0])  # peak -> 2^k
    with pytest.raises(ValueError, match="smooth alpha must be in \\[0, 1\\], got 1.5"):
        smoothing_scales(peak, weight_peak, 1.5)
    with pytest.raises(ValueError, match=r"activation channels \(5,\) and weight rows \(2,\) differ"):
        smoothing_scales(peak, weight_peak[:2])


def test_channel_stats_give_the_ratio_of_the_tensor_and_of_any_smoothing_of_it():
    x = channel_outliers()
    stats = ChannelStats.of(x.reshape(4, 64, WIDTH))  # [..., K]: every leading axis is rows
    scales = np.exp2(np.random.default_rng(0).integers(-3, 4, size=WIDTH))
    assert stats.ratio() == pytest.approx(np.abs(x).max() / np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    divided = x / scales
    assert stats.divided(scales).ratio() == pytest.approx(np.abs(divided).max() / np.sqrt(np.mean(divided ** 2)))
    assert ChannelStats.of(np.zeros((0, WIDTH))).ratio() == 0.0


def test_the_smoothed_fp32_graph_computes_the_same_outputs(tmp_path):
    source = tmp_path / "fp32.onnx"
    weights = branching_graph(source)
    x = channel_outliers()
    channels = activation_channels(source, {"x": x})
    assert channels["a"] is channels["b"] is channels["c"]  # one activation, one measurement
    assert min(channels["a"].ratio(), channels["d"].ratio()) > SMOOTH_MIN_RATIO > channels["e"].ratio()
    default = smooth_file(source, tmp_path / "default.onnx", channels, 0.5)
    assert sorted(m.input[0] for m in onnx.load(str(tmp_path / "default.onnx")).graph.node
                  if m.op_type == "Mul") == ["r", "x"]
    assert default["e"] is channels["e"]  # sigmoid(a) has no outliers: left as it is
    dest = tmp_path / "smoothed.onnx"
    smoothed = smooth_file(source, dest, channels, 0.5, min_ratio=0.0)  # every activation, to test tied weights
    for rows in (x, channel_outliers(seed=2)):  # also rows it was not measured on
        before, after = run(source, rows), run(dest, rows)
        for name in before:
            assert relative_error(after[name], before[name]) < 1e-5, name
    model = onnx.load(str(dest))
    muls = [n for n in model.graph.node if n.op_type == "Mul"]
    assert sorted(m.input[0] for m in muls) == ["g", "r", "x"]  # one Mul per activation, shared by its readers
    stored = initializers(dest)
    scales = {m.input[0]: 1.0 / stored[m.input[1]] for m in muls}
    s = scales["x"]
    # every reader of x is scaled along the axis it contracts with x's channels
    np.testing.assert_array_equal(stored["wa"], weights["wa"] * s[:, None])
    np.testing.assert_array_equal(stored["wb"], weights["wb"] * s[None, :])  # transB: (N, K)
    np.testing.assert_array_equal(stored["wc"], weights["wc"] * s[:, None])
    np.testing.assert_array_equal(stored["bias"], weights["bias"])
    # one s for all three: from x's peaks and the largest weight row among them (b's row 7)
    weight_peak = np.max([np.abs(weights["wa"]).max(1), np.abs(weights["wb"]).max(0), np.abs(weights["wc"]).max(1)],
                         axis=0)
    np.testing.assert_array_equal(s, smoothing_scales(np.abs(x).max(0), weight_peak, 0.5))
    assert s[5] > 8 and s[7] < s[6]  # the outlier channel is shrunk most; the big weight row holds 7 back
    # the tied weight: each product got its own smoothed copy
    d, e = (next(n for n in model.graph.node if n.name == name) for name in ("d", "e"))
    assert d.input[1] != e.input[1]
    np.testing.assert_array_equal(stored[d.input[1]], weights["tied"] * scales["r"][:, None])
    np.testing.assert_array_equal(stored[e.input[1]], weights["tied"] * scales["g"][:, None])
    # the statistics smooth() derives are what a run of the smoothed graph measures
    assert outlier_ratios(dest, channels=smoothed) == pytest.approx(outlier_ratios(dest, {"x": x}), rel=1e-5)
    # channel peaks are evened out (the tensor's max/rms drops less: the outlier channel also dominates its rms)
    spread = {name: stats.peak.max() / np.median(stats.peak) for name, stats in (("before", channels["a"]),
                                                                                 ("after", smoothed["a"]))}
    assert spread["after"] < spread["before"] / 5 and smoothed["a"].ratio() < channels["a"].ratio()


def test_smoothing_refuses_nodes_it_cannot_rewrite(tmp_path):
    source = tmp_path / "fp32.onnx"
    branching_graph(source)
    channels = activation_channels(source, {"x": channel_outliers()})
    model = onnx.load(str(source))
    with pytest.raises(ValueError, match="cannot smooth node 'relu'"):
        smooth(model, {"relu": channels["a"]})
    with pytest.raises(ValueError, match=r"activation 'x' has 3 channels but its weights have \{'a': 64\}"):
        smooth(model, {"a": ChannelStats(np.array([90.0, 1.0, 1.0]), np.ones(3))})


def one_matmul_graph(path: Path) -> Path:
    weight = (np.random.default_rng(0).normal(size=(WIDTH, WIDTH)) / 8).astype(np.float32)
    return save([helper.make_node("MatMul", ["x", "w"], ["y"], name="only")], {"w": weight}, {"y": WIDTH}, path)


def test_smoothed_int8_is_much_closer_to_fp32_than_plain_int8_with_the_same_fp32_products(tmp_path):
    """The channel outlier sets plain int8's one activation scale, so the other 63 channels get a few steps
    each (measured: 5.6% error vs 0.95% smoothed)."""
    source = one_matmul_graph(tmp_path / "fp32.onnx")
    x = channel_outliers(massive=False)
    plain = quantize_int8(source, tmp_path / "plain" / "int8.onnx", {"x": x}, outlier_ratio=1e9)
    smoothed = quantize_int8(source, tmp_path / "smoothed" / "int8.onnx", {"x": x}, outlier_ratio=1e9,
                             smooth_alpha=0.5)
    assert int8_coverage(plain) == int8_coverage(smoothed) == (1, 0)  # the product is quantised in both
    assert [p.name for p in smoothed.parent.iterdir()] == ["int8.onnx"]  # the smoothed fp32 temp is gone
    other = channel_outliers(seed=2, massive=False)
    expected = run(source, other)["y"]
    plain_error, smoothed_error = (float(np.linalg.norm(run(path, other)["y"] - expected) / np.linalg.norm(expected))
                                   for path in (plain, smoothed))
    assert smoothed_error < plain_error / 3, (smoothed_error, plain_error)


def test_smoothing_needs_examples_and_not_unsmoothed_ratios(tmp_path):
    source = one_matmul_graph(tmp_path / "fp32.onnx")
    x = channel_outliers()
    with pytest.raises(ValueError, match="smooth_alpha needs example inputs .* example=False, ratios=False"):
        quantize_int8(source, tmp_path / "int8.onnx", smooth_alpha=0.5)
    ratios = outlier_ratios(source, {"x": x})
    with pytest.raises(ValueError, match="example=True, ratios=True"):
        quantize_int8(source, tmp_path / "int8.onnx", {"x": x}, ratios=ratios, smooth_alpha=0.5)
    with pytest.raises(ValueError, match="smooth alpha must be in"):
        quantize_int8(source, tmp_path / "int8.onnx", {"x": x}, smooth_alpha=-0.1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32.onnx"]


def test_the_tiny_fused_tower_smooths_exactly(text_artifact, tmp_path):
    """The real export path: bert + mpnet + llama user tower, where MatMuls and Gemms share activations."""
    from fusionrec.compile.onnxruntime_backend import OnnxRuntime
    source, example, other = export_tiny_user_tower(text_artifact, tmp_path)
    dest = tmp_path / "smoothed.onnx"
    channels = activation_channels(source, example)
    smooth_file(source, dest, channels, 0.5, min_ratio=0.0)  # no outliers in tiny random LMs: smooth them all
    muls = sum(n.op_type == "Mul" for n in onnx.load(str(dest)).graph.node) \
        - sum(n.op_type == "Mul" for n in onnx.load(str(source)).graph.node)
    assert 0 < muls < len(channels)  # readers of one activation share its Mul
    fp32, smoothed = OnnxRuntime(source, threads=1).run(other), OnnxRuntime(dest, threads=1).run(other)
    assert relative_error(smoothed, fp32) < 1e-5
    int8 = OnnxRuntime(quantize_int8(source, tmp_path / "int8" / "encoder.onnx", example, smooth_alpha=0.5),
                       threads=1).run(other)
    cosine = np.sum(int8 * fp32, axis=1) / np.linalg.norm(int8, axis=1) / np.linalg.norm(fp32, axis=1)
    assert cosine.min() > 0.99
