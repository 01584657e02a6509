"""Bucketed CUDA graphs: serve a tower by replaying a captured graph instead of launching each kernel.

Why: at batch 1 the fused three-LM tower issues well over a thousand small kernels, and the GPU finishes each
before the CPU has launched the next, so eager latency is launch-bound (tens of ms for well under a ms of
arithmetic on an H200). A CUDA graph replays the recorded launches with one call. A graph is fixed to the
shapes it was captured with, so a request is padded up to a bucket:
- batch: the next power of two (up to `Buckets.max_batch`; bigger requests run in chunks); the extra rows
  repeat the last real row and are dropped from the output;
- length axes (tokens per encoder, history items): the next power of two, at least `Buckets.min_length`,
  never past the axis' limit (the encoder's max length, the history window); padded on the right with
  zeros, whose mask 0 keeps them out of pooling and attention, and causal attention never looks right
  (tests/compile/test_cuda_graphs.py checks padded and unpadded outputs agree).
Each bucket is captured on first use; all share one memory pool, which is safe because replays are
serialised and each output is copied out before the next replay. If a capture fails (a model that syncs
mid-forward: see `capture_check`), the runner logs why once and runs eager from then on, so a replica
degrades in speed, never in answers.

torch.compile(mode="reduce-overhead") builds CUDA graphs too, but re-traces for new shape families and
quietly skips graphs it cannot build; here the buckets, the captures and a failure are all explicit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fusionrec.compile.graphs import GraphSignature

log = logging.getLogger(__name__)

WARMUP_CALLS = 2  # eager calls on a side stream before capture, so lazy inits (cuBLAS handles) happen outside


@dataclass(frozen=True)
class Buckets:
    """Which shapes get their own graph."""

    max_batch: int = 256
    min_length: int = 16

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_batch & (self.max_batch - 1):
            raise ValueError(f"max_batch must be a power of two >= 1, got {self.max_batch}")
        if self.min_length < 1:
            raise ValueError(f"min_length must be >= 1, got {self.min_length}")

    def batch(self, rows: int) -> int:
        return min(_next_power_of_two(rows), self.max_batch)

    def length(self, size: int, limit: int | None) -> int:
        """The padded length of an axis holding `size`; `size` itself when it is already past the limit."""
        padded = max(self.min_length, _next_power_of_two(size))
        if limit is not None:
            padded = min(padded, limit)
        return max(padded, size)


def _next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def pad_to_buckets(tensors: Sequence[Tensor], signature: GraphSignature, buckets: Buckets) -> list[Tensor]:
    """Pad every input of one call up to its bucket (see the module docstring for why this is exact).

    Args:
        tensors: the graph's inputs in `signature.inputs` order, all with the same batch size B <= max_batch.
        signature: names the length axes and their limits (e.g. "tokens_minilm" -> 128, "history" -> 50).
    """
    rows = tensors[0].shape[0]
    batch = buckets.batch(rows)
    if rows > batch:
        raise ValueError(f"batch {rows} is larger than the largest bucket {buckets.max_batch}; split it first")
    padded = []
    for name, tensor in zip(signature.inputs, tensors):
        if tensor.shape[0] != rows:
            raise ValueError(f"input {name} has batch {tensor.shape[0]}, the first input has {rows}")
        if batch > rows:  # (B, ...) -> (batch, ...): repeat the last real row, a valid input for any graph
            tensor = torch.cat([tensor, tensor[-1:].expand(batch - rows, *tensor.shape[1:])])
        for axis, symbol in signature.dynamic_axes.get(name, {}).items():
            if axis == 0:
                continue
            size = tensor.shape[axis]
            extra = buckets.length(size, signature.limits.get(symbol)) - size
            if extra:  # right-pad the axis with zeros: ids 0 under mask 0, zero vectors under mask 0
                shape = list(tensor.shape)
                shape[axis] = extra
                tensor = torch.cat([tensor, tensor.new_zeros(shape)], dim=axis)
        padded.append(tensor)
    return padded


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: list[Tensor]  # static buffers the graph reads: copy a request in, then replay
    output: Tensor  # static buffer the graph writes


class CudaGraphRunner:
    """Calls `module` through one captured CUDA graph per bucket.

    Args:
        module: a tower graph on the GPU in eval mode, already cast to its precision.
        signature: its inputs, dynamic axes and their limits.
        buckets: the shape buckets.
        capture: False runs the padded inputs eagerly (what a failed capture falls back to; on a CPU it is
            the only choice, and lets tests check the padding without a GPU).
    Attributes:
        captured: graphs captured so far.
        fallback_reason: why capture failed, once it has (then every call runs eager).
    """

    def __init__(self, module: nn.Module, signature: GraphSignature, buckets: Buckets | None = None,
                 capture: bool = True) -> None:
        self.module = module
        self.signature = signature
        self.buckets = buckets or Buckets()
        self.capture = capture
        self.fallback_reason: str | None = None
        self._graphs: dict[tuple, _Captured] = {}
        self._pool: torch.cuda._POOL_HANDLE | None = None  # torch's (privately named) graph_pool_handle type
        self._lock = threading.Lock()  # one replay at a time: buckets share a memory pool and static buffers

    @property
    def captured(self) -> int:
        return len(self._graphs)

    def __call__(self, *tensors: Tensor) -> Tensor:
        rows = tensors[0].shape[0]
        step = self.buckets.max_batch
        if rows > step:
            return torch.cat([self(*(t[start:start + step] for t in tensors)) for start in range(0, rows, step)])
        padded = pad_to_buckets(tensors, self.signature, self.buckets)
        with self._lock:
            captured = self._graph_for(padded) if self.capture and self.fallback_reason is None else None
            if captured is None:
                return self.module(*padded)[:rows]
            for static, tensor in zip(captured.inputs, padded):
                static.copy_(tensor)
            captured.graph.replay()
            return captured.output[:rows].clone()

    def _graph_for(self, padded: list[Tensor]) -> _Captured | None:
        key = tuple((tuple(t.shape), t.dtype) for t in padded)
        if key not in self._graphs:
            try:
                self._graphs[key] = self._capture(padded)
            except Exception as exc:  # noqa: BLE001 - any capture failure degrades to eager, loudly
                self.fallback_reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                log.warning("CUDA graph capture failed for shapes %s (%s); this replica runs eager from now on",
                            [tuple(t.shape) for t in padded], self.fallback_reason)
                return None
        return self._graphs[key]

    def _capture(self, example: list[Tensor]) -> _Captured:
        static = [t.clone() for t in example]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self.module(*static)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = self.module(*static)
        log.info("captured a CUDA graph for shapes %s", [tuple(t.shape) for t in example])
        return _Captured(graph, static, output)
