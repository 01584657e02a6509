"""The evaluation protocol (design.md section 4), in one place: how data is split for each task, which seeds
are fixed, which cutoffs and metrics are reported, how a fitted model is scored, and the tables the results are
printed in (their columns, mean ± std over seeds). The runner, the CLI, the training job and the benches all call
these, so every number the project publishes comes from the same rules.

Fitting is not here: `fusionrec.train.evaluate` seeds, builds, fits (through the one loop, `fusionrec.train.loop`)
and tests any model, fused or baseline, by these rules. This module imports no training code, so the compiler
and the serving side can use the split and the scoring without the training loop.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from fusionrec.data.sampling import histories_from_frame
from fusionrec.data.schema import Dataset
from fusionrec.data.splits import RANDOM_SPLIT_SEED, LeaveOneOutSplit, RandomSplit, leave_one_out, random_split
from fusionrec.metrics import RANKING_CUTOFFS, evaluate_pointwise, evaluate_ranking, selection_value

CTR_SPLIT_SEED = RANDOM_SPLIT_SEED  # the protocol's random split is fixed; seeds vary the model, never the data
DEFAULT_METRIC = {"ranks": "ndcg@10", "labels": "auc", "ratings": "rmse"}
REPORTED = {"labels": ("auc", "logloss"), "ratings": ("rmse", "mae")}
PROTOCOL = {
    "ranking": "chronological leave-one-out; full ranking over all items, seen items excluded; "
               "checkpoint selected by validation",
    "ctr": f"label = rating >= 4; random 80/10/10 split by interaction (seed {CTR_SPLIT_SEED}); AUC, LogLoss",
    "rating": f"random 80/10/10 split by interaction (seed {CTR_SPLIT_SEED}); RMSE, MAE",
}
# The split in a table's title, per task.
SPLIT_NAMES = {"ranking": "leave-one-out (chronological)", "ctr": f"random 80/10/10 (seed {CTR_SPLIT_SEED})",
               "rating": f"random 80/10/10 (seed {CTR_SPLIT_SEED})"}
# data.order none: no timestamp is trusted, every table and report says the order was random.
RANDOM_ORDER = f"random per-user order (seed {CTR_SPLIT_SEED}), data.order none"
PROTOCOL_ORDER_FREE = {
    "ranking": f"leave-one-out over a {RANDOM_ORDER}: one random held-out item per user; full ranking over all "
               "items, seen items excluded; checkpoint selected by validation",
    "ctr": f"{PROTOCOL['ctr']}; histories in a {RANDOM_ORDER}",
    "rating": f"{PROTOCOL['rating']}; histories in a {RANDOM_ORDER}",
}
SPLIT_NAMES_ORDER_FREE = {"ranking": f"leave-one-out (random per-user hold-out, seed {CTR_SPLIT_SEED})",
                          "ctr": f"{SPLIT_NAMES['ctr']}, random order",
                          "rating": f"{SPLIT_NAMES['rating']}, random order"}


def protocol_text(task: str, order: str = "time") -> str:
    """The protocol's one-line description for a task and a data.order."""
    return (PROTOCOL_ORDER_FREE if order == "none" else PROTOCOL)[task]


def split_name(task: str, order: str = "time") -> str:
    """The split as a table's title names it, for a task and a data.order."""
    return (SPLIT_NAMES_ORDER_FREE if order == "none" else SPLIT_NAMES)[task]


