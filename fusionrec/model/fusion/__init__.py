"""Representation-level fusion of several encoders' pooled embeddings ([B, M, D] -> [B, D])."""

from fusionrec.model.fusion.base import FusionMethod, FusionWeights
from fusionrec.model.fusion.registry import FUSION_METHODS, build_fusion

__all__ = ["FUSION_METHODS", "FusionMethod", "FusionWeights", "build_fusion"]
