"""Find, on a CPU, what would stop a tower graph from being captured as a CUDA graph.

A CUDA graph records kernel launches once and replays them; capture fails (or silently records the wrong
thing) when the forward reads a tensor value on the host (`.item()`, `if mask.all():`, `nonzero`: each a
device sync) or copies a tensor built on the host into the device mid-forward (`torch.arange(n).to(x.device)`).
Whether a model does either depends on its code and the transformers version, and a compile usually runs on a
machine without a GPU, so this check runs the forward on the "meta" device (shapes only, no data, no
arithmetic) under a dispatch mode that watches every op:
- a host read raises on meta tensors, so it is caught with the line that did it;
- a tensor made on the CPU and moved to the device shows up as a copy from "cpu" to "meta".
During the check `torch.cuda.is_current_stream_capturing()` answers True, as it does during a real capture,
so libraries that skip host reads while capturing (transformers' attention-mask code does) take that path.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_COPIES = {"aten._to_copy.default", "aten.copy_.default", "aten.copy.default", "aten._copy_from.default"}
_HOST_READS = ("item() cannot be called on meta tensors", "_local_scalar_dense", "nonzero",
               "data-dependent", "Cannot copy out of meta tensor")


class _HostTransfers(TorchDispatchMode):
    """Records every op that moves a CPU tensor into a meta one (a host-to-device copy on a real GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func: Callable[..., Any], types: Sequence[type], args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        outputs = [t for t in tree_leaves(out) if isinstance(t, Tensor)]
        from_host = [t for t in inputs if t.device.type == "cpu" and (t.dim() > 0 or str(func) in _COPIES)]
        if from_host and any(t.device.type == "meta" for t in outputs):
            shapes = ", ".join(str(tuple(t.shape)) for t in from_host)
            self.found.append(f"{func} copies a host tensor {shapes} to the device at {_caller()}")
        return out


def capture_blockers(module: nn.Module, example: Sequence[Tensor]) -> list[str]:
    """Reasons `module(*example)` cannot be captured as a CUDA graph; empty when it can.

    The module's own parameters and buffers are swapped for meta tensors for the call only
    (`functional_call`), so nothing is copied or changed. Each module's own slots are swapped exactly once (the
    graph modules reach some submodules by two paths, and a slot swapped twice would stay meta afterwards);
    a tensor shared by two slots gets one meta tensor. A tensor kept as a plain attribute stays on the CPU,
    which is reported too: `module.to("cuda")` would leave it there.
    """
    metas: dict[int, Tensor] = {}  # one meta tensor per real one, so shared weights stay shared
    state = {}
    for prefix, owner in module.named_modules():  # each module once, so no slot is swapped twice
        for attribute, tensor in [*owner._parameters.items(), *owner._buffers.items()]:
            if tensor is not None:
                name = f"{prefix}.{attribute}" if prefix else attribute
                state[name] = metas.setdefault(id(tensor), torch.empty_like(tensor, device="meta"))
    args = [torch.empty_like(t, device="meta") for t in example]
    watch = _HostTransfers()
    blockers: list[str] = []
    try:
        with torch.inference_mode(), mock.patch("torch.cuda.is_current_stream_capturing", return_value=True), \
                watch:
            torch.func.functional_call(module, state, tuple(args), tie_weights=False)
    except Exception as exc:  # noqa: BLE001 - any failure on meta is reported, not raised
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        kind = "reads a tensor value on the host (a device sync)" if any(s in str(exc) for s in _HOST_READS) \
            else "fails on shape-only tensors"
        blockers.append(f"{kind} at {_frame_of(exc)}: {message}")
    return watch.found + blockers


def _caller() -> str:
    """The innermost frame outside torch: the model line that made the op run."""
    return _innermost(traceback.extract_stack()[:-2])


def _frame_of(exc: BaseException) -> str:
    return _innermost(traceback.extract_tb(exc.__traceback__))


def _innermost(frames: list[traceback.FrameSummary]) -> str:
    torch_dir = str(Path(torch.__file__).parent)
    for frame in reversed(frames):
        if not frame.filename.startswith(torch_dir) and not frame.filename.endswith(("capture_check.py",
                                                                                     "mock.py")):
            return f"{_short(frame.filename)}:{frame.lineno} ({frame.line})"
    return "unknown"


def _short(filename: str) -> str:
    """A path from the package root: transformers/models/..., fusionrec/model/..."""
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1]
    if "/fusionrec/" in filename:
        return "fusionrec/" + filename.split("/fusionrec/", 1)[1]
    return filename
