"""Which backends exist and which precisions each one compiles: checked before any model is loaded, so a
typo fails in a second with the choices listed, not after minutes of export."""

from __future__ import annotations

from dataclasses import dataclass

from fusionrec.compile import onnxruntime_backend, tensorrt_backend, torch_backend
from fusionrec.errors import UserError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class Backend:
    name: str
    precisions: tuple[str, ...]
    writes: str  # what lands in the artifact
    note: str


BACKENDS: dict[str, Backend] = {
    "onnxruntime": Backend("onnxruntime", onnxruntime_backend.PRECISIONS, "encoder.onnx, item_encoder.onnx",
                           "CPU (or CUDA with onnxruntime-gpu); int8 = dynamic quantisation"),
    "tensorrt": Backend("tensorrt", tensorrt_backend.PRECISIONS,
                        "encoder.plan (+ .json sidecar), encoder.onnx as the fallback",
                        f"NVIDIA GPU; {tensorrt_backend.INSTALL_HINT}"),
    "torch": Backend("torch", torch_backend.PRECISIONS, "compile.json only (compiled at load)",
                     "torch.compile / CUDA graphs on GPU; eager on CPU unless a compile mode is given"),
}


def check_choice(backend: str, precision: str) -> Backend:
    """The backend entry, or a UserError naming the field and the valid values."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}", field="compile.backend")
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}",
                        field="compile.precision")
    entry = BACKENDS[backend]
    if precision not in entry.precisions:
        others = sorted(name for name, b in BACKENDS.items() if precision in b.precisions)
        raise UserError(f"backend {backend} does not compile {precision}; it supports {list(entry.precisions)}",
                        field="compile.precision", fix=f"for {precision} use backend {' or '.join(others)}")
    return entry
