"""`compile_artifact`: export the towers of a trained artifact, build the backend's graph, gate it on parity
with torch, and only then add the files to the artifact (atomically, via `fusionrec.artifact.add_files`).

int8 is gated on validation NDCG@10 against the model itself (`scoring.model_ranking_metrics`): the graphs
are smoothed (`smoothing`) and quantised at the default outlier ratio, and if that fails, stricter ratios,
then the unsmoothed graphs, are tried (`int8_rungs`); every attempt is reported and stored in compile.json
under "int8".

The item index that /v1/recommend searches is decided here too (`item_index`): exact below
`compile.index.minItems`, else an approximate faiss index whose recall@10 must reach `compile.index.minRecall`;
it is built first, so a refused index fails the compile before minutes of export. Its line is logged, not
reported with the parity lines; the CLI prints it from the record.

A failure anywhere (bad choice, export error, parity breach, index recall) raises before anything is written,
so an artifact is either left exactly as it was or gains a complete, checked set of compiled files.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from fusionrec import __version__
from fusionrec.artifact import ANN_INDEX_NAME, Artifact, add_files, load_artifact
from fusionrec.compile import onnxruntime_backend as ort_backend
from fusionrec.compile import tensorrt_backend as trt_backend
from fusionrec.compile.capture_check import capture_blockers
from fusionrec.compile.export import export_onnx
from fusionrec.compile.graphs import GRAPHS, GraphSignature, build_graph
from fusionrec.compile.inputs import TowerInputs, select
from fusionrec.compile.item_index import compile_index, model_embedder
from fusionrec.compile.parity import (
    ParityCheck,
    ParityError,
    enforce,
    output_check,
    paired_drop_interval,
    ranking_check,
)
from fusionrec.compile.pruning import check_depth, drop_top_layers
from fusionrec.compile.registry import check_choice
from fusionrec.compile.scoring import (
    Ranking,
    graph_ranking_metrics,
    model_ranking_metrics,
)
from fusionrec.compile.smoothing import SMOOTH_ALPHA, ChannelStats, smooth_file
from fusionrec.compile.torch_backend import TorchRuntime
from fusionrec.data.splits import LeaveOneOutSplit, RandomSplit
from fusionrec.errors import UserError
from fusionrec.model.fused import FusedRecommender
from fusionrec.progress import progress
from fusionrec.spec import IndexSpec

log = logging.getLogger(__name__)

COMPILE_RECORD = "compile.json"
FILES = {"user": "encoder.onnx", "item": "item_encoder.onnx"}
PLANS = {"user": "encoder.plan", "item": "item_encoder.plan"}
EXAMPLE_ROWS = 16


def compile_artifact(path: str | Path, *, backend: str | None = None, precision: str | None = None,
                     threads: int | None = None, opset: int | None = None, prune_layers: int = 0,
                     tolerance: float | None = None, split: LeaveOneOutSplit | RandomSplit | None = None,
                     embeddings: Path | None = None, timing_cache: Path | None = None,
                     index: IndexSpec | None = None, report: Callable[[str], None] = print) -> dict[str, Any]:
    """Compile the artifact at `path`; returns the record written as compile.json.

    Args:
        backend, precision, threads, opset: override the artifact spec's `compile` section.
        prune_layers: drop this many top layers of every encoder before export (quality cost measured).
        tolerance: override the gate (relative output error, or for int8 the relative NDCG@10 drop).
        split: the validation data for the int8 ranking gate (default: loaded from the spec's data section).
        embeddings: frozen encoders' embedding cache (see `fusionrec.model.saved.load_model`).
        timing_cache: TensorRT timing cache file, reused across builds.
        index: the item index settings (default: the artifact spec's `compile.index`).
        report: where the parity lines are printed.
    Raises:
        UserError: bad choices or a corrupt artifact, or an item index below `compile.index.minRecall`;
            ParityError (a UserError) when the gate fails.
    """
    started = time.perf_counter()
    settings = load_artifact(path).spec.compile
    index = settings.index if index is None else index
    backend = settings.backend if backend is None else backend
    precision = settings.precision if precision is None else precision
    threads = settings.threads if threads is None else threads
    opset = settings.opset if opset is None else opset
    check_choice(backend, precision)
    if prune_layers < 0:
        raise UserError(f"prune_layers must be >= 0, got {prune_layers}", field="prune_layers")

    from fusionrec.model.saved import load_model

    model, artifact = load_model(path, embeddings=embeddings)
    needs_ranking = precision == "int8" or (prune_layers > 0 and artifact.spec.task.type == "ranking")
    if needs_ranking and split is None:
        split = _load_split(artifact)
    if precision == "int8" and not isinstance(split, LeaveOneOutSplit):
        raise UserError(f"the int8 gate measures NDCG@10 and needs a ranking model; this one is "
                        f"{artifact.spec.task.type}", field="compile.precision", fix="use fp32 for ctr/rating")
    index_record, index_files = compile_index(artifact, index, model_embedder(model))
    inputs = TowerInputs.from_model(model)
    quality: dict[str, Any] = {}
    torch_ranking: Ranking | None = None  # the gate's reference pass (metrics and per-user ranks)
    if prune_layers:
        check_depth(model.text_encoders(), prune_layers)  # fail before minutes of evaluation
    if needs_ranking:  # before pruning: the model's cached item embeddings are its unpruned encoders'
        assert isinstance(split, LeaveOneOutSplit)  # int8 (checked above) or a ranking model's split
        measured = model_ranking_metrics(model, split)
        quality["unpruned_ndcg@10" if prune_layers else "torch_ndcg@10"] = measured["ndcg@10"]
        torch_ranking = None if prune_layers else measured
    if prune_layers:
        if not needs_ranking:  # ctr/rating models: the cost is not measured (noted in the record)
            quality["pruning_cost"] = "not measured: only ranking models are evaluated here"
        quality["layers"] = drop_top_layers(model, prune_layers)
    examples = _examples(model, inputs, artifact)
    graphs = {kind: build_graph(model, kind) for kind in GRAPHS}
    reference = {kind: TorchRuntime(copy.deepcopy(graphs[kind][0]), graphs[kind][1], "fp32", "cpu", "eager")
                 for kind in GRAPHS}
    if precision == "int8" and torch_ranking is None:  # pruned: only the pruned graphs compute the pruned model
        assert isinstance(split, LeaveOneOutSplit)  # int8: checked above
        torch_ranking = graph_ranking_metrics(model, reference["user"], reference["item"], inputs, split)
        quality["torch_ndcg@10"] = torch_ranking["ndcg@10"]
    if torch_ranking is not None:
        quality["torch_reference"] = "pruned eager graphs" if prune_layers else "model"
    checks: list[ParityCheck] = []
    int8: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="fusionrec-compile-") as tmp:
        folder = Path(tmp)
        files: dict[str, Any] = {}
        runtimes: dict[str, Any] = {}
        blockers: dict[str, list[str]] = {}  # torch backend: what stops CUDA-graph capture, per graph
        for kind in progress(GRAPHS, desc=f"compiling ({backend} {precision})", unit="graph"):
            module, signature = graphs[kind]
            example = select(examples[kind], signature)
            if backend == "torch":
                runtimes[kind] = TorchRuntime(copy.deepcopy(module), signature, precision, compile_mode="eager")
                blockers[kind] = capture_blockers(module, [torch.from_numpy(example[n]) for n in signature.inputs])
                report(f"{kind} graph: " + ("can be captured as CUDA graphs" if not blockers[kind] else
                                            "cannot be captured as CUDA graphs (GPU replicas run it eagerly): "
                                            + "; ".join(blockers[kind])))
                continue
            onnx_path = export_onnx(module, signature, example, folder / FILES[kind], opset)
            files[FILES[kind]] = onnx_path
            if backend == "tensorrt":
                plan = folder / PLANS[kind]
                shapes = trt_backend.profile_shapes(signature, example, max_batch=256, opt_batch=32,
                                                    max_lengths=signature.limits, opt_length=64)
                sidecar = trt_backend.build_engine(onnx_path, plan, precision, shapes, timing_cache)
                files[PLANS[kind]] = plan
                files[f"{PLANS[kind]}.json"] = json.dumps(sidecar, indent=2).encode()
                runtimes[kind] = trt_backend.TensorRTRuntime(plan, _write(folder / f"{PLANS[kind]}.json", sidecar))
            elif precision != "int8":
                runtimes[kind] = ort_backend.OnnxRuntime(onnx_path, threads)
        if precision == "int8":
            # int8 needs ranking: split was checked above, and torch_ranking measured (unpruned or pruned)
            assert isinstance(split, LeaveOneOutSplit) and torch_ranking is not None
            chosen, int8 = _int8_ladder(model, {kind: files[FILES[kind]] for kind in GRAPHS},
                                        {kind: select(examples[kind], graphs[kind][1]) for kind in GRAPHS},
                                        inputs, split, torch_ranking, tolerance, threads, folder, report)
            runtimes = chosen.runtimes
            files.update({FILES[kind]: chosen.paths[kind] for kind in GRAPHS})
        for kind in GRAPHS:
            signature = graphs[kind][1]
            example = select(examples[kind], signature)
            check = output_check(kind, reference[kind].run(example), runtimes[kind].run(example),
                                 "fp32" if precision == "int8" else precision,
                                 None if precision == "int8" else tolerance)
            if precision == "int8":
                check.passed, check.tolerance = True, None  # int8 is gated on ranking quality below
            checks.append(check)
        if precision == "int8":
            checks.append(chosen.check)
            quality["compiled_ndcg@10"] = chosen.detail["compiled_ndcg@10"]
        elif needs_ranking:
            assert isinstance(split, LeaveOneOutSplit)  # a pruned ranking model's split (int8 took the branch above)
            quality["compiled_ndcg@10"] = graph_ranking_metrics(model, runtimes["user"], runtimes["item"], inputs,
                                                                split)["ndcg@10"]
        if prune_layers and needs_ranking:
            base, compiled_ndcg = quality["unpruned_ndcg@10"], quality["compiled_ndcg@10"]
            quality["pruning_relative_drop"] = (base - compiled_ndcg) / base if base > 0 else 0.0
            report(f"pruning: NDCG@10 {base:.4f} -> {compiled_ndcg:.4f} (validation)")
        enforce(checks, report, precision)
        record = _record(model, graphs, backend, precision, threads, opset, prune_layers, checks, quality,
                         time.perf_counter() - started, blockers)
        if int8 is not None:
            record["int8"] = int8
        record["index"] = index_record
        files.update(index_files)
        files[COMPILE_RECORD] = json.dumps(record, indent=2, sort_keys=True).encode()
        add_files(artifact.path, files, replace=True, remove=[ANN_INDEX_NAME] if not index_files else [])
    return record


@dataclass
class Int8Attempt:
    """One rung of the int8 ladder: the graphs quantised at one outlier ratio (smoothed or not) and their
    ranking gate."""

    ratio: float
    alpha: float | None  # SmoothQuant alpha of the smoothed graph, None when quantised as exported
    paths: dict[str, Path]
    runtimes: dict[str, Any]
    check: ParityCheck
    fp32_matmuls: dict[str, int]  # weight MatMuls left in fp32, per graph (read back from the files)

    @property
    def detail(self) -> dict[str, Any]:
        """The ranking gate's NDCGs (and drop interval)."""
        assert self.check.detail is not None  # a ranking_check always records them
        return self.check.detail

    def as_json(self) -> dict[str, Any]:
        record = {"outlier_ratio": self.ratio, "smooth_alpha": self.alpha, "fp32_matmuls": self.fp32_matmuls,
                  "torch_ndcg@10": self.detail["torch_ndcg@10"],
                  "compiled_ndcg@10": self.detail["compiled_ndcg@10"],
                  "relative_drop": self.check.value, "passed": self.check.passed}
        if "drop_95_interval" in self.detail:
            record["drop_95_interval"] = self.detail["drop_95_interval"]
        return record

    def line(self) -> str:
        kept = ", ".join(f"{kind} {n}" for kind, n in self.fp32_matmuls.items())
        interval = self.detail.get("drop_95_interval")
        spread = "" if interval is None else f"95% over users {interval[0]:+.1%} to {interval[1]:+.1%}; "
        return (f"int8 at outlier ratio {_rung_name(self.ratio, self.alpha)} (MatMuls kept fp32: {kept}): NDCG@10 "
                f"torch {self.detail['torch_ndcg@10']:.4f} -> int8 {self.detail['compiled_ndcg@10']:.4f}"
                f", drop {self.check.value:+.2%} ({spread}limit {self.check.tolerance:.2%}) "
                f"{'ok' if self.check.passed else 'FAILED'}")


def _rung_name(ratio: float, alpha: float | None) -> str:
    return f"{ratio:g}" if alpha is None else f"{ratio:g} smoothed (alpha {alpha:g})"


def int8_rungs() -> list[tuple[float, float | None]]:
    """The rungs (outlier ratio, smoothing alpha or None) in the order tried: smoothed first, since smoothing
    costs one Mul per activation while every product kept fp32 costs int8's speed-up on it."""
    return [(ratio, SMOOTH_ALPHA) for ratio in ort_backend.SMOOTHED_LADDER] + \
        [(ratio, None) for ratio in ort_backend.OUTLIER_LADDER]


def _int8_ladder(model: FusedRecommender, exported: dict[str, Path], examples: dict[str, dict[str, np.ndarray]],
                 inputs: TowerInputs, split: LeaveOneOutSplit, torch_ranking: Ranking, tolerance: float | None,
                 threads: int, folder: Path, report: Callable[[str], None]) -> tuple[Int8Attempt, dict[str, Any]]:
    """Quantise both graphs at each rung of `int8_rungs` in turn (smoothed, then as exported; each keeps
    more MatMuls fp32) until the ranking gate passes; returns that attempt and the record of all of them.

    Why a ladder: the default ratio is tuned for speed on one model, and a model whose ranking is more
    sensitive may pass once a few more products stay fp32, which is still much faster than fp32 everywhere.
    The activations are measured once (the smoothed graph's follow exactly from them); a rung that would
    keep the same MatMuls of the same graph as one tried already is skipped (it would build the same graphs).
    Raises:
        ParityError: every rung failed, with each one's numbers and what to do.
    """
    channels = {kind: ort_backend.activation_channels(exported[kind], examples[kind]) for kind in GRAPHS}
    sources: dict[float | None, tuple[dict[str, Path], dict[str, dict[str, float]]]] = {}  # alpha -> graphs, ratios
    ladder = int8_rungs()
    attempts: list[Int8Attempt] = []
    tried: list[tuple] = []
    for rung, (ratio, alpha) in enumerate(ladder):
        if alpha not in sources:
            sources[alpha] = _int8_source(exported, channels, alpha, folder)
        paths, ratios = sources[alpha]
        kept = (alpha, *(frozenset(ort_backend.kept_fp32(ratios[kind], ratio)) for kind in GRAPHS))
        if kept in tried:
            report(f"int8 at outlier ratio {_rung_name(ratio, alpha)}: keeps the same MatMuls fp32 as a ratio "
                   f"tried already; skipped")
            continue
        tried.append(kept)
        quantised = {kind: ort_backend.quantize_int8(paths[kind], folder / f"int8-{rung}" / FILES[kind],
                                                     outlier_ratio=ratio, ratios=ratios[kind]) for kind in GRAPHS}
        runtimes = {kind: ort_backend.OnnxRuntime(quantised[kind], threads) for kind in GRAPHS}
        compiled = graph_ranking_metrics(model, runtimes["user"], runtimes["item"], inputs, split)
        interval = paired_drop_interval(torch_ranking.ranks, compiled.ranks)
        attempt = Int8Attempt(ratio, alpha, quantised, runtimes,
                              ranking_check("ranking", torch_ranking["ndcg@10"], compiled["ndcg@10"], tolerance,
                                            interval),
                              {kind: ort_backend.int8_coverage(quantised[kind])[1] for kind in GRAPHS})
        attempts.append(attempt)
        report(attempt.line())
        if attempt.check.passed:
            return attempt, {"outlier_ratio": ratio, "smooth_alpha": alpha,
                             "ladder": [{"outlier_ratio": r, "smooth_alpha": a} for r, a in ladder],
                             "attempts": [a.as_json() for a in attempts]}
        attempt.runtimes.clear()  # a failed rung's sessions hold a copy of the graph's weights each
        shutil.rmtree(folder / f"int8-{rung}")  # and its files a quarter of the fp32 graph's disk each
    best = min(a.check.value for a in attempts)
    raise ParityError(
        "int8 failed the parity gate (validation NDCG@10 relative drop) at every outlier ratio tried: "
        + "; ".join(a.line() for a in attempts),
        field="compile.precision",
        fix=f"compile with --precision fp32, or accept the drop with --tolerance (the smallest measured was "
            f"{best:.2%}: --tolerance {math.ceil(max(best, 0.0) * 100 + 1) / 100:g})")


def _int8_source(exported: dict[str, Path], channels: dict[str, dict[str, ChannelStats]], alpha: float | None,
                 folder: Path) -> tuple[dict[str, Path], dict[str, dict[str, float]]]:
    """The fp32 graphs a rung quantises (smoothed at `alpha` into `folder`, or as exported) and their nodes'
    outlier ratios."""
    if alpha is None:
        return exported, {kind: ort_backend.outlier_ratios(exported[kind], channels=channels[kind])
                          for kind in GRAPHS}
    paths, ratios = {}, {}
    for kind in GRAPHS:
        paths[kind] = folder / f"smoothed-{alpha:g}" / FILES[kind]
        smoothed = smooth_file(exported[kind], paths[kind], channels[kind], alpha)
        ratios[kind] = ort_backend.outlier_ratios(paths[kind], channels=smoothed)
    return paths, ratios


def _load_split(artifact: Artifact) -> LeaveOneOutSplit | RandomSplit:
    from fusionrec.data import load_dataset
    from fusionrec.protocol import make_split

    return make_split(load_dataset(artifact.spec.data), artifact.spec.task.type, artifact.spec.data.order)


def _examples(model: FusedRecommender, inputs: TowerInputs, artifact: Artifact) -> dict[str, dict[str, np.ndarray]]:
    """Example rows for export and the output gate: the first catalogue items, and real users' histories
    (from users.parquet) so the tokens and padding look like serving's."""
    n = model.n_items
    items = np.arange(min(n, EXAMPLE_ROWS)) if n >= 2 else np.zeros(2, dtype=np.int64)
    index = {item_id: i for i, item_id in enumerate(pd.read_parquet(artifact.items_path)["item_id"].astype(str))}
    users = pd.read_parquet(artifact.path / "users.parquet")
    histories = [np.array([index[i] for i in h if i in index], dtype=np.int64)
                 for h in users["history"].head(EXAMPLE_ROWS)]
    histories = [h for h in histories if len(h)] or [np.arange(min(n, 3))]
    histories += histories[:1] * max(0, 2 - len(histories))  # export examples need every axis >= 2
    if max(len(h) for h in histories) < 2:
        histories[0] = np.repeat(histories[0], 2)
    user_rows = np.arange(len(histories)) % max(model.n_users, 1)
    return {"item": inputs.item_inputs(items),
            "user": inputs.user_inputs(histories, model.item_embeddings(), user_rows)}


def _write(path: Path, value: dict) -> Path:
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def _record(model: FusedRecommender, graphs: dict[str, tuple[nn.Module, GraphSignature]], backend: str,
            precision: str, threads: int, opset: int, prune_layers: int, checks: list[ParityCheck],
            quality: dict[str, Any], seconds: float, blockers: dict[str, list[str]]) -> dict[str, Any]:
    import onnx
    import onnxruntime

    graph_info = {}
    for kind, (_, signature) in graphs.items():
        entry: dict[str, Any] = {"signature": signature.as_json()}
        if backend != "torch":
            entry["onnx"] = FILES[kind]
        if backend == "tensorrt":
            entry["plan"] = PLANS[kind]
        if backend == "torch":
            entry["cuda_graph_blockers"] = blockers[kind]
        graph_info[kind] = entry
    return {
        "backend": backend, "precision": precision, "opset": opset, "threads": threads,
        "prune_layers": prune_layers, "graphs": graph_info,
        "encoders": {e.spec.name: {"max_length": e.max_length} for e in model.text_encoders()},
        "history_length": model.config.history_length, "user_tower": model.config.user_tower,
        "parity": [c.as_json() for c in checks], "quality": quality, "seconds": round(seconds, 2),
        "versions": {"fusionrec": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__},
    }
