"""ONNX Runtime: fp32 graphs as exported, int8 by dynamic quantisation (weights int8, activations quantised
per batch at run time), which needs no calibration data and suits the LM's MatMul-heavy graph on CPU."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fusionrec.compile.export import check_onnx_file
from fusionrec.errors import UserError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8")


def quantize_int8(source: Path, dest: Path) -> Path:
    """Dynamic int8 quantisation of MatMul/Gemm weights (QInt8, per tensor) from an fp32 ONNX graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dest.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs a generic "consider pre-processing" warning on the root logger
    try:
        quantize_dynamic(str(source), str(dest), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        root.setLevel(level)
    check_onnx_file(dest)
    return dest


def session_options(threads: int):
    """One replica's options: `threads` intra-op threads (0 = ORT's default, all cores), one inter-op thread
    (the graph is a chain), every graph optimisation on."""
    import onnxruntime as ort

    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # warnings about unused initialisers etc. are noise here
    return options


class OnnxRuntime:
    """A compiled graph in one ONNX Runtime session; serving creates one per replica (sessions are
    thread-safe to run, but a replica owns its thread pool).

    Args:
        path: the .onnx file.
        threads: intra-op threads (0 = all cores).
        providers: execution providers, in preference order (default: CUDA when present, then CPU).
    """

    backend = "onnxruntime"

    def __init__(self, path: Path, threads: int = 0, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        check_onnx_file(path)
        available = ort.get_available_providers()
        chosen = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=session_options(threads), providers=chosen)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
            raise UserError(f"ONNX Runtime cannot load {path.name}: {str(exc)[:300]}", field=path.name,
                            fix="recompile the artifact with `fusionrec compile`") from None
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.path = path

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Named numpy inputs -> the graph's single output [B, D] (float32)."""
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise ValueError(f"inputs {missing} are missing; the graph takes {list(self.input_names)}")
        feed = {n: np.ascontiguousarray(inputs[n]) for n in self.input_names}
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float32)
