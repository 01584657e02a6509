"""Task-vector merges: task arithmetic, TIES, DARE-linear and DARE-TIES as settings of one class.

All four start from task vectors `tau_i = model_i - base` and add a combined vector back to the base,
scaled by `lambda`. They differ in two independent choices, which is why they are one class:

- sparsification of each task vector: none; magnitude ("trim": keep the top-`density` fraction by |value|,
  TIES); or random (drop each entry with probability 1 - density, optionally rescaling survivors by 1/density
  so the expected task vector is unchanged, DARE);
- combination: a weighted sum (task arithmetic), or TIES' sign consensus: elect each element's sign from the
  summed weighted mass, then take the weighted mean over only the task vectors that agree ("disjoint mean").

Papers: Ilharco et al., "Editing models with task arithmetic", ICLR 2023; Yadav et al., "TIES-Merging:
resolving interference when merging models", NeurIPS 2023; Yu et al., "Language models are Super Mario:
absorbing abilities from homologous models as a free lunch" (DARE), ICML 2024.

Trimming and dropping are done per tensor (not over the whole model as in the TIES paper), so the merge never
needs more than one tensor of every model in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from fusionrec.model.merge.base import MergeDetail, MergeMethod

Sparsify = Literal["none", "magnitude", "random"]


@dataclass(frozen=True)
class GeneralizedTaskArithmetic(MergeMethod):
    """One task-vector method; the registry holds one instance per named setting."""

    key: str
    title: str
    url: str
    sparsify: Sparsify = "none"
    consensus: bool = False

    def name(self) -> str:
        return self.key

    def pretty_name(self) -> str:
        return self.title

    def reference_url(self) -> str:
        return self.url

    def _merge(
        self,
        name: str,
        tensors: list[torch.Tensor],
        base: torch.Tensor | None,
        weights: list[float],
        params: Mapping[str, Any],
    ) -> tuple[torch.Tensor, MergeDetail]:
        if base is None:
            raise ValueError(f"{name}: {self.key} needs a base tensor")
        if self.consensus and any(w < 0 for w in weights):
            raise ValueError(f"{name}: {self.key} takes a weighted mean and needs non-negative weights, got {weights}")
        deltas = torch.stack([t - base for t in tensors])  # (n_models, *shape)
        kept_fraction = None
        if self.sparsify == "magnitude":
            keep = _top_magnitude_mask(deltas, params["density"])
            deltas = deltas * keep
            kept_fraction = float(keep.float().mean())
        elif self.sparsify == "random":
            keep = _random_mask(deltas, params["density"], params["seed"], name)
            deltas = deltas * keep
            if params["rescale"]:
                deltas = deltas / params["density"]
            kept_fraction = float(keep.float().mean())

        w = torch.tensor(weights, dtype=deltas.dtype).view(-1, *([1] * base.dim()))  # (n_models, 1, ...)
        weighted = deltas * w  # (n_models, *shape)
        if self.consensus:
            combined, conflicts = _disjoint_mean(weighted, w)
        else:
            combined, conflicts = weighted.sum(dim=0), None
        return base + params["lambda"] * combined, MergeDetail(kept_fraction, conflicts)


def _top_magnitude_mask(deltas: torch.Tensor, density: float) -> torch.Tensor:
    """Keep exactly round(density * numel) entries (at least one) of each task vector, the largest by |value|."""
    flat = deltas.reshape(deltas.shape[0], -1)  # (n_models, numel)
    numel = flat.shape[1]
    k = min(numel, max(1, round(density * numel)))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k == numel:
        mask[:] = True
    elif numel:
        top = flat.abs().topk(k, dim=1, sorted=False).indices  # (n_models, k)
        mask.scatter_(1, top, True)
    return mask.view_as(deltas)


def _random_mask(deltas: torch.Tensor, density: float, seed: int, name: str) -> torch.Tensor:
    """Bernoulli(density) keep mask per task vector, seeded by (seed, tensor name, model index).

    Seeding per tensor rather than from one running generator makes the mask of a tensor independent of the
    order tensors are visited in and of which other tensors the checkpoint has.
    """
    masks = []
    for i in range(deltas.shape[0]):
        digest = hashlib.blake2b(f"{seed}\0{i}\0{name}".encode(), digest_size=8).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
        masks.append(torch.rand(deltas.shape[1:], generator=generator) < density)
    return torch.stack(masks)  # (n_models, *shape)


def _disjoint_mean(weighted: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, int]:
    """TIES' elect-and-merge on weighted task vectors (n_models, *shape).

    The elected sign is that of the summed weighted mass (ties go to +). Each element's result is the weighted
    mean of the entries whose sign matches it; zeroed (trimmed or dropped) entries take no part, and an element
    nobody kept stays at the base. Returns the combined vector and the number of elements where a kept entry
    was outvoted.
    """
    signs = weighted.sign()  # (n_models, *shape)
    elected = torch.where(weighted.sum(dim=0) >= 0, 1.0, -1.0).to(weighted.dtype)  # (*shape)
    agree = signs == elected  # (n_models, *shape)
    conflicts = int((signs == -elected).any(dim=0).sum())
    total = (weighted * agree).sum(dim=0)
    mass = (w * agree).sum(dim=0)  # (*shape): summed weights of the agreeing models
    return torch.where(mass > 0, total / mass.clamp_min(1e-12), torch.zeros_like(total)), conflicts
