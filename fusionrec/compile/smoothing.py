"""SmoothQuant-style smoothing of an ONNX graph before dynamic int8 (Xiao et al. 2023, arXiv 2211.10438).

Why: ORT's dynamic quantiser gives each MatMul's activation one uint8 scale per tensor, and an LM's activations
carry a few input channels far larger than the rest (SmolLM2's `down_proj` inputs reach 331x their RMS), so
one scale rounds every other channel to a handful of steps. Weights are quantised per output column and are
smooth along their input axis. Dividing activation channel k by s_k and multiplying weight row k by s_k moves
part of that range from the activation to the weight, where it costs less, and leaves the product unchanged:
X W = (X diag(1/s)) (diag(s) W). With s_k = max|X_k|^alpha / max_n|W_kn|^(1 - alpha) both sides end up with the
same per-channel peak at alpha 0.5.

Only activations with outliers are smoothed (`SMOOTH_MIN_RATIO`). Each gets one inserted Mul by a constant 1/s,
shared by every product that reads it (the q/k/v projections of one layer read one normed input, so one s serves
them all, computed from the largest of their weight rows). The scales are rounded to powers of two, so X / s and
s W are exact in floating point and the smoothed fp32 graph computes exactly what the original does (up to the
order ORT sums in).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from onnx import ModelProto, NodeProto

log = logging.getLogger(__name__)

SMOOTH_ALPHA = 0.5  # the paper's default: activation and weight peaks meet in the middle
# s is clamped to 2^-SCALE_EXPONENT .. 2^SCALE_EXPONENT: a channel that is nearly dead (or a weight row that
# is) would otherwise get a scale that overflows the other side for no gain.
SCALE_EXPONENT = 14
# Only activations whose max|x| / rms(x) exceeds this are smoothed. A Gaussian-like activation measures ~4-5
# here; smoothing it gains nothing on the activation side and makes weight rows uneven, which costs per-column
# weight scales precision (on the tiny test LMs, max ratio 8, smoothing everything dropped NDCG@10 by 1.9%
# where plain int8 lost 0%). On the fused MiniLM + MPNet + SmolLM2 tower ~97% of MatMul inputs are above 10.
SMOOTH_MIN_RATIO = 10.0


@dataclass(frozen=True)
class ChannelStats:
    """One activation's statistics per input channel, over every row of a measured run: enough to know its
    outlier ratio before and after any smoothing (dividing channel k by s_k divides peak_k by s_k and
    power_k by s_k^2; every channel holds the same number of values, so the tensor's mean square is the
    mean of `power`)."""

    peak: np.ndarray  # (K,) max |x_k|
    power: np.ndarray  # (K,) mean x_k^2

    @classmethod
    def of(cls, x: np.ndarray) -> ChannelStats:
        """Statistics of an activation [..., K] (the last axis is the one a MatMul contracts)."""
        x = np.asarray(x, dtype=np.float64)
        channels = x.shape[-1] if x.ndim else 1
        rows = x.reshape(-1, channels)  # [..., K] -> (rows, K)
        if rows.shape[0] == 0:
            return cls(np.zeros(channels), np.zeros(channels))
        return cls(np.abs(rows).max(axis=0), np.mean(rows * rows, axis=0))

    def ratio(self) -> float:
        """max|x| / rms(x) of the whole tensor; 0 for an all-zero one."""
        rms = float(np.sqrt(np.mean(self.power))) if self.power.size else 0.0
        return float(self.peak.max()) / rms if rms > 0 else 0.0

    def divided(self, scales: np.ndarray) -> ChannelStats:
        """The statistics of x / s (s per channel)."""
        scales = np.asarray(scales, dtype=np.float64)
        return ChannelStats(self.peak / scales, self.power / (scales * scales))


def smoothing_scales(peak: np.ndarray, weight_peak: np.ndarray, alpha: float = SMOOTH_ALPHA) -> np.ndarray:
    """s_k = peak_k^alpha / weight_peak_k^(1 - alpha), rounded to a power of two and clamped; 1 for a channel
    whose activation or weight row is all zero (nothing to balance), as float32 (K,).

    Args:
        peak: (K,) max |x_k| of the activation.
        weight_peak: (K,) max_n |W_kn| of the weight(s) reading it.
        alpha: how much of the activation's range moves to the weight, 0..1.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smooth alpha must be in [0, 1], got {alpha}")
    peak, weight_peak = np.asarray(peak, np.float64), np.asarray(weight_peak, np.float64)
    if peak.shape != weight_peak.shape:
        raise ValueError(f"activation channels {peak.shape} and weight rows {weight_peak.shape} differ")
    usable = (peak > 0) & (weight_peak > 0) & np.isfinite(peak) & np.isfinite(weight_peak)
    exponent = np.zeros(peak.shape)
    exponent[usable] = alpha * np.log2(peak[usable]) - (1.0 - alpha) * np.log2(weight_peak[usable])
    exponent = np.clip(np.round(exponent), -SCALE_EXPONENT, SCALE_EXPONENT)
    return np.exp2(exponent).astype(np.float32)


