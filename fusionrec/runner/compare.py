"""The evaluate step: the fused model beside each of its encoders alone and beside the baselines, on the same
split and seed (design.md section 4), written to the artifact as comparison.json.

Single-encoder models are the run's own spec with one encoder (same fusion dim, task, data and training),
fitted in this process by the same loop the Ray Train workers run; they and the baselines are fitted and tested
by `fusionrec.train.evaluate` and tabulated by `fusionrec.protocol` (split names, columns, `quality_table`). Each
is its own cached step, so adding a baseline fits only that one.

comparison.json (read by `fusionrec report`):
    {"task", "split", "protocol", "seed", "rows": [{"model", "group": fused|single|baseline,
     "valid": {metric: value}, "test": {metric: value}, "seconds"}]}
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fusionrec.metrics import parse_metric
from fusionrec.protocol import TABLE, split_name
from fusionrec.runner.build import Trained
from fusionrec.runner.cache import Record, step_key
from fusionrec.runner.inputs import baselines_of, single_encoder_spec, trained_parts
from fusionrec.runner.steps import Done, RunContext, has_files, run_step
from fusionrec.spec import FusionRecommenderSpec

COMPARISON_NAME = "comparison.json"


@contextmanager
def worker_threads(spec: FusionRecommenderSpec) -> Iterator[None]:
    """Fit with the torch threads one Ray Train worker of this spec gets (its CPUs), so the seconds column
    compares like with like; on a busy machine one thread per fit also beats two fighting for the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(spec.training.cpus_per_worker)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_single(spec: FusionRecommenderSpec, ctx: RunContext) -> dict[str, Any]:
    """Build, fit and test one model of `spec` on the run's split; its metrics and wall time."""
    from fusionrec.model.fused import FusedRecommender
    from fusionrec.train.evaluate import fit_and_evaluate

    dataset, split = ctx.data()
    with worker_threads(spec):
        done = fit_and_evaluate(
            lambda: FusedRecommender.from_spec(spec, dataset, split, embedding_cache_dir=ctx.embeddings),
            split, spec.training)
    return {"valid": done.fit.best_valid, "test": done.test, "best_epoch": done.fit.best_epoch,
            "seconds": round(done.seconds, 2)}


def singles(ctx: RunContext, trained: Trained) -> list[tuple[str, Record]]:
    """One cached step per encoder (none when the spec has one encoder, or compareSingles is off)."""
    spec = trained.spec
    if not ctx.spec.evaluation.compare_singles or len(spec.encoders) < 2:
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
    """One cached step per baseline the spec (or the task's default) names, fitted with the run's seed."""
    from fusionrec.train.evaluate import run_baseline

    out = []
    seed = ctx.spec.training.seed
    for name in baselines_of(ctx.spec):
        key = step_key("baseline", {"name": name, "task": ctx.spec.task.type, "seed": seed}, {"data": data_key})

        def work(name: str = name) -> Done:
            dataset, split = ctx.data()
            with worker_threads(ctx.spec):
                run = run_baseline(name, dataset, seed, split)
            return _summarised({"valid": run.valid, "test": run.test, "best_epoch": run.best_epoch,
                                "seconds": round(run.seconds, 2)}, ctx.spec.task.type)

        out.append((name, run_step(ctx, f"baseline:{name}", key, work, announce=f"seed {seed}")))
    return out


def evaluate(ctx: RunContext, trained: Trained) -> dict[str, Any]:
    """Run the singles and baselines, then write comparison.json into the artifact; returns its content."""
    single_rows = singles(ctx, trained)
    baseline_rows = baselines(ctx, trained.data_key)
    task = ctx.spec.task.type
    key = step_key("evaluate", {"version": ctx.spec.version},
                   {"train": trained.hash, "rows": [r.key for _, r in single_rows + baseline_rows]})
    target = ctx.target

    def work() -> Done:
        artifact = ctx.artifact(target)
        if artifact is None:
            raise RuntimeError(f"the trained artifact {target} is missing or broken; run again to retrain it")
        fused = artifact.metrics
        rows = [{"model": f"fused-{ctx.spec.fusion.method}", "group": "fused", "valid": fused.get("valid", {}),
                 "test": fused.get("test", {}), "seconds": trained.record.output.get("train_seconds", 0.0),
                 "encoders": [e.name for e in trained.spec.encoders]}]
        rows += [_row(name, "single", record) for name, record in single_rows]
        rows += [_row(name, "baseline", record) for name, record in baseline_rows]
        comparison = {"task": task, "split": split_name(task, ctx.spec.data.order), "protocol": fused.get("protocol"),
                      "seed": ctx.spec.training.seed, "dataset": fused.get("data"), "rows": rows}
        files = ctx.add_files(target, {COMPARISON_NAME: (json.dumps(comparison, indent=2) + "\n").encode()})
        return Done({"files": files, "comparison": comparison}, _best_line(comparison))

    def verify(record: Record) -> bool:
        return has_files(ctx.artifact(target), record.output["files"])

    return run_step(ctx, "evaluate", key, work, verify).output["comparison"]


def _summarised(result: dict[str, Any], task: str) -> Done:
    _, tests = TABLE[task]
    shown = ", ".join(f"{m} {result['test'][m]:.4f}" for m in tests if m in result["test"])
    return Done(result, f"test {shown}")


def _row(name: str, group: str, record: Record) -> dict[str, Any]:
    out = record.output
    return {"model": name, "group": group, "valid": out["valid"], "test": out["test"], "seconds": out["seconds"]}


def _best_line(comparison: dict[str, Any]) -> str:
    metric = TABLE[comparison["task"]][1][1 if comparison["task"] == "ranking" else 0]
    rows = [r for r in comparison["rows"] if metric in r["test"]]
    if not rows:
        return ""
    best = (max if parse_metric(metric)[0].higher_is_better else min)(rows, key=lambda r: r["test"][metric])
    return f"best test {metric}: {best['model']} {best['test'][metric]:.4f}"
