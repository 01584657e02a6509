"""What a merge did, written as merge_report.json next to the merged weights.

A merged checkpoint is only reproducible and auditable if it says exactly which method ran with which
parameters on which bytes (the sha256 of every input weight file), and how much each tensor moved.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fusionrec.model.merge.base import TensorStats


@dataclass(frozen=True)
class InputRecord:
    role: str  # "base" or "model"
    source: str  # as written in the spec
    path: str
    weight: float | None
    sha256: dict[str, str]  # weight file name -> sha256


@dataclass
class MergeReport:
    method: str
    pretty_name: str
    reference_url: str
    parameters: dict[str, Any]
    inputs: list[InputRecord]
    reference: str  # the folder config and tokenizer were copied from
    output: str
    output_sha256: dict[str, str] = field(default_factory=dict)
    copied_files: list[str] = field(default_factory=list)
    tensors: dict[str, TensorStats] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def tensors_merged(self) -> int:
        return sum(not s.copied for s in self.tensors.values())

    @property
    def tensors_copied(self) -> int:
        return sum(s.copied for s in self.tensors.values())

    @property
    def mean_abs_delta(self) -> float:
        """Element-weighted mean |merged - reference| over all merged tensors."""
        merged = [s for s in self.tensors.values() if not s.copied]
        elements = sum(s.numel for s in merged)
        return sum(s.mean_abs_delta * s.numel for s in merged) / elements if elements else 0.0

    @property
    def kept_fraction(self) -> float | None:
        """Element-weighted share of task-vector entries kept by TIES/DARE sparsification."""
        kept = [(s.kept_fraction, s.numel) for s in self.tensors.values() if s.kept_fraction is not None]
        elements = sum(numel for _, numel in kept)
        return sum(fraction * numel for fraction, numel in kept) / elements if elements else None

    @property
    def sign_conflicts(self) -> int | None:
        counts = [s.sign_conflicts for s in self.tensors.values() if s.sign_conflicts is not None]
        return sum(counts) if counts else None

    def summary(self) -> dict[str, Any]:
        return {
            "tensorsMerged": self.tensors_merged,
            "tensorsCopied": self.tensors_copied,
            "meanAbsDelta": self.mean_abs_delta,
            "keptFraction": self.kept_fraction,
            "signConflictsResolved": self.sign_conflicts,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "prettyName": self.pretty_name,
            "referenceUrl": self.reference_url,
            "parameters": self.parameters,
            "inputs": [asdict(i) for i in self.inputs],
            "reference": self.reference,
            "output": {"path": self.output, "sha256": self.output_sha256, "copiedFiles": self.copied_files},
            "summary": self.summary(),
            "seconds": round(self.seconds, 3),
            "tensors": {name: _tensor_json(stats) for name, stats in self.tensors.items()},
        }



def _tensor_json(stats: TensorStats) -> dict[str, Any]:
    """camelCase like the rest of the report; fields a method does not produce are left out."""
    fields = {"copied": stats.copied, "numel": stats.numel, "meanAbsDelta": stats.mean_abs_delta,
              "keptFraction": stats.kept_fraction, "signConflicts": stats.sign_conflicts}
    return {key: value for key, value in fields.items() if value is not None}
