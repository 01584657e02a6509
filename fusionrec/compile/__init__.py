"""Compile a trained artifact's towers for serving: ONNX Runtime (CPU, fp32/int8), TensorRT (GPU) or torch,
behind a parity gate (design.md section 5, issue #5)."""

from fusionrec.compile.compiler import COMPILE_RECORD, compile_artifact
from fusionrec.compile.parity import ParityError
from fusionrec.compile.registry import BACKENDS, check_choice
from fusionrec.compile.runtime import Runtime, load_compiled

__all__ = ["BACKENDS", "COMPILE_RECORD", "ParityError", "Runtime", "check_choice", "compile_artifact",
           "load_compiled"]
