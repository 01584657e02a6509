"""The protocol runner (design.md section 4): fit each baseline on the fixed splits for each seed, evaluate it
on validation and test, and summarise mean and spread over seeds, so every table the project publishes comes
from the same code path.

Ranking baselines use the chronological leave-one-out split and full ranking with seen items excluded; CTR
baselines use the random 80/10/10 split with seed 2020 whatever the model seed, so seeds vary the model,
never the data.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from fusionrec.baselines.fit import fit_pointwise, fit_ranking
from fusionrec.baselines.registry import get_baseline
from fusionrec.data.schema import Dataset
from fusionrec.data.splits import LeaveOneOutSplit, RandomSplit, leave_one_out, random_split
from fusionrec.files import atomic_write_json as write_json  # noqa: F401  (public: results files are written atomically)
from fusionrec.metrics import evaluate_pointwise, evaluate_ranking

log = logging.getLogger(__name__)

CTR_SPLIT_SEED = 2020
RANKING_CUTOFFS = (5, 10, 20)
CTR_METRICS = ("auc", "logloss")
QUICK_EPOCHS = 2
# The columns of the printed tables, (validation, test) per task; the JSON keeps every metric.
TABLE_METRICS = {"ranking": (("ndcg@10", "hr@10"), ("hr@10", "ndcg@10", "mrr@10")), "ctr": (("auc",), CTR_METRICS)}


@dataclass
class RunResult:
    """One baseline fitted with one seed."""

    baseline: str
    task: str
    seed: int
    valid: dict[str, float]
    test: dict[str, float]
    best_epoch: int
    epochs_run: int
    seconds: float


@dataclass
class Results:
    dataset: str
    seeds: list[int]
    runs: list[RunResult] = field(default_factory=list)
    quick: bool = False

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per baseline: mean and std over seeds (sample std, 0 for one seed) of every metric, epoch and time."""
        out: dict[str, dict[str, Any]] = {}
        for name in dict.fromkeys(run.baseline for run in self.runs):
            runs = [run for run in self.runs if run.baseline == name]
            values: dict[str, list[float]] = {}
            for run in runs:
                for stage in ("valid", "test"):
                    for metric, value in getattr(run, stage).items():
                        values.setdefault(f"{stage}_{metric}", []).append(value)
                values.setdefault("best_epoch", []).append(run.best_epoch)
                values.setdefault("seconds", []).append(run.seconds)
            out[name] = {"task": runs[0].task, "seeds": [run.seed for run in runs],
                         **{key: _mean_std(vals) for key, vals in values.items()}}
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "protocol": {
                "ranking": "chronological leave-one-out, full ranking over all items, seen items excluded, "
                           "checkpoint selected by valid ndcg@10",
                "ctr": f"label = rating >= 4, random 80/10/10 split (seed {CTR_SPLIT_SEED}), selected by valid auc",
            },
            "seeds": self.seeds,
            "quick": self.quick,
            "summary": self.summary(),
            "runs": [asdict(run) for run in self.runs],
        }

    def render(self) -> str:
        """Markdown tables (one per task) of test metrics as mean ± std over seeds."""
        summary = self.summary()
        parts = []
        for task, (valid, test) in TABLE_METRICS.items():
            names = [name for name, row in summary.items() if row["task"] == task]
            if not names:
                continue
            header = ["baseline", *(f"valid {m}" for m in valid), *(f"test {m}" for m in test),
                      "best epoch", "seconds"]
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for name in names:
                row = summary[name]
                cells = [name, *(_cell(row.get(f"valid_{m}")) for m in valid),
                         *(_cell(row.get(f"test_{m}")) for m in test),
                         _cell(row["best_epoch"], digits=1), _cell(row["seconds"], digits=1)]
                lines.append("| " + " | ".join(cells) + " |")
            parts.append(f"{task} ({self.dataset}, seeds {', '.join(map(str, self.seeds))}):\n" + "\n".join(lines))
        return "\n\n".join(parts)


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0}


def _cell(stats: dict[str, float] | None, digits: int = 4) -> str:
    if stats is None:
        return "-"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_baseline(name: str, dataset: Dataset, seed: int, split: LeaveOneOutSplit | RandomSplit,
                 quick: bool = False) -> RunResult:
    """Build, fit and evaluate one baseline with one seed on an existing split of `dataset`."""
    baseline = get_baseline(name)
    config = replace(baseline.fit, seed=seed)
    if quick:
        config = replace(config, epochs=min(config.epochs, QUICK_EPOCHS))
    seed_everything(seed)  # before building: the seed also fixes the initial weights
    model = baseline.build(dataset, split)
    device = torch.device(config.device)
    if baseline.task == "ranking":
        result = fit_ranking(model, split, config, metric=baseline.selection_metric, log_every=10)
        test = evaluate_ranking(lambda users, histories: model.full_sort_predict(users.to(device), histories),
                                split, "test", ks=RANKING_CUTOFFS)
    else:
        result = fit_pointwise(model, split, config, metric=baseline.selection_metric, log_every=10)
        rows = model.encode_rows(split, "test")
        test = evaluate_pointwise(lambda batch: model.predict({k: v.to(device) for k, v in batch.items()}),
                                  rows, metrics=CTR_METRICS)
    log.info("%s seed %d: best epoch %d, test %s (%.1f s)", name, seed, result.best_epoch,
             ", ".join(f"{k} {v:.4f}" for k, v in test.items()), result.seconds)
    return RunResult(baseline=name, task=baseline.task, seed=seed, valid=result.best_valid, test=test,
                     best_epoch=result.best_epoch, epochs_run=len(result.history), seconds=result.seconds)


def evaluate_baselines(dataset: Dataset, names: Sequence[str], seeds: Sequence[int],
                       quick: bool = False) -> Results:
    """Every named baseline with every seed; the splits are made once and shared by all of them."""
    baselines = [get_baseline(name) for name in names]  # unknown names fail before any fitting
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    splits: dict[str, LeaveOneOutSplit | RandomSplit] = {}
    if any(b.task == "ranking" for b in baselines):
        splits["ranking"] = leave_one_out(dataset)
    if any(b.task == "ctr" for b in baselines):
        splits["ctr"] = random_split(dataset, seed=CTR_SPLIT_SEED)
    results = Results(dataset=dataset.name, seeds=list(seeds), quick=quick)
    for baseline in baselines:
        for seed in seeds:
            started = time.perf_counter()
            run = run_baseline(baseline.name, dataset, seed, splits[baseline.task], quick=quick)
            run.seconds = time.perf_counter() - started  # building and testing included
            results.runs.append(run)
    return results
