"""What a report is drawn from: a verified artifact's metrics.json and spec, plus the optional
comparison.json (written by `fusionrec run`) and latency.json (written after a serving run).

The artifact is opened with `fusionrec.artifact.load_artifact`, so a report is never drawn from files that
differ from MANIFEST.json. The two optional files are contracts with other commands: they are validated here
(the UserError names the file and the field), and a missing one gives a note in the report, not an error.
Unknown keys in them are ignored, so a writer can add fields without breaking older reports. metrics.json is
our own pipeline's output: sections an older artifact lacks are simply left out of the report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fusionrec.artifact import Artifact, load_artifact
from fusionrec.errors import UserError, format_validation_error
from fusionrec.spec import SELECTION_METRIC_DEFAULTS

COMPARISON_NAME = "comparison.json"
LATENCY_NAME = "latency.json"
# The test metrics drawn as bars per task (the table shows every metric).
MAIN_METRICS = {"ranking": ("ndcg@10", "hr@10"), "ctr": ("auc",), "rating": ("rmse",)}
QUANTILE_KEYS = ("p5", "p25", "p50", "p75", "p95")


# --- the optional files' contracts ----------------------------------------------------------------------------


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ComparisonRow(_Lenient):
    """One model of a comparison: fused, a single encoder, or a baseline, fitted on the same split."""

    model: str = Field(min_length=1)
    group: Literal["fused", "single", "baseline"]
    valid: dict[str, float] = Field(default_factory=dict)
    test: dict[str, float]
    seconds: float | None = Field(None, ge=0)  # setup + train (files from before the split have only this)
    setup_seconds: float | None = Field(None, ge=0)  # building the model: LMs, catalogue embedding
    train_seconds: float | None = Field(None, ge=0)  # fitting and testing


class Comparison(_Lenient):
    """comparison.json: `{task, split, rows: [...]}`, optionally the `seed` every row used, `source` (where the
    numbers come from) and the selection: `select` (fused | best), the validation `metric` that selects,
    whether `higher_is_better`, the row that `shipped`, and whether `fused_beats_members` by validation."""

    task: Literal["ranking", "ctr", "rating"]
    split: str
    rows: list[ComparisonRow] = Field(min_length=1)
    seed: int | None = None
    source: str | None = None
    select: Literal["fused", "best"] | None = None
    metric: str | None = None
    higher_is_better: bool = True
    shipped: str | None = None
    fused_beats_members: bool | None = None


class Latency(_Lenient):
    """latency.json: per-request latencies of the last serving run, optionally `what` was measured."""

    requests: int = Field(ge=1)
    latencies_ms: list[float] = Field(min_length=1)
    endpoint: str
    when: datetime
    what: str | None = None
    failed: int | None = Field(None, ge=0)  # requests that did not answer 200 (not in latencies_ms)
    warmup: int | None = Field(None, ge=0)  # requests sent first and not timed

    @field_validator("latencies_ms")
    @classmethod
    def _finite(cls, values: list[float]) -> list[float]:
        bad = [v for v in values if not math.isfinite(v) or v < 0]
        if bad:
            raise ValueError(f"latencies must be finite and >= 0 ms, got {bad[:3]}")
        return values

    def percentile(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.latencies_ms, dtype=np.float64), q))


# --- views of metrics.json ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightSpread:
    """How one model's fusion weight varies across users. Quantiles and the histogram are absent in
    artifacts written before `summarise_weights` stored them."""

    mean: float
    std: float
    min: float
    max: float
    quantiles: dict[str, float] = field(default_factory=dict)  # p5, p25, p50, p75, p95
    edges: list[float] = field(default_factory=list)  # histogram bin edges, shared by every model
    counts: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class FusionWeights:
    method: str
    kind: str  # "global" (one weight per model) or "per_example" (attention, gating)
    models: list[str]
    global_weights: dict[str, float]
    users: int = 0
    per_user: dict[str, WeightSpread] = field(default_factory=dict)


@dataclass(frozen=True)
class EncoderInfo:
    name: str
    source: str
    pooling: str
    max_length: int
    training: str  # "frozen", "fine-tuned" or "bottom k layers frozen"


@dataclass(frozen=True)
class ReportInputs:
    """Everything one report shows, read and checked before anything is drawn."""

    artifact: Path
    version: str
    task: str
    created: str
    updated: str | None
    manifest_files: int
    manifest_bytes: int
    fusionrec_version: str
    data: dict[str, Any]
    encoders: list[EncoderInfo]
    fusion: str  # e.g. "attention (dim 64)"
    history: list[dict[str, Any]]
    best_epoch: int | None
    selection_metric: str | None
    valid: dict[str, float]
    test: dict[str, float]
    seconds: float | None  # training time
    weights: FusionWeights | None
    comparison: Comparison | None
    latency: Latency | None

    @property
    def main_metrics(self) -> tuple[str, ...]:
        return MAIN_METRICS.get(self.task, ())


def read_inputs(path: str | Path) -> ReportInputs:
    """Verify the artifact at `path` (sha256 of every file against MANIFEST.json) and read what the report
    shows; raises UserError naming the file for a tampered artifact or a malformed optional file."""
    artifact = load_artifact(path)
    metrics = artifact.metrics
    spec = artifact.spec
    task = str(metrics.get("task", spec.task.type))
    history = [row for row in metrics.get("history", []) if isinstance(row, dict)]
    comparison = _read_optional(artifact, COMPARISON_NAME, Comparison)
    if comparison is not None and comparison.task != task:
        raise UserError(f"artifact {artifact.path}: {COMPARISON_NAME} is for task {comparison.task!r} but the "
                        f"model's task is {task!r}", field=f"{COMPARISON_NAME}: task")
    files = artifact.manifest["files"]
    return ReportInputs(
        artifact=artifact.path, version=artifact.version, task=task,
        created=str(artifact.manifest.get("created", "unknown")), updated=artifact.manifest.get("updated"),
        manifest_files=len(files), manifest_bytes=sum(int(entry["size"]) for entry in files.values()),
        fusionrec_version=str(artifact.manifest.get("fusionrec_version", "unknown")),
        data=dict(metrics.get("data", {})),
        encoders=[_encoder_info(e) for e in spec.encoders],
        fusion=f"{spec.fusion.method} (dim {spec.fusion.dim})",
        history=history, best_epoch=metrics.get("best_epoch"),
        selection_metric=_selection_metric(artifact, task, history),
        valid=_floats(metrics.get("valid", {})), test=_floats(metrics.get("test", {})),
        seconds=float(metrics["seconds"]) if isinstance(metrics.get("seconds"), (int, float)) else None,
        weights=_fusion_weights(metrics.get("fusion_weights")),
        comparison=comparison, latency=_read_optional(artifact, LATENCY_NAME, Latency),
    )


def comparison_or_self(inputs: ReportInputs) -> Comparison | None:
    """comparison.json, or without it a one-row comparison of this model's own metrics (None if it has none)."""
    if inputs.comparison is not None:
        return inputs.comparison
    if not inputs.test:
        return None
    return Comparison(task=inputs.task, split="the artifact's own test split", rows=[ComparisonRow(
        model=inputs.version, group="fused", valid=inputs.valid, test=inputs.test, seconds=inputs.seconds)])


