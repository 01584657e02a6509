"""SLERP: spherical linear interpolation between exactly two checkpoints, tensor by tensor.

Shoemake, "Animating rotation with quaternion curves", SIGGRAPH 1985. Each tensor is treated as one flat
vector; the interpolation follows the great circle between the two directions, so two equal-norm tensors
give an interpolant of the same norm (a linear blend of two diverged weight vectors shrinks it). When the
vectors are (anti)parallel, or one is zero, the angle is ill-defined and the method falls back to a linear blend.

`tFilters` gives different tensors different `t`: a mapping from a regular expression (a plain substring such
as `attention` or `mlp` works as one) to `t`. A tensor takes the `t` of the first pattern found in its name,
else the method's `t`, so attention can lean on one model while the MLPs lean on the other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from fusionrec.model.merge.base import MergeDetail, MergeMethod

# |cos| above this counts as colinear: sin(theta) is then too small to divide by safely.
COLINEAR_COS = 0.9995
_ZERO_NORM = 1e-12


class SlerpMerge(MergeMethod):
    def name(self) -> str:
        return "slerp"

    def pretty_name(self) -> str:
        return "SLERP"

    def reference_url(self) -> str:
        return "https://doi.org/10.1145/325165.325242"

    def t_for(self, name: str, params: Mapping[str, Any]) -> float:
        """The interpolation factor used for the tensor called `name`."""
        for pattern, t in params.get("tFilters") or ():
            if pattern.search(name):
                return t
        return params["t"]

    def _merge(
        self,
        name: str,
        tensors: list[torch.Tensor],
        base: torch.Tensor | None,
        weights: list[float],
        params: Mapping[str, Any],
    ) -> tuple[torch.Tensor, MergeDetail]:
        if len(tensors) != 2:
            raise ValueError(f"{name}: slerp interpolates exactly two tensors, got {len(tensors)}")
        return slerp(self.t_for(name, params), tensors[0], tensors[1]), MergeDetail()


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Interpolate two same-shape float tensors along the great circle; linear when (near) colinear."""
    a, b = v0.reshape(-1), v1.reshape(-1)  # (numel,)
    norm_a, norm_b = float(a.norm()), float(b.norm())
    if norm_a < _ZERO_NORM or norm_b < _ZERO_NORM:
        return torch.lerp(v0, v1, t)
    cos = max(-1.0, min(1.0, float(torch.dot(a, b)) / (norm_a * norm_b)))
    if abs(cos) > COLINEAR_COS:
        return torch.lerp(v0, v1, t)
    theta = math.acos(cos)
    sin_theta = math.sin(theta)
    return (math.sin((1.0 - t) * theta) / sin_theta) * v0 + (math.sin(t * theta) / sin_theta) * v1

