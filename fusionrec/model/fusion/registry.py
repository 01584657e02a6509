"""Every fusion method, by the name `fusion.method` uses in a spec. Register new methods here, and only here."""

from __future__ import annotations

from collections.abc import Sequence

from fusionrec.model.fusion.attention import AttentionFusion
from fusionrec.model.fusion.base import FusionMethod
from fusionrec.model.fusion.concat_mlp import ConcatMLPFusion
from fusionrec.model.fusion.gating import GatingFusion
from fusionrec.model.fusion.weighted import WeightedFusion
from fusionrec.spec import FusionSpec

FUSION_METHODS: dict[str, type[FusionMethod]] = {
    cls.name: cls for cls in (WeightedFusion, AttentionFusion, GatingFusion, ConcatMLPFusion)
}


def build_fusion(spec: FusionSpec, model_names: Sequence[str], *, use_context: bool = False) -> FusionMethod:
    """The fusion module `spec.method` names, for the encoders `model_names` (the order of the M axis).

    `use_context=True` builds a module that conditions on a context vector [B, D] in every forward call
    (attention, gating and concat_mlp; weighted has global weights and refuses it).
    """
    try:
        cls = FUSION_METHODS[spec.method]
    except KeyError:
        raise ValueError(
            f"fusion.method {spec.method!r} is not registered; known methods: {sorted(FUSION_METHODS)}"
        ) from None
    return cls(spec, model_names, use_context=use_context)
