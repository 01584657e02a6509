"""`load_compiled`: what a serving replica calls to get a ready-to-run tower from a compiled artifact.

The backend comes from the artifact's compile.json, not from the caller, so a replica always runs what was
checked at compile time. A TensorRT engine that does not fit this machine (another TensorRT version or GPU,
or no tensorrt installed) is refused with a warning and the ONNX graph compiled alongside it runs instead,
unless `strict=True`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fusionrec.artifact import Artifact, load_artifact
from fusionrec.compile.compiler import COMPILE_RECORD
from fusionrec.compile.graphs import GRAPHS
from fusionrec.compile.inputs import TextTokenizer, TowerInputs
from fusionrec.compile.onnxruntime_backend import OnnxRuntime
from fusionrec.errors import UserError

log = logging.getLogger(__name__)


class Runtime:
    """One compiled tower graph plus the tokenizers that feed it.

    Attributes:
        backend: what actually runs (onnxruntime after a TensorRT fallback).
        precision, graph: from compile.json (precision None if the record lacks it).
        inputs: builds `run` inputs from texts, item indices or histories.
    """

    def __init__(self, engine: Any, backend: str, precision: str | None, graph: str, inputs: TowerInputs,
                 record: dict[str, Any]) -> None:
        self.engine = engine
        self.backend = backend
        self.precision = precision
        self.graph = graph
        self.inputs = inputs
        self.record = record

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.engine.input_names)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Named numpy inputs (extra names are ignored) -> [B, D] float32 vectors."""
        return self.engine.run(inputs)


def read_record(artifact: Artifact) -> dict[str, Any]:
    file = artifact.file(COMPILE_RECORD)
    if file is None:
        raise UserError(f"artifact {artifact.path} is not compiled (no {COMPILE_RECORD})",
                        fix=f"run `fusionrec compile {artifact.path}`")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{COMPILE_RECORD} is not valid JSON: {exc}", field=COMPILE_RECORD) from None


def load_compiled(artifact: str | Path | Artifact, graph: str = "user", *, threads: int | None = None,
                  strict: bool = False, compile_mode: str | None = None, model: Any | None = None) -> Runtime:
    """Open the compiled `graph` ("user" or "item") of a verified artifact.

    Args:
        threads: ONNX Runtime intra-op threads (default: compile.json's, from spec.compile.threads).
        strict: raise instead of falling back when a TensorRT engine does not fit this machine.
        compile_mode: torch backend only: "cudagraphs", "eager", a torch.compile mode, or None for the device
            default (CUDA graphs on a GPU, eager on CPU).
        model: the artifact's `FusedRecommender`, already loaded (`fusionrec.model.saved.load_model`). The torch
            backend then runs the graph on its modules (pruned and cast in place, so the caller must not run
            the model's own towers afterwards) and takes its tokenizers, instead of loading the weights a second
            time; other backends ignore it.
    """
    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
    if not isinstance(artifact, Artifact):
        artifact = load_artifact(artifact)
    record = read_record(artifact)
    backend, precision = record.get("backend"), record.get("precision")
    entry = record.get("graphs", {}).get(graph)
    if entry is None:
        raise UserError(f"{COMPILE_RECORD} has no {graph!r} graph", field=f"{COMPILE_RECORD}.graphs")
    threads = record.get("threads", 0) if threads is None else threads
    if backend == "torch":
        if model is None:
            from fusionrec.model.saved import load_model

            model, _ = load_model(artifact.path)
        inputs = TowerInputs.from_model(model)
        return Runtime(_torch_engine(model, record, graph, compile_mode), "torch", precision, graph, inputs, record)
    inputs = _tower_inputs(artifact, record)
    if backend == "tensorrt":
        from fusionrec.compile.tensorrt_backend import TensorRTRuntime

        try:
            trt_engine = TensorRTRuntime(_needed(artifact, entry["plan"]), _needed(artifact, entry["plan"] + ".json"))
            return Runtime(trt_engine, "tensorrt", precision, graph, inputs, record)
        except UserError as exc:
            if strict:
                raise
            log.warning("TensorRT engine not usable here (%s); falling back to ONNX Runtime", exc.message)
            precision = "fp32"  # the fallback graph is the fp32 export
    elif backend != "onnxruntime":
        raise UserError(f"{COMPILE_RECORD} names unknown backend {backend!r}", field=f"{COMPILE_RECORD}.backend")
    engine = OnnxRuntime(_needed(artifact, entry["onnx"]), threads)
    return Runtime(engine, "onnxruntime", precision, graph, inputs, record)


def _needed(artifact: Artifact, name: str) -> Path:
    path = artifact.file(name)
    if path is None:
        raise UserError(f"artifact {artifact.path} lacks {name}, which {COMPILE_RECORD} names", field=name,
                        fix=f"run `fusionrec compile {artifact.path}` again")
    return path


def _tower_inputs(artifact: Artifact, record: dict[str, Any]) -> TowerInputs:
    from transformers import AutoTokenizer

    tokenizers = [TextTokenizer(name, AutoTokenizer.from_pretrained(artifact.tokenizer_dir(name)),
                                int(settings["max_length"]))
                  for name, settings in record["encoders"].items()]
    texts = pd.read_parquet(artifact.items_path)["text"].tolist() if artifact.items_path else []
    return TowerInputs(tokenizers, texts, int(record["history_length"]), record.get("user_tower") == "text")


def _torch_engine(model: Any, record: dict[str, Any], graph: str, compile_mode: str | None) -> Any:
    import torch

    from fusionrec.compile.graphs import build_graph
    from fusionrec.compile.pruning import drop_top_layers
    from fusionrec.compile.torch_backend import TorchRuntime

    if record.get("prune_layers"):
        drop_top_layers(model, int(record["prune_layers"]))
    module, signature = build_graph(model, graph)
    blockers = record["graphs"][graph].get("cuda_graph_blockers", [])
    if compile_mode is None and blockers and torch.cuda.is_available():
        log.warning("the %s graph cannot be captured as CUDA graphs (%s); running it eagerly", graph,
                    "; ".join(blockers))
        compile_mode = "eager"
    return TorchRuntime(module, signature, record["precision"], compile_mode=compile_mode)
