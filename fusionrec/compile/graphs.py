"""The computations serving runs, cut out of a `FusedRecommender` as plain tensor-in, tensor-out modules.

An exporter (ONNX, TensorRT, torch.compile) needs a forward over tensors only; the fused model's own forward
takes item indices and Python lists of histories and reads cached catalogue buffers. These wrappers re-run
the same submodules (the LM, pooling, standardisation, projection, fusion, adapter or sequence encoder) on
explicit inputs, so a compiled graph computes exactly what `full_sort_predict` computes.

Graphs:
    "user": the user tower. Text tower: token ids + masks per encoder -> [B, D]. Sequence tower: the history's
        item vectors [B, L, D] + mask [B, L] -> [B, D] (item vectors come from item_index.npy).
    "item": the item tower (catalogue refreshes): token ids + masks per encoder (+ item indices for the
        hybrid's ID embedding) -> [B, D].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from fusionrec.model.fused import FusedRecommender
from fusionrec.model.towers import UNKNOWN_FEEDBACK, VECTOR_TOWERS, TextUserTower

GRAPHS = ("user", "item")
OUTPUT_NAME = "vectors"


@dataclass(frozen=True)
class GraphSignature:
    """Input names in call order, their dtypes and which axes are dynamic (name -> {axis: symbol})."""

    inputs: tuple[str, ...]
    dtypes: dict[str, str]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    text_encoders: tuple[str, ...] = ()  # encoders whose `<name>_input_ids` / `<name>_attention_mask` it takes
    limits: dict[str, int] = field(default_factory=dict)  # longest value of each length axis ("tokens_<name>")

    def as_json(self) -> dict:
        return {"inputs": list(self.inputs), "dtypes": self.dtypes, "text_encoders": list(self.text_encoders),
                "dynamic_axes": {k: {str(a): s for a, s in v.items()} for k, v in self.dynamic_axes.items()},
                "limits": self.limits}


def token_names(encoder: str) -> tuple[str, str]:
    return f"{encoder}_input_ids", f"{encoder}_attention_mask"


class TextTowerGraph(nn.Module):
    """Token ids and masks of every encoder -> fused vectors [B, D] (user text tower or item tower)."""

    def __init__(self, model: FusedRecommender, kind: str) -> None:
        super().__init__()
        self.items = model.items
        self.kind = kind
        tower = model.user_tower  # a text tower whenever kind is "user": build_graph sends sequence towers elsewhere
        self.adapter = tower.adapter if kind == "user" and isinstance(tower, TextUserTower) else None
        self.id_embedding = model.items.id_embedding if kind == "item" else None
        self.user_offset = model.user_offset if kind == "user" and model.knows_users else None

    def forward(self, *tensors: Tensor) -> Tensor:
        n = len(self.items.encoders)
        projected = []
        for m in range(n):
            encoder = self.items._encoder(m)
            ids, mask = tensors[2 * m], tensors[2 * m + 1]  # (B, T_m) each
            projected.append(self.items._project(m, encoder.pool_tokens(ids, mask)))  # (B, D)
        fused = self.items.fusion(torch.stack(projected, dim=1))  # (B, M, D) -> (B, D)
        extra = tensors[2 * n:]
        if self.adapter is not None:
            fused = self.adapter(fused)
        if self.id_embedding is not None:
            fused = fused + self.id_embedding(extra[0])  # extra[0]: (B,) item indices
        if self.user_offset is not None:
            fused = fused + self.user_offset(extra[0])  # extra[0]: (B,) user indices
        return fused


class SequenceTowerGraph(nn.Module):
    """History item vectors [B, L, D] and an int mask [B, L] -> user vectors [B, D] (sequence or pooled tower)."""

    def __init__(self, model: FusedRecommender) -> None:
        super().__init__()
        self.tower = model.user_tower
        self.user_offset = model.user_offset if model.knows_users else None
        # Pointwise models add a past-label embedding to each history item; serving knows no labels, so every
        # slot gets the "unknown" one, as FusedRecommender.user_vectors does.
        self.feedback = model.feedback

    def forward(self, vectors: Tensor, mask: Tensor, *extra: Tensor) -> Tensor:
        if self.feedback is not None:
            vectors = vectors + self.feedback.weight[UNKNOWN_FEEDBACK]  # [B, L, D] + [D]
        out = self.tower(vectors, mask > 0)  # (B, L, D) -> (B, D)
        if self.user_offset is not None:
            out = out + self.user_offset(extra[0])  # extra[0]: (B,) user indices
        return out


def build_graph(model: FusedRecommender, kind: str) -> tuple[nn.Module, GraphSignature]:
    """The wrapper module and its signature for graph `kind` ("user" or "item"), in eval mode."""
    if kind not in GRAPHS:
        raise ValueError(f"graph must be one of {GRAPHS}, got {kind!r}")
    if kind == "user" and isinstance(model.user_tower, VECTOR_TOWERS):
        module: nn.Module = SequenceTowerGraph(model)
        inputs = ["history_vectors", "history_mask"]
        dtypes = {"history_vectors": "float32", "history_mask": "int64"}
        axes = {"history_vectors": {0: "batch", 1: "history"}, "history_mask": {0: "batch", 1: "history"}}
        names: tuple[str, ...] = ()
    else:
        module = TextTowerGraph(model, kind)
        inputs, dtypes, axes = [], {}, {}
        names = tuple(e.spec.name for e in model.text_encoders())
        for name in names:
            for tensor in token_names(name):
                inputs.append(tensor)
                dtypes[tensor] = "int64"
                axes[tensor] = {0: "batch", 1: f"tokens_{name}"}
    index = None
    if kind == "item" and model.items.id_embedding is not None:
        index = "item_index"
    elif kind == "user" and model.knows_users:
        index = "user_index"
    if index is not None:
        inputs.append(index)
        dtypes[index] = "int64"
        axes[index] = {0: "batch"}
    axes[OUTPUT_NAME] = {0: "batch"}
    module.eval()
    return module, GraphSignature(tuple(inputs), dtypes, axes, names, axis_limits(model))


def axis_limits(model: FusedRecommender) -> dict[str, int]:
    """The longest value of each length axis (tokens per encoder, items per history): what an engine's
    shape profile or a CUDA graph bucket may grow to, and no further (position tables end there)."""
    limits = {f"tokens_{e.spec.name}": e.max_length for e in model.text_encoders()}
    limits["history"] = model.config.history_length
    return limits
