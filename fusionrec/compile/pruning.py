"""Structured pruning before compilation: drop the top transformer layers of the encoders.

Why the top layers: a fine-tuned encoder's bottom layers carry the general language features the projection
was trained on, and the top layers are the most task-specific and, in sentence encoders, the most redundant;
dropping them shortens the per-request path linearly. The quality cost is not assumed: `compile` measures
validation NDCG@10 of the pruned graph against the unpruned model and records both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import nn

from fusionrec.errors import UserError
from fusionrec.model.encoders import TextEncoder
from fusionrec.model.fused import FusedRecommender

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)


def layer_stack(backbone: PreTrainedModel) -> nn.ModuleList:
    """The transformer blocks: the first ModuleList as long as the config's num_hidden_layers."""
    config = backbone.config.get_text_config()
    count = getattr(config, "num_hidden_layers", None)
    for module in backbone.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise UserError(f"cannot find the {count} transformer layers of a {config.model_type!r} model to prune",
                    field="prune_layers", fix="use --prune-layers 0 for this encoder")


def check_depth(encoders: Sequence[TextEncoder], n: int) -> None:
    """Every encoder must keep at least one layer; checked for all before any is touched."""
    for encoder in encoders:
        depth = len(layer_stack(encoder.backbone))
        if n >= depth:
            raise UserError(f"prune_layers is {n} but encoder {encoder.spec.name!r} has only {depth} layers",
                            field="prune_layers", fix=f"use at most {depth - 1}")


def drop_top_layers(model: FusedRecommender, n: int, encoders: list[str] | None = None) -> dict[str, list[int]]:
    """Remove the top `n` layers of each named encoder (default: all) in place.

    Returns {encoder: [layers before, layers after]}.
    """
    if n < 0:
        raise UserError(f"prune_layers must be >= 0, got {n}", field="prune_layers")
    names = [e.spec.name for e in model.text_encoders()]
    chosen = names if encoders is None else encoders
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise UserError(f"cannot prune unknown encoders {unknown}; the model has {names}", field="prune_encoders")
    targets = [e for e in model.text_encoders() if e.spec.name in chosen and n > 0]
    check_depth(targets, n)
    report: dict[str, list[int]] = {}
    for encoder in targets:
        layers = layer_stack(encoder.backbone)
        before = len(layers)
        del layers[before - n:]
        config = encoder.backbone.config.get_text_config()
        config.num_hidden_layers = before - n
        if isinstance(getattr(config, "layer_types", None), list):
            config.layer_types = config.layer_types[: before - n]
        report[encoder.spec.name] = [before, before - n]
        log.info("pruned encoder %s: %d -> %d layers", encoder.spec.name, before, before - n)
    return report
