"""ONNX Runtime: fp32 graphs as exported, int8 by dynamic quantisation (weights int8, activations quantised
per batch at run time), which needs no calibration data and suits the LM's MatMul-heavy graph on CPU.

Dynamic quantisation rounds a whole activation tensor with one scale. That is harmless for most of an LM but
ruins the few products whose input holds a value hundreds of times its RMS (the "massive activations" of
SmolLM2's `down_proj` inputs on some layers, MPNet's FFN `output.dense`): quantising every MatMul of the fused
MiniLM + MPNet + SmolLM2 tower dropped validation NDCG@10 by 42%. So int8 first runs the fp32 graph on the
compile's example rows, measures each MatMul's outlier ratio max|x| / rms(x), and keeps the products above
`OUTLIER_RATIO` in fp32 (15 of 320 MatMuls of that user tower, which then runs batch 32 2.4x faster than
fp32 instead of 2.9x, with 0.93 instead of 0.52 top-10 overlap with fp32's rankings). Weights are quantised
per output column (per channel): no slower at run time, and closer to fp32 than one scale per weight.
Linear layers exported as Gemm (the projections, the user adapter) are measured and kept the same way: the
quantiser rewrites them into MatMuls first.

Keeping products fp32 costs speed, and on a model trained on all 943 users ratio 100 still dropped NDCG@10 by
11.5% while 30 (71 fp32) dropped 1.3%. `smooth_alpha` first moves the activations' channel outliers into
the weights (SmoothQuant, `smoothing`), exactly in fp32, and the outlier ratios are then measured on the
smoothed graph.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fusionrec.choices import BACKEND_PRECISIONS
from fusionrec.compile.export import check_onnx_file
from fusionrec.compile.smoothing import ChannelStats, smooth_file
from fusionrec.errors import UserError

if TYPE_CHECKING:
    import onnxruntime
    from onnx import ModelProto, NodeProto

log = logging.getLogger(__name__)

PRECISIONS = BACKEND_PRECISIONS["onnxruntime"]  # the one table: fusionrec.choices
QUANTIZED_OP = "MatMul"  # the only dense op ORT's dynamic (IntegerOps) quantiser rewrites
# A product whose activation (or a weight column) has max|x| / rms(x) above this keeps fp32. One uint8 step is
# about 2 max / 255, so its rounding noise (step / sqrt(12)) is about ratio / 440 of the RMS: 100 means ~23%
# noise on that product. Chosen on the fused tower's user graph (256 users, top-10 overlap of the catalogue
# ranking with fp32's): every MatMul int8 0.52; ratio 200 kept 8 fp32 for 0.83; 100 kept 15 for 0.93 at 2.4x
# fp32's batch-32 speed; 50 kept ~52 for 0.93-0.94 but ran only 1.7x faster than fp32.
OUTLIER_RATIO = 100.0
# When int8 at OUTLIER_RATIO fails the ranking gate, compile retries with these stricter thresholds in order
# before giving up: each keeps more products fp32 and gains less speed (on the fused user graph, 50 already
# kept ~52 MatMuls for 1.7x instead of 2.4x). On the bench's MiniLM model (50 users) 100 dropped NDCG@10 by
# 26% and 30 (10 of 40 user-graph MatMuls fp32) by 0%.
OUTLIER_LADDER = (OUTLIER_RATIO, 30.0, 10.0)
# Tried before OUTLIER_LADDER, on the graph smoothed at `smoothing.SMOOTH_ALPHA`: smoothing shrinks the
# activation outliers, so fewer products need fp32 for the same quality.
SMOOTHED_LADDER = (OUTLIER_RATIO, 30.0)


def activation_channels(path: Path, example: dict[str, np.ndarray]) -> dict[str, ChannelStats]:
    """{node name: per-channel statistics of its activation} for every MatMul/Gemm that int8 may rewrite
    (`quantizable`), from one fp32 run of the graph at `path` on `example`: the outlier ratios and the
    smoothing scales both come from them. Nodes reading one activation share one entry.

    The graph's outputs are replaced by the activations for that run; the proto is freed once serialised, so
    a 1 GB graph costs about two copies of its weights at a time, not three.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    graph_inputs = [i.name for i in model.graph.input]
    missing = [name for name in graph_inputs if name not in example]
    if missing:
        raise ValueError(f"example inputs {missing} are missing; {path.name} takes {graph_inputs}")
    readers = {node.name: node.input[0] for node in quantizable(model)}
    wanted = sorted(set(readers.values()) - set(graph_inputs))
    del model.graph.output[:]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in wanted)
    blob = model.SerializeToString()
    del model
    options = session_options(0)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # nothing fused away
    session = ort.InferenceSession(blob, sess_options=options, providers=["CPUExecutionProvider"])
    del blob
    feed = {name: np.ascontiguousarray(example[name]) for name in graph_inputs}
    activations = dict(zip(wanted, session.run(wanted, feed))) if wanted else {}
    activations.update(feed)
    stats = {name: ChannelStats.of(activations[name]) for name in set(readers.values())}
    return {node: stats[activation] for node, activation in readers.items()}