def smooth(model: ModelProto, channels: dict[str, ChannelStats], alpha: float = SMOOTH_ALPHA,
           min_ratio: float = SMOOTH_MIN_RATIO) -> dict[str, ChannelStats]:
    """Smooth the MatMul/Gemm nodes named in `channels` of an onnx.ModelProto in place; returns the statistics
    of every named node's activation in the smoothed graph (all other activations are unchanged, since every
    product is).

    Args:
        model: the fp32 graph; each named node has a float32 2-D initializer as its second input (a Gemm
            may have transB, not transA).
        channels: {node name: statistics of its activation}, measured on the unsmoothed graph.
        alpha: see `smoothing_scales`.
        min_ratio: activations with max|x| / rms(x) at or below this are left as they are.
    Raises:
        ValueError: a name that is not such a node, or statistics whose width is not the weight's.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    by_name = {n.name: n for n in graph.node if n.name}
    readers: dict[str, list] = defaultdict(list)  # activation name -> the named nodes reading it
    for name in channels:
        if not name:  # an unnamed node cannot be told apart (nor excluded from int8 by name): left as is
            continue
        node = by_name.get(name)
        if node is None or node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 \
                or node.input[1] not in weights or len(weights[node.input[1]].dims) != 2:
            raise ValueError(f"cannot smooth node {name!r}: not a MatMul/Gemm with a 2-D initializer weight")
        if node.op_type == "Gemm" and _attribute(node, "transA", 0):
            raise ValueError(f"cannot smooth Gemm {name!r}: transA=1 contracts the activation's first axis")
        readers[node.input[0]].append(node)
    uses = Counter(i for n in graph.node for i in n.input)
    taken = {*uses, *weights, *(o for n in graph.node for o in n.output), *(i.name for i in graph.input),
             *(n.name for n in graph.node)}
    position = {n.name: i for i, n in enumerate(graph.node) if n.name}
    inserted: dict[int, list] = defaultdict(list)  # node index -> Mul nodes to place before it
    smoothed = dict(channels)
    for activation, nodes in readers.items():
        stats = channels[nodes[0].name]
        if stats.ratio() <= min_ratio:
            continue
        if any(weights[n.input[1]].data_type != TensorProto.FLOAT for n in nodes):
            log.debug("smoothing: %s is read by a non-float32 weight; left as is", activation)
            continue
        matrices = {n.name: _as_k_by_n(numpy_helper.to_array(weights[n.input[1]]), n) for n in nodes}
        widths = {name: m.shape[0] for name, m in matrices.items()}
        if any(w != stats.peak.shape[0] for w in widths.values()):
            raise ValueError(f"activation {activation!r} has {stats.peak.shape[0]} channels but its weights "
                             f"have {widths} input rows")
        weight_peak = np.max([np.abs(m).max(axis=1) for m in matrices.values()], axis=0)  # (K,)
        scales = smoothing_scales(stats.peak, weight_peak, alpha)
        if np.all(scales == 1.0):
            continue
        for node in nodes:
            scaled = matrices[node.name] * scales[:, None]  # diag(s) W, (K, N)
            if _attribute(node, "transB", 0):
                scaled = scaled.T  # back to the stored (N, K)
            name = node.input[1]
            if uses[name] > 1:  # shared (tied, or read by another activation): smooth a copy for this node
                uses[name] -= 1
                name = _fresh(f"{name}_smoothed", taken)
                graph.initializer.append(numpy_helper.from_array(scaled, name))
                node.input[1] = name
            else:
                weights[name].CopyFrom(numpy_helper.from_array(scaled, name))
        inverse = _fresh(f"{activation}_smooth_scale", taken)
        output = _fresh(f"{activation}_smoothed", taken)
        graph.initializer.append(numpy_helper.from_array((1.0 / scales).astype(np.float32), inverse))
        mul = helper.make_node("Mul", [activation, inverse], [output], name=_fresh(f"{activation}_smooth", taken))
        inserted[min(position[n.name] for n in nodes)].append(mul)
        for node in nodes:
            node.input[0] = output
            smoothed[node.name] = stats.divided(scales)
    if inserted:
        order: list[NodeProto] = []
        for index, node in enumerate(graph.node):
            order.extend(inserted.get(index, ()))
            order.append(node)
        detached = []  # copies: the originals go with the repeated field's contents
        for node in order:
            copy = type(node)()
            copy.CopyFrom(node)
            detached.append(copy)
        del graph.node[:]
        graph.node.extend(detached)
    log.info("smoothing: %d activations smoothed (alpha %g)", sum(len(v) for v in inserted.values()), alpha)
    return smoothed


def smooth_file(source: Path, dest: Path, channels: dict[str, ChannelStats], alpha: float = SMOOTH_ALPHA,
                min_ratio: float = SMOOTH_MIN_RATIO) -> dict[str, ChannelStats]:
    """`smooth` the graph at `source` into `dest` (the source file is left as it is)."""
    import onnx

    model = onnx.load(str(source))
    smoothed = smooth(model, channels, alpha, min_ratio)
    dest.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dest))
    return smoothed


def _as_k_by_n(weight: np.ndarray, node: NodeProto) -> np.ndarray:
    """The weight as (K, N), K the axis contracted with the activation's channels."""
    return weight.T if node.op_type == "Gemm" and _attribute(node, "transB", 0) else weight  # (N, K) -> (K, N)


def _attribute(node: NodeProto, name: str, default: Any) -> Any:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _fresh(base: str, taken: set[str]) -> str:
    """A tensor/node name not used in the graph yet (and now reserved)."""
    name, n = base, 0
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name