# The columns of every printed table, (validation metric, test metrics) per task; the JSON keeps every metric.
TABLE = {"ranking": (DEFAULT_METRIC["ranks"], ("hr@10", "ndcg@10", "mrr@10")),
         "ctr": (DEFAULT_METRIC["labels"], REPORTED["labels"]),
         "rating": (DEFAULT_METRIC["ratings"], REPORTED["ratings"])}


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch seeded alike; called before a model is built, so the seed fixes its initial
    weights too (NumPy's legacy seed takes only 32 bits)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_split(dataset: Dataset, task: str, order: str = "time") -> LeaveOneOutSplit | RandomSplit:
    """The protocol's split for a task type and a data.order (spec.data.order)."""
    if task == "ranking":
        return leave_one_out(dataset, order=order, seed=CTR_SPLIT_SEED)
    return random_split(dataset, seed=CTR_SPLIT_SEED, order=order)


def evaluate_model(model: Any, split: LeaveOneOutSplit | RandomSplit, stage: str = "test",
                   device: str | torch.device | None = None) -> dict[str, float]:
    """The protocol's metrics of a fitted model at `stage`, by the same evaluators as the baselines."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    if isinstance(split, LeaveOneOutSplit):
        return evaluate_ranking(lambda users, histories: model.full_sort_predict(users.to(device), histories),
                                split, stage, ks=RANKING_CUTOFFS)
    rows = model.encode_rows(split, stage)
    return evaluate_pointwise(lambda batch: model.predict({k: v.to(device) for k, v in batch.items()}), rows,
                              metrics=REPORTED[getattr(model, "evaluates", "labels")])


def user_histories(split: LeaveOneOutSplit | RandomSplit, n_users: int) -> list[np.ndarray]:
    """What each user has done before the test stage, oldest first (the model's input at serving time)."""
    if isinstance(split, LeaveOneOutSplit):
        return split.history("test")
    return histories_from_frame(split.train, n_users)


# --- results: one run per (model, seed), summarised over seeds, printed as tables ---------------------------------


@dataclass
class RunResult:
    """One model (a baseline, or a named fused configuration) fitted with one seed and tested."""

    baseline: str  # the model's name (the JSON's historical key)
    task: str
    seed: int
    valid: dict[str, float]
    test: dict[str, float]
    best_epoch: int
    epochs_run: int
    seconds: float  # setup + train; results written before the split have only this
    setup_seconds: float | None = None  # building: loading and converting LMs, embedding the catalogue
    train_seconds: float | None = None  # fitting and testing


@dataclass
class Results:
    """Runs over several seeds: `summary()` gives mean and spread, `render()` the tables, `to_json()` everything."""

    dataset: str
    seeds: list[int]
    runs: list[RunResult] = field(default_factory=list)
    quick: bool = False
    order: str = "time"  # data.order: "none" names the random per-user order in every title

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per model: mean and std over seeds (sample std, 0 for one seed) of every metric, epoch and time."""
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
                for key in ("setup_seconds", "train_seconds"):
                    if getattr(run, key) is not None:
                        values.setdefault(key, []).append(getattr(run, key))
            out[name] = {"task": runs[0].task, "seeds": [run.seed for run in runs],
                         **{key: mean_std(vals) for key, vals in values.items()}}
        return out

    def to_json(self) -> dict[str, Any]:
        protocol = PROTOCOL_ORDER_FREE if self.order == "none" else PROTOCOL
        return {"dataset": self.dataset, "protocol": protocol, "order": self.order, "seeds": self.seeds,
                "quick": self.quick,
                "summary": self.summary(), "runs": [asdict(run) for run in self.runs]}

    def render(self, groups: Mapping[str, str] | None = None) -> str:
        """Markdown tables (one per task) of the protocol's columns as mean ± std over seeds; `groups` adds a
        group column (model name -> group). Time is split into setup (building the model) and train (fitting
        and testing), then their total; results recorded before that split show "-" in both and the total."""
        summary = self.summary()
        parts = []
        for task, (valid, tests) in TABLE.items():
            names = [name for name, row in summary.items() if row["task"] == task]
            if not names:
                continue
            header = ["model", *(["group"] if groups else []), f"valid {valid}", *(f"test {m}" for m in tests),
                      "best epoch", "setup s", "train s", "seconds"]
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for name in names:
                row = summary[name]
                cells = [name, *([groups.get(name, "?")] if groups else []), cell(row.get(f"valid_{valid}")),
                         *(cell(row.get(f"test_{m}")) for m in tests),
                         cell(row["best_epoch"], digits=1), cell(row.get("setup_seconds"), digits=1),
                         cell(row.get("train_seconds"), digits=1), cell(row.get("seconds"), digits=1)]
                lines.append("| " + " | ".join(cells) + " |")
            seeds = ", ".join(map(str, self.seeds))
            parts.append(f"{task} ({self.dataset}, {split_name(task, self.order)}, seeds {seeds}):\n"
                         + "\n".join(lines))
        return "\n\n".join(parts)


def mean_std(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0}


def cell(stats: dict[str, float] | float | None, digits: int = 4) -> str:
    """A table cell: "-" when missing, a value, or "mean ± std"."""
    if stats is None:
        return "-"
    if isinstance(stats, dict):
        return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"
    return f"{stats:.{digits}f}"


def quality_table(comparison: dict[str, Any]) -> str:
    """One seed's comparison (fused, then singles, then baselines) as an aligned text table of the protocol's
    columns; `comparison` is comparison.json: {"task", "split", "seed", "rows": [{"model", "group", "valid",
    "test", "setup_seconds", "train_seconds"}]}. Setup (building the model) and train (fitting and testing) are
    separate columns because only the second compares models; a file written before the split shows "-"."""
    task = comparison["task"]
    valid_metric, test_metrics = TABLE[task]
    header = ["model", "group", f"valid {valid_metric}", *(f"test {m}" for m in test_metrics), "setup s", "train s"]
    shipped = comparison.get("shipped")
    rows = [[row["model"] + (" (shipped)" if shipped and row["model"] == shipped else ""), row["group"],
             cell(row["valid"].get(valid_metric)), *(cell(row["test"].get(m)) for m in test_metrics),
             cell(row.get("setup_seconds"), digits=1), cell(row.get("train_seconds"), digits=1)]
            for row in comparison["rows"]]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:  # names to the left, numbers to the right
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in pairs)

    lines = [line(header), *(line(row) for row in rows)]
    return f"quality ({task}, {comparison['split']}, seed {comparison['seed']}):\n" + "\n".join(lines)


def selection_note(comparison: Mapping[str, Any]) -> str | None:
    """The line that says which model shipped and why, from comparison.json: with `select: best`, the winner
    and its validation value; with `select: fused`, a warning when an encoder alone validated better than the
    fused model (the fused model cannot beat its best member), naming both values and the setting that would
    ship the better one. None when there is nothing to say (no singles were fitted, or the fused model won)."""
    metric = comparison.get("metric")
    rows = [row for row in comparison.get("rows", []) if row.get("group") in ("fused", "single")]
    fused = next((row for row in rows if row.get("group") == "fused"), None)
    singles = [row for row in rows if row.get("group") == "single" and metric in row.get("valid", {})]
    if not metric or fused is None or metric not in fused.get("valid", {}):
        return None
    higher = comparison.get("higher_is_better", True)
    shipped = comparison.get("shipped") or fused["model"]
    if comparison.get("select") == "best":
        winner = next((row for row in rows if row["model"] == shipped), fused)
        others = ", ".join(f"{row['model']} {row['valid'][metric]:.4f}" for row in rows
                           if row is not winner and metric in row.get("valid", {}))
        why = "the fused model validated best" if winner is fused else \
            f"it validated better than the fused model ({fused['valid'][metric]:.4f})"
        return (f"shipped: {winner['model']} (evaluation.select: best): valid {metric} "
                f"{winner['valid'][metric]:.4f}; {why}" + (f"; others: {others}" if others else ""))
    if not singles:
        return None
    best = max(singles, key=lambda row: selection_value(row["valid"][metric], higher))
    if selection_value(best["valid"][metric], higher) <= selection_value(fused["valid"][metric], higher):
        return None
    return (f"warning: {best['model']} alone validated better than the shipped fused model (valid {metric} "
            f"{best['valid'][metric]:.4f} vs {fused['valid'][metric]:.4f}); set evaluation.select: best to "
            f"ship the best candidate")
