"""The evaluate step: the fused model beside each of its encoders alone and beside the baselines, on the same
split and seed (design.md section 4), written to the artifact as comparison.json.

Single-encoder models are the run's own spec with one encoder (same fusion dim, task, data and training). With
`evaluation.select: best` the training job has already fitted them to choose what ships
(`fusionrec.train.candidates`), so their rows are read from the artifact's metrics.json instead of being fitted
twice; with `select: fused` they are fitted here, in this process, by the same loop the Ray Train workers run.
They and the baselines are fitted and tested by `fusionrec.train.evaluate` and tabulated by `fusionrec.protocol`
(split names, columns, `quality_table`, `selection_note`). Each is its own cached step, so adding a baseline fits
only that one.

comparison.json (read by `fusionrec report`):
    {"task", "split", "protocol", "seed", "select": fused|best, "metric" (the validation metric that selects),
     "higher_is_better", "shipped" (the row the artifact holds), "fused_beats_members" (by validation; null
     without single rows), "rows": [{"model", "group": fused|single|baseline, "valid": {metric: value},
     "test": {metric: value}, "setup_seconds", "train_seconds", "seconds" (their sum)}]}

Time is split because only training compares models: setup is one-time work (for the fused row, everything in
the train step that is not fitting or testing: starting Ray, loading and converting the LMs, embedding the
catalogue, writing the artifact; for the other rows, building the model).
"""

from __future__ import annotations

import json
from typing import Any

from fusionrec.metrics import parse_metric
from fusionrec.protocol import TABLE, split_name
from fusionrec.runner.build import Trained
from fusionrec.runner.cache import Record, step_key
from fusionrec.runner.inputs import baselines_of, trained_parts
from fusionrec.runner.steps import Done, RunContext, has_files, run_step
from fusionrec.spec import FusionRecommenderSpec
from fusionrec.train.candidates import (
    FUSED,
    SINGLE,
    fused_name,
    score,
    selection_metric_of,
    selects_best,
    single_encoder_spec,
    worker_threads,
)

COMPARISON_NAME = "comparison.json"
TIME_KEYS = ("setup_seconds", "train_seconds", "seconds")


def fit_single(spec: FusionRecommenderSpec, ctx: RunContext) -> dict[str, Any]:
    """Build, fit and test one model of `spec` on the run's split; its metrics and its setup and train time."""
    from fusionrec.model.fused import FusedRecommender
    from fusionrec.train.candidates import candidate_row
    from fusionrec.train.evaluate import fit_and_evaluate

    dataset, split = ctx.data()
    with worker_threads(spec):
        done = fit_and_evaluate(
            lambda: FusedRecommender.from_spec(spec, dataset, split, embedding_cache_dir=ctx.embeddings),
            split, spec.training)
    row = candidate_row(spec.encoders[0].name, SINGLE, done)
    return {key: row[key] for key in ("valid", "test", "best_epoch", *TIME_KEYS)}


def singles(ctx: RunContext, trained: Trained) -> list[tuple[str, Record]]:
    """One cached step per encoder (none when the spec has one encoder, compareSingles is off, or the training
    job already fitted them to select what ships)."""
    spec = trained.spec
    if not ctx.spec.evaluation.compare_singles or len(spec.encoders) < 2 or selects_best(spec):
        return []
    out = []
    for encoder in spec.encoders:
        alone = single_encoder_spec(spec, encoder)
        key = step_key("single", trained_parts(alone, trained.sources), {"data": trained.data_key})

        def work(alone: FusionRecommenderSpec = alone) -> Done:
            return _summarised(fit_single(alone, ctx), ctx.spec.task.type)

        record = run_step(ctx, f"single:{encoder.name}", key, work,
                          announce=f"{encoder.name} alone, same fusion dim and training")
        out.append((encoder.name, record))
    return out


def baselines(ctx: RunContext, data_key: str) -> list[tuple[str, Record]]:
    """One cached step per baseline the spec (or the task's default) names, fitted with the run's seed and the
    epoch budget of spec.evaluation.baselineEpochs (unset: by the data's size, which `data_key` fixes); the
    budget is in the key, so a new one refits."""
    from fusionrec.train.evaluate import run_baseline

    out = []
    seed = ctx.spec.training.seed
    epochs = ctx.spec.evaluation.baseline_epochs
    for name in baselines_of(ctx.spec):
        key = step_key("baseline", {"name": name, "task": ctx.spec.task.type, "seed": seed,
                                    "epochs": epochs if epochs is not None else "by-size"}, {"data": data_key})

        def work(name: str = name) -> Done:
            dataset, split = ctx.data()
            with worker_threads(ctx.spec):
                run = run_baseline(name, dataset, seed, split, epochs=epochs)
            times = {key: round(value, 2) for key in TIME_KEYS
                     if (value := getattr(run, key, None)) is not None}
            return _summarised({"valid": run.valid, "test": run.test, "best_epoch": run.best_epoch, **times},
                               ctx.spec.task.type)

        budget = f"{epochs} epochs" if epochs is not None else "epochs by data size"
        out.append((name, run_step(ctx, f"baseline:{name}", key, work, announce=f"seed {seed}, {budget}")))
    return out


