"""Which backends exist and which precisions each one compiles: checked before any model is loaded, so a
typo fails in a second with the choices listed, not after minutes of export.

The backend x precision table itself is `fusionrec.choices.BACKEND_PRECISIONS` (torch-free): the spec and
the CRD refuse a pair no backend compiles when the manifest is read, from the same table."""

from __future__ import annotations

from dataclasses import dataclass

from fusionrec.choices import BACKEND_PRECISIONS, PRECISIONS, precision_problem
from fusionrec.compile import tensorrt_backend
from fusionrec.errors import UserError

__all__ = ["BACKENDS", "PRECISIONS", "Backend", "check_choice"]


@dataclass(frozen=True)
class Backend:
    name: str
    precisions: tuple[str, ...]
    writes: str  # what lands in the artifact
    note: str


BACKENDS: dict[str, Backend] = {
    "onnxruntime": Backend("onnxruntime", BACKEND_PRECISIONS["onnxruntime"], "encoder.onnx, item_encoder.onnx",
                           "CPU (or CUDA with onnxruntime-gpu); int8 = dynamic quantisation"),
    "tensorrt": Backend("tensorrt", BACKEND_PRECISIONS["tensorrt"],
                        "encoder.plan (+ .json sidecar), encoder.onnx as the fallback",
                        f"NVIDIA GPU; {tensorrt_backend.INSTALL_HINT}"),
    "torch": Backend("torch", BACKEND_PRECISIONS["torch"], "compile.json only (compiled at load)",
                     "torch.compile / CUDA graphs on GPU; eager on CPU unless a compile mode is given"),
}


def check_choice(backend: str, precision: str) -> Backend:
    """The backend entry, or a UserError naming the field and the valid values."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}", field="compile.backend")
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}",
                        field="compile.precision")
    problem = precision_problem(backend, precision)
    if problem:
        message, fix = problem
        raise UserError(message, field="compile.precision", fix=fix)
    return BACKENDS[backend]
