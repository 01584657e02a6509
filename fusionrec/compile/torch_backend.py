"""The torch backend: the tower graph itself, cast to the precision, run eagerly, through bucketed CUDA
graphs, or under `torch.compile`.

Nothing is serialised: CUDA graphs and torch.compile output are tied to the torch version and the device, so
the artifact only records the settings, the parity numbers and whether the graph can be captured
(`capture_check`), and each replica builds its runner at load. On a GPU the default is "cudagraphs"
(`cuda_graphs.CudaGraphRunner`: one replay per request instead of one launch per kernel, which is what small
batches need); on CPU compiling takes minutes for an LM and gains little, so it is off unless asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from fusionrec.choices import BACKEND_PRECISIONS
from fusionrec.compile.cuda_graphs import Buckets, CudaGraphRunner
from fusionrec.compile.graphs import GraphSignature

log = logging.getLogger(__name__)

PRECISIONS = BACKEND_PRECISIONS["torch"]  # the one table: fusionrec.choices
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CUDA_GRAPHS = "cudagraphs"


def default_compile_mode(device: torch.device) -> str:
    return CUDA_GRAPHS if device.type == "cuda" else "eager"


class TorchRuntime:
    """Runs a tower graph module with numpy in and out.

    Args:
        module: from `graphs.build_graph` (moved and cast here; pass a copy if the model is still needed).
        signature: its inputs.
        precision: fp32, fp16 or bf16 (the weights are cast; integer inputs stay integer).
        device: where to run (default: CUDA when available).
        compile_mode: "cudagraphs" (bucketed CUDA graphs, GPU only), "eager", any other `torch.compile` mode
            (e.g. "max-autotune-no-cudagraphs"), or None for the device's default (`default_compile_mode`).
        buckets: the CUDA-graph shape buckets (default `Buckets()`).
    Attributes:
        cuda_graphs: the `CudaGraphRunner` in "cudagraphs" mode (its `captured` and `fallback_reason`), else None.
    """

    backend = "torch"

    def __init__(self, module: nn.Module, signature: GraphSignature, precision: str = "fp32",
                 device: str | torch.device | None = None, compile_mode: str | None = None,
                 buckets: Buckets | None = None) -> None:
        if precision not in DTYPES:
            raise ValueError(f"torch precision must be one of {PRECISIONS}, got {precision!r}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = DTYPES[precision]
        self.signature = signature
        self.input_names = signature.inputs
        module = module.to(self.device, self.dtype).eval()
        mode = default_compile_mode(self.device) if compile_mode is None else compile_mode
        self.compile_mode = None if mode == "eager" else mode
        self.cuda_graphs: CudaGraphRunner | None = None
        self.module: Callable[..., Any]  # the runner, a torch.compile'd module, or the module itself
        if mode == CUDA_GRAPHS:
            if self.device.type != "cuda":
                raise ValueError(f"compile mode {CUDA_GRAPHS!r} needs a CUDA device, got {self.device}; "
                                 "use 'eager' (or a torch.compile mode) on CPU")
            self.cuda_graphs = CudaGraphRunner(module, signature, buckets)
            self.module = self.cuda_graphs
        else:
            self.module = torch.compile(module, mode=self.compile_mode) if self.compile_mode else module

    @torch.inference_mode()
    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        args = []
        for name in self.input_names:
            tensor = torch.from_numpy(np.ascontiguousarray(inputs[name])).to(self.device)
            args.append(tensor.to(self.dtype) if tensor.is_floating_point() else tensor)
        return self.module(*args).float().cpu().numpy()