def outlier_ratios(path: Path, example: dict[str, np.ndarray] | None = None, *,
                   channels: dict[str, ChannelStats] | None = None) -> dict[str, float]:
    """{node name: outlier ratio} for every MatMul with a constant 2-D weight: the larger of max|x| / rms(x)
    of its activation and of its worst weight column.

    Args:
        path: the fp32 graph (smoothed or not: its weights are read from here).
        example: graph inputs to measure the activations on (one fp32 run, `activation_channels`).
        channels: the activations' statistics measured already (or derived for a smoothed graph by
            `smoothing.smooth`); replaces `example`.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    weights = {t.name: t for t in model.graph.initializer}
    weight_ratios = {}
    for node in quantizable(model):
        weight = numpy_helper.to_array(weights[node.input[1]])
        if node.op_type == "Gemm" and _attributes(node).get("transB", 0):
            weight = weight.T  # (N, K) -> (K, N)
        weight_ratios[node.name] = float(_ratio(weight, axis=0).max())  # (K, N): one scale per column
    del model, weights
    if channels is None:
        if example is None:
            raise ValueError(f"outlier ratios of {path.name} need example inputs or measured channels")
        channels = activation_channels(path, example)
    if set(channels) != set(weight_ratios):
        raise ValueError(f"channels name nodes {sorted(set(channels) ^ set(weight_ratios))[:5]} that do not "
                         f"match {path.name}'s quantisable MatMuls")
    return {name: max(channels[name].ratio(), weight_ratio) for name, weight_ratio in weight_ratios.items()}


def quantizable(model: ModelProto) -> list[NodeProto]:
    """The nodes of an onnx.ModelProto that int8 rewrites per channel: MatMuls with a constant 2-D weight and a
    computed activation (per-channel quantisation of a 1-D weight fails in ORT's quantiser), and the Gemms
    (torch's Linear on 2-D inputs: the projections, the adapter) that the quantiser first turns into such
    MatMuls, named `<gemm>_MatMul` (only alpha = beta = 1 without transA; `replace_gemm_with_matmul`)."""
    shapes = {t.name: len(t.dims) for t in model.graph.initializer}

    def rewritten(node: NodeProto) -> bool:
        if node.op_type == QUANTIZED_OP:
            return True
        attributes = _attributes(node)
        return node.op_type == "Gemm" and attributes.get("alpha", 1.0) == 1.0 \
            and attributes.get("beta", 1.0) == 1.0 and not attributes.get("transA", 0)

    return [n for n in model.graph.node
            if len(n.input) >= 2 and shapes.get(n.input[1]) == 2 and n.input[0] not in shapes and rewritten(n)]


def _attributes(node: NodeProto) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _ratio(x: np.ndarray, axis: int | None = None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return np.zeros(())
    rms = np.sqrt(np.mean(x * x, axis=axis))
    return np.abs(x).max(axis=axis) / np.where(rms > 0, rms, math.inf)


def quantize_int8(source: Path, dest: Path, example: dict[str, np.ndarray] | None = None,
                  outlier_ratio: float = OUTLIER_RATIO, ratios: dict[str, float] | None = None,
                  smooth_alpha: float | None = None) -> Path:
    """Dynamic int8 quantisation (weights QInt8 per channel, activations uint8 per tensor at run time) of the
    MatMuls of an fp32 ONNX graph, except those with outliers (see the module doc).

    Args:
        source, dest: the fp32 graph and where the int8 one goes.
        example: graph inputs (the compile's example rows) on which activations are measured; without it
            every MatMul is quantised, which suits a small BERT and ruins an LLM.
        outlier_ratio: products with an outlier ratio above this stay fp32.
        ratios: `outlier_ratios(source, example)` measured already (a caller trying several thresholds
            measures once: one fp32 run of a 1 GB graph); replaces `example`.
        smooth_alpha: smooth the graph first (`smoothing`, needs `example`); the outlier ratios are then
            those of the smoothed activations and weights. A caller trying several thresholds smooths once
            with `smoothing.smooth_file` and passes the smoothed graph and its ratios instead.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if not outlier_ratio > 0:
        raise ValueError(f"outlier_ratio must be > 0, got {outlier_ratio}")
    if smooth_alpha is not None:
        if ratios is not None or example is None:
            raise ValueError("smooth_alpha needs example inputs (and no ratios: those of the unsmoothed graph "
                             f"do not describe the smoothed one); got example={example is not None}, "
                             f"ratios={ratios is not None}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="smoothed-", dir=dest.parent) as tmp:
            smoothed = Path(tmp) / source.name
            channels = smooth_file(source, smoothed, activation_channels(source, example), smooth_alpha)
            return quantize_int8(smoothed, dest, outlier_ratio=outlier_ratio,
                                 ratios=outlier_ratios(smoothed, channels=channels))
    model = onnx.load(str(source), load_external_data=False)
    candidates = {n.name: n.op_type for n in quantizable(model)}
    others = sorted(n.name for n in model.graph.node if n.op_type == QUANTIZED_OP and n.name not in candidates)
    del model
    if ratios is not None:
        unknown = sorted(set(ratios) - set(candidates))
        if unknown:
            raise ValueError(f"ratios name MatMuls {unknown[:5]} that {source.name} has no quantisable node for")
    elif example is None:
        log.warning("int8 of %s: no example inputs, so activation outliers are not checked", source.name)
        ratios = {name: 0.0 for name in candidates}
    else:
        ratios = outlier_ratios(source, example)
    flagged = sorted(kept_fp32(ratios, outlier_ratio))
    if "" in flagged:  # quantize_dynamic excludes nodes by name only
        log.warning("int8 of %s: unnamed MatMuls with outliers are quantised anyway", source.name)
    # a Gemm is excluded by the name of the MatMul the quantiser makes of it
    keep = sorted({f"{name}_MatMul" if candidates[name] == "Gemm" else name for name in flagged if name}
                  | set(others))
    log.info("int8 of %s: %d of %d MatMuls kept fp32 (outlier ratio > %g)", source.name, len(flagged),
             len(ratios), outlier_ratio)
    dest.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs a generic "consider pre-processing" warning on the root logger
    try:
        # reduce_range: 7-bit weights. x86 CPUs without VNNI (AVX2 only, e.g. older EPYC) multiply u8 x s8 pairs
        # with a saturating 16-bit add, which full-range weights overflow: measured here, 0.13 relative row
        # error on the two-MatMul test graph instead of < 0.05. An artifact may be served on any CPU, so the
        # portable range is the default, whatever the compiling machine has.
        quantize_dynamic(str(source), str(dest), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         op_types_to_quantize=[QUANTIZED_OP], nodes_to_exclude=keep)
    finally:
        root.setLevel(level)
    check_onnx_file(dest)
    return dest


def kept_fp32(ratios: dict[str, float], outlier_ratio: float) -> set[str]:
    """The MatMuls `quantize_int8` keeps in fp32 at `outlier_ratio` for these measured ratios."""
    return {name for name, ratio in ratios.items() if ratio > outlier_ratio}


def int8_coverage(path: Path) -> tuple[int, int]:
    """(quantised, kept fp32) weight MatMuls of a graph written by `quantize_int8`, read from the file itself:
    the speed-up depends on how many products had to stay fp32."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    weights = {t.name for t in model.graph.initializer}
    quantised = sum(n.op_type in ("DynamicQuantizeMatMul", "MatMulInteger") for n in model.graph.node)
    kept = sum(n.op_type == QUANTIZED_OP and n.input[1] in weights for n in model.graph.node)
    return quantised, kept


def session_options(threads: int) -> onnxruntime.SessionOptions:
    """One replica's options: `threads` intra-op threads (0 = ORT's default, all cores), one inter-op thread
    (the graph is a chain), every graph optimisation on."""
    import onnxruntime as ort

    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # warnings about unused initialisers etc. are noise here
    return options


class OnnxRuntime:
    """A compiled graph in one ONNX Runtime session; serving creates one per replica (sessions are
    thread-safe to run, but a replica owns its thread pool).

    Args:
        path: the .onnx file.
        threads: intra-op threads (0 = all cores).
        providers: execution providers, in preference order (default: CUDA when present, then CPU).
    """

    backend = "onnxruntime"

    def __init__(self, path: Path, threads: int = 0, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        check_onnx_file(path)
        available = ort.get_available_providers()
        chosen = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=session_options(threads), providers=chosen)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
            raise UserError(f"ONNX Runtime cannot load {path.name}: {str(exc)[:300]}", field=path.name,
                            fix="recompile the artifact with `fusionrec compile`") from None
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.path = path

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Named numpy inputs -> the graph's single output [B, D] (float32)."""
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise ValueError(f"inputs {missing} are missing; the graph takes {list(self.input_names)}")
        feed = {n: np.ascontiguousarray(inputs[n]) for n in self.input_names}
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float32)