def _read_optional(artifact: Artifact, name: str, model: type[BaseModel]) -> Any:
    file = artifact.file(name)
    if file is None:
        return None
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"artifact {artifact.path}: {name} is not valid JSON: {exc}", field=name) from None
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        problems = format_validation_error(exc)
        lines = "\n".join(f"  {where or '(top level)'}: {message}" for where, message in problems)
        first = problems[0][0] if problems else ""
        raise UserError(f"artifact {artifact.path}: {name} is invalid:\n{lines}",
                        field=f"{name}: {first}" if first else name) from None


def _encoder_info(encoder: Any) -> EncoderInfo:
    if encoder.freeze:
        training = "frozen"
    elif encoder.freeze_layers:
        training = f"bottom {encoder.freeze_layers} layers frozen"
    else:
        training = "fine-tuned"
    return EncoderInfo(encoder.name, encoder.source, encoder.pooling, encoder.max_length, training)


def _selection_metric(artifact: Artifact, task: str, history: list[dict[str, Any]]) -> str | None:
    """The validation metric that chose the checkpoint: the spec's, else the task's default, if the
    history recorded it."""
    stopping = artifact.spec.training.early_stopping
    chosen = stopping.metric_for(task) if task in SELECTION_METRIC_DEFAULTS else stopping.metric
    recorded = {key[len("valid_"):] for row in history for key in row if key.startswith("valid_")}
    return chosen if chosen in recorded else None


def _floats(values: Any) -> dict[str, float]:
    if not isinstance(values, dict):
        return {}
    return {str(k): float(v) for k, v in values.items() if isinstance(v, (int, float))}


def _fusion_weights(report: Any) -> FusionWeights | None:
    if not isinstance(report, dict) or not report.get("models"):
        return None
    models = [str(m) for m in report["models"]]
    per_user_doc = report.get("per_user") or {}
    per_user = {}
    for name in models:
        stats = per_user_doc.get(name)
        if not isinstance(stats, dict):
            continue
        histogram = stats.get("histogram") or {}
        per_user[name] = WeightSpread(
            mean=float(stats["mean"]), std=float(stats["std"]), min=float(stats["min"]), max=float(stats["max"]),
            quantiles={k: float(stats[k]) for k in QUANTILE_KEYS if k in stats},
            edges=[float(e) for e in histogram.get("edges", [])], counts=[int(c) for c in histogram.get("counts", [])])
    return FusionWeights(method=str(report.get("method", "")), kind=str(report.get("kind", "")), models=models,
                         global_weights=_floats(report.get("global", {})), users=int(per_user_doc.get("users", 0)),
                         per_user=per_user)
