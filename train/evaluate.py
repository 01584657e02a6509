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
# Default baseline budgets (evaluation.baselineEpochs unset): the registered epochs up to this many interactions,
# scaled down in proportion above it, to no fewer than BUDGET_MIN_EPOCHS.
BUDGET_FULL_UP_TO = 200_000
BUDGET_MIN_EPOCHS = 20
# The published baseline numbers are fp32 on CPU; on CUDA the loop trains under bf16 autocast, which moves them.
BASELINE_DEVICE = "cpu"


@dataclass
class Evaluated:
    """A model fitted and tested: the fitted model, its fit (best validation metrics, best epoch, history), its
    test metrics, and its time in two parts. Building (loading and converting LMs, embedding the catalogue) is
    one-time work a served model never repeats and a cache can skip, so it is kept apart from the training
    (`fit.seconds`, which a resumed fit carries over from its checkpoint) and testing that rows compare."""

    model: nn.Module
    fit: FitResult
    test: dict[str, float]
    setup_seconds: float
    test_seconds: float

    @property
    def train_seconds(self) -> float:
        """Fitting (all epochs, including those a resumed fit restored) and testing."""
        return self.fit.seconds + self.test_seconds

    @property
    def seconds(self) -> float:
        """Setup and training together."""
        return self.setup_seconds + self.train_seconds

    def run(self, name: str, task: str, seed: int) -> RunResult:
        return RunResult(baseline=name, task=task, seed=seed, valid=self.fit.best_valid, test=self.test,
                         best_epoch=self.fit.best_epoch, epochs_run=len(self.fit.history), seconds=self.seconds,
                         setup_seconds=self.setup_seconds, train_seconds=self.train_seconds)


def fit_and_evaluate(build: Callable[[], nn.Module], split: LeaveOneOutSplit | RandomSplit, training: TrainingSpec,
                     *, device: str | torch.device | None = None, log_every: int = 1, hooks: FitHooks | None = None,
                     checkpoint_dir: str | Path | None = None, resume: bool = False) -> Evaluated:
    """Seed with `training.seed`, build the model, fit it on `split` (validation selects the epoch), test it.

    The seed is set before `build()`, so it fixes the initial weights too; load anything that draws from torch's
    generator without being part of the run (e.g. pretrained LMs) before calling, so a run's numbers depend on
    its seed alone. `hooks`, `checkpoint_dir` and `resume` go to `fusionrec.train.loop.fit` (Ray Train, resumable
    runs).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    seed_everything(training.seed)
    started = time.perf_counter()
    model = build()
    setup = time.perf_counter() - started
    result = fit(model, split, training, device=device, log_every=log_every, hooks=hooks,
                 checkpoint_dir=checkpoint_dir, resume=resume)
    started = time.perf_counter()
    test = evaluate_model(model, split, "test", device=device)
    return Evaluated(model, result, test, setup_seconds=setup, test_seconds=time.perf_counter() - started)


def baseline_budget(name: str, interactions: int | None = None, epochs: int | None = None) -> tuple[int, str]:
    """(epoch budget, why) of a baseline: `epochs` (evaluation.baselineEpochs) when given, else its registered
    (RecBole) budget up to `BUDGET_FULL_UP_TO` interactions, scaled down in proportion above that (to at least
    `BUDGET_MIN_EPOCHS`, never above the registered one): an epoch over ml-1m's million interactions costs ten
    of ml-100k's, and early stopping alone would let a 300-epoch BPR run for hours. A baseline that is not
    trained (Pop counts in one pass) keeps its single epoch whatever is asked."""
    baseline = get_baseline(name)
    registered = baseline.training.epochs
    if not baseline.trained:
        return registered, "not trained: one counting pass"
    if epochs is not None:
        return epochs, "evaluation.baselineEpochs"
    if interactions is None or interactions <= BUDGET_FULL_UP_TO:
        return registered, "registered budget"
    scaled = min(registered, max(BUDGET_MIN_EPOCHS, round(registered * BUDGET_FULL_UP_TO / interactions)))
    return scaled, f"registered {registered} scaled to {interactions:,} interactions"


def baseline_training(name: str, seed: int, quick: bool = False, *, interactions: int | None = None,
                      epochs: int | None = None) -> TrainingSpec:
    """The baseline's registered training settings with the run's seed and its epoch budget (`baseline_budget`
    of the dataset's `interactions` and evaluation.baselineEpochs `epochs`), at most `QUICK_EPOCHS` when quick."""
    training = get_baseline(name).training
    budget, _ = baseline_budget(name, interactions, epochs)
    return training.model_copy(update={"seed": seed, "epochs": min(budget, QUICK_EPOCHS) if quick else budget})


def run_baseline(name: str, dataset: Dataset, seed: int, split: LeaveOneOutSplit | RandomSplit,
                 quick: bool = False, device: str | torch.device = BASELINE_DEVICE,
                 epochs: int | None = None) -> RunResult:
    """Build, fit and test one baseline with one seed on an existing split of `dataset`; `epochs` is
    evaluation.baselineEpochs (None: the budget by the dataset's size)."""
    baseline = get_baseline(name)
    interactions = len(dataset.interactions)
    training = baseline_training(name, seed, quick, interactions=interactions, epochs=epochs)
    _, why = baseline_budget(name, interactions, epochs)
    log.info("%s seed %d: budget %d epochs (%s%s)", name, seed, training.epochs, why, ", quick" if quick else "")
    done = fit_and_evaluate(lambda: baseline.build(dataset, split), split, training, device=device, log_every=10)
    log.info("%s seed %d: best epoch %d, test %s (%.1f s)", name, seed, done.fit.best_epoch,
             ", ".join(f"{k} {v:.4f}" for k, v in done.test.items()), done.seconds)
    return done.run(name, baseline.task, seed)


def evaluate_baselines(dataset: Dataset, names: Sequence[str], seeds: Sequence[int], quick: bool = False,
                       device: str | torch.device = BASELINE_DEVICE, order: str = "time",
                       epochs: int | None = None) -> Results:
    """Every named baseline with every seed; each task's split (by data.order `order`) is made once and shared by
    all of them. `epochs`: evaluation.baselineEpochs (None: each baseline's budget by the dataset's size)."""
    baselines = [get_baseline(name) for name in names]  # unknown names fail before any fitting
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    splits = {task: make_split(dataset, task, order) for task in dict.fromkeys(b.task for b in baselines)}
    results = Results(dataset=dataset.name, seeds=list(seeds), quick=quick, order=order)
    for baseline in baselines:
        for seed in seeds:
            results.runs.append(run_baseline(baseline.name, dataset, seed, splits[baseline.task], quick=quick,
                                             device=device, epochs=epochs))
    return results
