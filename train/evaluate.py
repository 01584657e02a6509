"""Fit and test any model by the protocol (design.md section 4): seed, build, fit through the one loop
(`fusionrec.train.loop.fit`), test at the selected epoch. The fused model (`fusionrec run`'s single-encoder rows,
`bench/quality.py`) and the baselines (`fusionrec evaluate --baselines`, `bench/baselines.py`, the runner's
baseline rows) all come through `fit_and_evaluate`, so every row of a comparison is produced the same way.

The rules themselves (splits, seeds, cutoffs, scoring, the tables) are `fusionrec.protocol`'s; this module adds
only what needs the training loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fusionrec.baselines.registry import get_baseline
from fusionrec.data.schema import Dataset
from fusionrec.data.splits import LeaveOneOutSplit, RandomSplit
from fusionrec.protocol import Results, RunResult, evaluate_model, make_split, seed_everything
from fusionrec.spec import TrainingSpec
from fusionrec.train.loop import FitHooks, FitResult, fit

log = logging.getLogger(__name__)

QUICK_EPOCHS = 2  # `--quick`: checks the pipeline, not the numbers
# The published baseline numbers are fp32 on CPU; on CUDA the loop trains under bf16 autocast, which moves them.
BASELINE_DEVICE = "cpu"


@dataclass
class Evaluated:
    """A model fitted and tested: the fitted model, its fit (best validation metrics, best epoch, history), its
    test metrics and the wall time of building, fitting and testing it."""

    model: nn.Module
    fit: FitResult
    test: dict[str, float]
    seconds: float

    def run(self, name: str, task: str, seed: int) -> RunResult:
        return RunResult(baseline=name, task=task, seed=seed, valid=self.fit.best_valid, test=self.test,
                         best_epoch=self.fit.best_epoch, epochs_run=len(self.fit.history), seconds=self.seconds)


def fit_and_evaluate(build: Callable[[], nn.Module], split: LeaveOneOutSplit | RandomSplit, training: TrainingSpec,
                     *, device: str | torch.device | None = None, log_every: int = 1, hooks: FitHooks | None = None,
                     checkpoint_dir: str | Path | None = None, resume: bool = False) -> Evaluated:
    """Seed with `training.seed`, build the model, fit it on `split` (validation selects the epoch), test it.

    The seed is set before `build()`, so it fixes the initial weights too; load anything that draws from torch's
    generator without being part of the run (e.g. pretrained LMs) before calling, so a run's numbers depend on
    its seed alone. `hooks`, `checkpoint_dir` and `resume` go to `fusionrec.train.loop.fit` (Ray Train, resumable
    runs).
    """
    started = time.perf_counter()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    seed_everything(training.seed)
    model = build()
    result = fit(model, split, training, device=device, log_every=log_every, hooks=hooks,
                 checkpoint_dir=checkpoint_dir, resume=resume)
    test = evaluate_model(model, split, "test", device=device)
    return Evaluated(model, result, test, time.perf_counter() - started)


def baseline_training(name: str, seed: int, quick: bool = False) -> TrainingSpec:
    """The baseline's registered training settings with the run's seed (and at most `QUICK_EPOCHS` when quick)."""
    training = get_baseline(name).training
    changes: dict[str, int] = {"seed": seed}
    if quick:
        changes["epochs"] = min(training.epochs, QUICK_EPOCHS)
    return training.model_copy(update=changes)


def run_baseline(name: str, dataset: Dataset, seed: int, split: LeaveOneOutSplit | RandomSplit,
                 quick: bool = False, device: str | torch.device = BASELINE_DEVICE) -> RunResult:
    """Build, fit and test one baseline with one seed on an existing split of `dataset`."""
    baseline = get_baseline(name)
    done = fit_and_evaluate(lambda: baseline.build(dataset, split), split, baseline_training(name, seed, quick),
                            device=device, log_every=10)
    log.info("%s seed %d: best epoch %d, test %s (%.1f s)", name, seed, done.fit.best_epoch,
             ", ".join(f"{k} {v:.4f}" for k, v in done.test.items()), done.seconds)
    return done.run(name, baseline.task, seed)


def evaluate_baselines(dataset: Dataset, names: Sequence[str], seeds: Sequence[int], quick: bool = False,
                       device: str | torch.device = BASELINE_DEVICE, order: str = "time") -> Results:
    """Every named baseline with every seed; each task's split is made once and shared by all of them."""
    baselines = [get_baseline(name) for name in names]  # unknown names fail before any fitting
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    splits = {task: make_split(dataset, task, order) for task in dict.fromkeys(b.task for b in baselines)}
    results = Results(dataset=dataset.name, seeds=list(seeds), quick=quick, order=order)
    for baseline in baselines:
        for seed in seeds:
            results.runs.append(run_baseline(baseline.name, dataset, seed, splits[baseline.task], quick=quick,
                                             device=device))
    return results
