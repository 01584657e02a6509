"""The contract every merge method follows, and the per-tensor plumbing they share.

A method only sees one tensor name at a time: the same-named tensor of every input model (and of the base,
for task-vector methods). Keeping the unit of work one tensor keeps peak memory at one model plus a few
tensors, which is what lets a merge run on the machine that will fine-tune the result.

The dtype policy lives here, not in each method, so no method can forget it: float tensors are merged in
(at least) float32 and cast back to the reference model's dtype; non-float tensors (position-id buffers,
token-type ids) have no meaningful average and are copied from the reference unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fusionrec.choices import MERGE_METHODS, ParamDef
from fusionrec.errors import UserError

__all__ = ["MergeDetail", "MergeMethod", "MergedTensor", "ParamDef", "TensorStats", "copied"]


@dataclass(frozen=True)
class TensorStats:
    """What happened to one tensor; summed up in merge_report.json.

    `mean_abs_delta` is the mean |merged - reference| over the tensor's elements (how far the merge moved it);
    `kept_fraction` is the share of task-vector entries that survived sparsification (TIES/DARE only);
    `sign_conflicts` counts elements whose kept task-vector entries disagreed in sign (TIES-style methods).
    """

    copied: bool = False
    numel: int = 0
    mean_abs_delta: float = 0.0
    kept_fraction: float | None = None
    sign_conflicts: int | None = None


@dataclass(frozen=True)
class MergedTensor:
    tensor: torch.Tensor
    stats: TensorStats


@dataclass(frozen=True)
class MergeDetail:
    """Method-specific extras a method returns beside the merged float tensor."""

    kept_fraction: float | None = None
    sign_conflicts: int | None = None


def copied(tensor: torch.Tensor) -> MergedTensor:
    """A tensor taken over unchanged from the reference (non-float buffers)."""
    return MergedTensor(tensor.clone(), TensorStats(copied=True, numel=tensor.numel()))


def float_compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs; float64 stays float64 rather than losing precision."""
    return torch.promote_types(dtype, torch.float32)


class MergeMethod(ABC):
    """A parameter-space merge method. Subclasses implement `_merge` on float tensors of equal shape."""

    @abstractmethod
    def name(self) -> str:
        """Registry key, as written in `merge.method`."""

    @abstractmethod
    def pretty_name(self) -> str: ...

    @abstractmethod
    def reference_url(self) -> str:
        """The paper the method comes from, written into merge_report.json."""

    def parameters(self) -> list[ParamDef]:
        """The method's parameters: its entry in fusionrec.choices.MERGE_METHODS, which the spec is generated
        from too."""
        return list(MERGE_METHODS[self.name()].params)

    def needs_base(self) -> bool:
        """True when the method works on task vectors (model - base)."""
        return MERGE_METHODS[self.name()].needs_base

    def uses_weights(self) -> bool:
        """False when per-model weights mean nothing to the method (SLERP uses `t`)."""
        return MERGE_METHODS[self.name()].uses_weights

    def check_weights(self, weights: Sequence[float]) -> None:  # noqa: B027 (a hook: most methods take any)
        """Refuse weights the method cannot use, before any checkpoint is read. Raises UserError."""

    def resolve_params(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Check user-given parameters once, up front, and fill defaults.

        Raises UserError naming `merge.<param>` for unknown keys, missing required ones and bad values, so a
        typo fails before any checkpoint is read.
        """
        defs = {p.name: p for p in self.parameters()}
        unknown = sorted(set(raw) - set(defs))
        if unknown:
            known = ", ".join(defs) or "none"
            raise UserError(f"method {self.name()!r} does not take {', '.join(unknown)} (its parameters: {known})",
                            field=f"merge.{unknown[0]}")
        resolved: dict[str, Any] = {}
        for name, pdef in defs.items():
            value = raw.get(name)
            if value is None:
                if pdef.required:
                    raise UserError(f"method {self.name()!r} needs {name}: {pdef.description}",
                                    field=f"merge.{name}")
                resolved[name] = pdef.default
                continue
            try:
                resolved[name] = pdef.check(value)
            except ValueError as exc:
                raise UserError(str(exc), field=f"merge.{name}") from None
        return resolved

    def merge_tensor(
        self,
        name: str,
        tensors: Sequence[torch.Tensor],
        base: torch.Tensor | None,
        weights: Sequence[float],
        params: Mapping[str, Any],
    ) -> MergedTensor:
        """Merge the same-named tensor of every model.

        Args:
            name: the tensor's name in the checkpoint; per-tensor settings (SLERP's tFilters) and the DARE
                seed depend on it.
            tensors: one tensor per model, all of one shape.
            base: the base model's tensor (task-vector methods), else None.
            weights: one weight per model.
            params: the output of `resolve_params`.

        Returns:
            the merged tensor, in the reference's dtype (base if given, else the first model), and its stats.
        """
        if not tensors:
            raise ValueError(f"{name}: no tensors to merge")
        if len(weights) != len(tensors):
            raise ValueError(f"{name}: {len(weights)} weights for {len(tensors)} tensors")
        if self.needs_base() and base is None:
            raise ValueError(f"{name}: method {self.name()!r} needs a base tensor")
        reference = base if base is not None else tensors[0]
        for i, t in enumerate(tensors):
            if t.shape != reference.shape:
                raise ValueError(f"{name}: model {i} has shape {tuple(t.shape)}, the reference has "
                                 f"{tuple(reference.shape)}")
        if not reference.is_floating_point():
            return copied(reference)
        compute = float_compute_dtype(reference.dtype)
        inputs = [t.to(compute) for t in tensors]
        base_c = base.to(compute) if base is not None else None
        merged, detail = self._merge(name, inputs, base_c, [float(w) for w in weights], params)
        delta = (merged - reference.to(compute)).abs()
        stats = TensorStats(
            numel=reference.numel(),
            mean_abs_delta=float(delta.mean()) if delta.numel() else 0.0,
            kept_fraction=detail.kept_fraction,
            sign_conflicts=detail.sign_conflicts,
        )
        return MergedTensor(merged.to(reference.dtype), stats)

    @abstractmethod
    def _merge(
        self,
        name: str,
        tensors: list[torch.Tensor],
        base: torch.Tensor | None,
        weights: list[float],
        params: Mapping[str, Any],
    ) -> tuple[torch.Tensor, MergeDetail]:
        """Merge float tensors of one shape; `base` is set whenever `needs_base()`."""

    def describe(self) -> dict[str, Any]:
        """Self-description for reports and `--help`-style listings."""
        return {
            "name": self.name(),
            "prettyName": self.pretty_name(),
            "referenceUrl": self.reference_url(),
            "needsBase": self.needs_base(),
            "parameters": [
                {"name": p.name, "type": p.kind.__name__, "required": p.required, "default": p.default,
                 "description": p.description}
                for p in self.parameters()
            ],
        }

