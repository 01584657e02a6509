"""TensorRT: an engine built from the exported ONNX graph, for one GPU model and one TensorRT version.

A serialised engine only runs on the TensorRT version and GPU it was built for, so `encoder.plan` travels with
a sidecar (`encoder.plan.json`) naming both; loading checks it first and refuses a mismatch (the caller falls
back to the ONNX graph with a warning), instead of failing deep inside deserialisation or, worse, running.

Install on a GPU machine (CUDA 12): `pip install tensorrt-cu12` (pulls the matching libs; ~2 GB).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from fusionrec.choices import BACKEND_PRECISIONS
from fusionrec.compile.graphs import OUTPUT_NAME, GraphSignature
from fusionrec.errors import UserError

log = logging.getLogger(__name__)

PRECISIONS = BACKEND_PRECISIONS["tensorrt"]  # the one table: fusionrec.choices
INSTALL_HINT = "pip install tensorrt-cu12  (on a machine with an NVIDIA GPU and CUDA 12)"


class EngineMismatch(UserError):
    """An engine built for another TensorRT version or GPU model."""


def check_engine_compatible(sidecar: dict[str, Any], tensorrt_version: str, gpu_name: str) -> None:
    """Refuse an engine whose sidecar names another TensorRT version or GPU than this machine's.

    Pure (no TensorRT needed), so the refusal is testable anywhere.
    """
    for key in ("tensorrt_version", "gpu_name"):
        if not isinstance(sidecar.get(key), str):
            raise EngineMismatch(f"encoder.plan.json has no {key!r}: cannot tell what the engine was built for",
                                 field=f"encoder.plan.json.{key}", fix="recompile with --backend tensorrt")
    built, here = sidecar["tensorrt_version"], tensorrt_version
    if built != here:
        raise EngineMismatch(f"encoder.plan was built with TensorRT {built}, this machine has TensorRT {here}",
                             field="encoder.plan.json.tensorrt_version",
                             fix="recompile on this machine with --backend tensorrt")
    if sidecar["gpu_name"] != gpu_name:
        raise EngineMismatch(f"encoder.plan was built for GPU {sidecar['gpu_name']!r}, this machine has "
                             f"{gpu_name!r}", field="encoder.plan.json.gpu_name",
                             fix="recompile on this machine with --backend tensorrt")


def import_tensorrt() -> ModuleType:
    try:
        import tensorrt
    except ImportError:
        raise UserError("backend tensorrt needs the tensorrt package", field="compile.backend",
                        fix=INSTALL_HINT) from None
    return tensorrt


def current_gpu() -> str:
    import torch

    if not torch.cuda.is_available():
        raise UserError("backend tensorrt needs a CUDA GPU; none is visible", field="compile.backend",
                        fix="use --backend onnxruntime on CPU machines")
    return torch.cuda.get_device_name(0)


def profile_shapes(signature: GraphSignature, example: dict[str, np.ndarray], *, max_batch: int, opt_batch: int,
                   max_lengths: dict[str, int], opt_length: int) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shape per input: batch 1..max_batch, each length axis 1..its `max_lengths[symbol]`
    (an encoder's max tokens, the history length); fixed axes (the vector dim) as in the example."""
    shapes: dict[str, tuple[tuple[int, ...], ...]] = {}
    for name in signature.inputs:
        axes = signature.dynamic_axes.get(name, {})
        low: list[int] = []
        mid: list[int] = []
        high: list[int] = []
        for axis, size in enumerate(example[name].shape):
            symbol = axes.get(axis)
            if symbol is None:
                bounds = (size, size, size)
            elif symbol == "batch":
                bounds = (1, opt_batch, max_batch)
            else:
                if symbol not in max_lengths:
                    raise ValueError(f"no maximum for axis {symbol!r} of input {name!r}; have {sorted(max_lengths)}")
                bounds = (1, min(opt_length, max_lengths[symbol]), max_lengths[symbol])
            for values, bound in zip((low, mid, high), bounds):
                values.append(bound)
        shapes[name] = (tuple(low), tuple(mid), tuple(high))
    return shapes


def build_engine(onnx_path: Path, plan_path: Path, precision: str, shapes: dict[str, tuple],
                 timing_cache: Path | None = None, workspace_gib: float = 4.0) -> dict[str, Any]:
    """Build and serialise an engine; returns the sidecar describing it (written next to the plan)."""
    trt = import_tensorrt()
    if precision not in PRECISIONS:
        raise UserError(f"tensorrt precision must be one of {PRECISIONS}, got {precision!r}",
                        field="compile.precision")
    gpu = current_gpu()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse {onnx_path.name}: {errors[:500]}", field=onnx_path.name)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for name, (low, mid, high) in shapes.items():
        profile.set_shape(name, low, mid, high)
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise UserError(f"TensorRT failed to build an engine from {onnx_path.name} (see the log above)")
    plan_path.write_bytes(bytes(engine))
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = timing_cache.with_name(f".{timing_cache.name}.{os.getpid()}")
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
        os.replace(tmp, timing_cache)
    return {"tensorrt_version": trt.__version__, "gpu_name": gpu, "precision": precision,
            "profile": {n: [list(s) for s in v] for n, v in shapes.items()}}


class TensorRTRuntime:
    """A deserialised engine and one execution context; inputs and outputs go through torch CUDA tensors."""

    backend = "tensorrt"

    def __init__(self, plan_path: Path, sidecar_path: Path) -> None:
        trt = import_tensorrt()
        try:
            sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise EngineMismatch(f"{sidecar_path.name} is unreadable: {exc}", field=sidecar_path.name) from None
        check_engine_compatible(sidecar, trt.__version__, current_gpu())
        self._trt = trt
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan_path.read_bytes())
        if self.engine is None:
            raise EngineMismatch(f"TensorRT could not deserialise {plan_path.name}", field=plan_path.name)
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = tuple(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        stream = torch.cuda.current_stream()
        keep = []
        for name in self.input_names:
            dtype = self._trt.nptype(self.engine.get_tensor_dtype(name))
            tensor = torch.from_numpy(np.ascontiguousarray(inputs[name], dtype=dtype)).cuda()
            keep.append(tensor)
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        shape = tuple(self.context.get_tensor_shape(OUTPUT_NAME))
        out_dtype = self._trt.nptype(self.engine.get_tensor_dtype(OUTPUT_NAME))
        out = torch.empty(shape, dtype=torch.from_numpy(np.zeros(0, out_dtype)).dtype, device="cuda")
        self.context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return out.float().cpu().numpy()