def evaluate(ctx: RunContext, trained: Trained) -> dict[str, Any]:
    """Run the singles (unless the training job did) and the baselines, then write comparison.json into the
    artifact; returns its content."""
    single_rows = singles(ctx, trained)
    baseline_rows = baselines(ctx, trained.data_key)
    task = ctx.spec.task.type
    key = step_key("evaluate", {"version": ctx.spec.version, "select": ctx.spec.evaluation.select},
                   {"train": trained.hash, "rows": [r.key for _, r in single_rows + baseline_rows]})
    target = ctx.target

    def work() -> Done:
        artifact = ctx.artifact(target)
        if artifact is None:
            raise RuntimeError(f"the trained artifact {target} is missing or broken; run again to retrain it")
        metrics = artifact.metrics
        rows = _candidate_rows(trained, metrics) if selects_best(trained.spec) else \
            [_fused_row(trained, metrics), *(_row(name, SINGLE, record) for name, record in single_rows)]
        rows += [_row(name, "baseline", record) for name, record in baseline_rows]
        metric, higher = selection_metric_of(trained.spec)
        comparison = {"task": task, "split": split_name(task, ctx.spec.data.order),
                      "protocol": metrics.get("protocol"), "seed": ctx.spec.training.seed,
                      "dataset": metrics.get("data"), "select": ctx.spec.evaluation.select, "metric": metric,
                      "higher_is_better": higher, "shipped": trained.shipped or fused_name(trained.spec),
                      "fused_beats_members": fused_beats_members(rows, metric, higher), "rows": rows}
        files = ctx.add_files(target, {COMPARISON_NAME: (json.dumps(comparison, indent=2) + "\n").encode()})
        return Done({"files": files, "comparison": comparison}, _best_line(comparison))

    def verify(record: Record) -> bool:
        return has_files(ctx.artifact(target), record.output["files"])

    return run_step(ctx, "evaluate", key, work, verify).output["comparison"]


def fused_beats_members(rows: list[dict[str, Any]], metric: str, higher_is_better: bool) -> bool | None:
    """Whether the fused row validates strictly better than every single-encoder row; None without singles
    (nothing to beat)."""
    fused = [row for row in rows if row["group"] == FUSED]
    members = [row for row in rows if row["group"] == SINGLE]
    if not fused or not members:
        return None
    best_member = max(score(row, metric, higher_is_better) for row in members)
    return score(fused[0], metric, higher_is_better) > best_member


def _fused_row(trained: Trained, metrics: dict[str, Any]) -> dict[str, Any]:
    """The fused model's row from its own metrics.json; setup is the train step's time outside fitting and
    testing (an artifact from before the time split has no train time: both show "-")."""
    step = trained.record.output.get("train_seconds")
    train = metrics.get("train_seconds")
    return {"model": fused_name(trained.spec), "group": FUSED, "valid": metrics.get("valid", {}),
            "test": metrics.get("test", {}), "best_epoch": metrics.get("best_epoch"),
            **_split_time(step, train), "encoders": [e.name for e in trained.spec.encoders]}


def _candidate_rows(trained: Trained, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows the training job fitted to select what ships (metrics.json's "selection"); the fused row's setup
    is the train step's time outside every candidate's fitting and testing and the singles' own setup."""
    selection = metrics.get("selection")
    if not isinstance(selection, dict) or not selection.get("candidates"):
        raise RuntimeError(f"{trained.record.output.get('artifact')}: metrics.json has no selection although "
                           "evaluation.select is best; run again with --no-cache to retrain it")
    rows = [dict(row) for row in selection["candidates"]]
    step = trained.record.output.get("train_seconds")
    singles_total = sum(float(row.get("seconds") or 0.0) for row in rows if row["group"] == SINGLE)
    for row in rows:
        if row["group"] == FUSED:
            outside = None if step is None else max(float(step) - singles_total, 0.0)
            row.update(_split_time(outside, row.get("train_seconds")))
            row["encoders"] = [e.name for e in trained.spec.encoders]
    return rows


def _split_time(total: float | None, train: float | None) -> dict[str, float | None]:
    """{"setup_seconds", "train_seconds", "seconds"} of a step that took `total` and trained for `train`."""
    if total is None or train is None:
        return {"setup_seconds": None, "train_seconds": train, "seconds": total}
    return {"setup_seconds": round(max(float(total) - float(train), 0.0), 2), "train_seconds": round(float(train), 2),
            "seconds": round(float(total), 2)}


def _summarised(result: dict[str, Any], task: str) -> Done:
    _, tests = TABLE[task]
    shown = ", ".join(f"{m} {result['test'][m]:.4f}" for m in tests if m in result["test"])
    return Done(result, f"test {shown}")


def _row(name: str, group: str, record: Record) -> dict[str, Any]:
    """A row from a cached step's output; times it did not record (older records) are left out."""
    out = record.output
    return {"model": name, "group": group, "valid": out["valid"], "test": out["test"],
            "best_epoch": out.get("best_epoch"), **{key: out[key] for key in TIME_KEYS if key in out}}


def _best_line(comparison: dict[str, Any]) -> str:
    metric = TABLE[comparison["task"]][1][1 if comparison["task"] == "ranking" else 0]
    rows = [r for r in comparison["rows"] if metric in r["test"]]
    if not rows:
        return ""
    best = (max if parse_metric(metric)[0].higher_is_better else min)(rows, key=lambda r: r["test"][metric])
    return f"best test {metric}: {best['model']} {best['test'][metric]:.4f}"
