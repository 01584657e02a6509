"""The one training loop: every model that follows the `fusionrec.baselines.base` contract (the fused
recommender and the baselines alike) is fitted here. `fusionrec.train.evaluate` seeds, builds, fits and tests a
model by the protocol around it; the baselines' settings are `TrainingSpec`s too (`fusionrec.baselines.registry`).

AdamW with two learning rates (pretrained LM layers at `encoderLearningRate`, everything else at
`learningRate`), no weight decay on biases and norms, warm-up then linear/cosine decay, gradient clipping and
accumulation, bf16 autocast on CUDA, validation by the protocol's own evaluator, early stopping, and the best
epoch's weights restored at the end, so what is tested is what validation selected. Every epoch can be
checkpointed and a run resumed from its last checkpoint gives the same result as one never interrupted.

Distributed training plugs in through `FitHooks`: wrap the loss module (DDP), shard the batch iterator, and
receive each epoch's metrics and checkpoint folder (to report them to Ray Train). Nothing here imports Ray.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from fusionrec.baselines.base import Ranks, Scores
from fusionrec.data.splits import LeaveOneOutSplit, RandomSplit
from fusionrec.errors import UserError
from fusionrec.metrics import evaluate_pointwise, evaluate_ranking, parse_metric
from fusionrec.progress import quiet
from fusionrec.protocol import DEFAULT_METRIC, RANKING_CUTOFFS, REPORTED, seed_everything
from fusionrec.spec import TrainingSpec
from fusionrec.train.averaging import WeightAverage
from fusionrec.train.checkpoint import load_checkpoint, load_mutable_state, mutable_state, save_checkpoint
from fusionrec.train.schedules import WarmupDecay, warmup_steps

log = logging.getLogger(__name__)

Batch = dict[str, Tensor]


@dataclass
class FitResult:
    """What `fit` returns: the best validation metrics, when they happened, and the per-epoch history."""

    best_epoch: int
    best_valid: dict[str, float]
    history: list[dict[str, Any]]
    seconds: float


@dataclass
class EpochReport:
    """What `FitHooks.on_epoch_end` receives after each epoch (and its checkpoint) is done."""

    epoch: int
    metrics: dict[str, float]  # loss, lr, seconds, valid_<metric>...
    checkpoint_dir: Path | None  # the epoch's checkpoint folder, when checkpointing
    improved: bool  # this epoch is the new best
    stopping: bool  # early stopping ends the run after this epoch


@dataclass
class FitHooks:
    """Extension points for a distributed runner; the defaults train in this process.

    on_epoch_end: called with each epoch's report (e.g. `ray.train.report(metrics, checkpoint)`).
    wrap_model: wraps the module whose forward(batch) returns the loss (e.g. DistributedDataParallel).
    wrap_batches: (epoch's batches, epoch) -> the batches this process trains on (e.g. every world_size-th).
    """

    on_epoch_end: Callable[[EpochReport], None] | None = None
    wrap_model: Callable[[nn.Module], nn.Module] | None = None
    wrap_batches: Callable[[Iterable[Batch], int], Iterable[Batch]] | None = None


class LossModule(nn.Module):
    """forward(batch) = model.calculate_loss(batch): DDP synchronises gradients only through forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> Tensor:
        return cast(Ranks | Scores, self.model).calculate_loss(batch)


@dataclass
class _Task:
    batches: Callable[[np.random.Generator], Iterable[Batch]]
    validate: Callable[[], dict[str, float]]
    metric: str
    higher_is_better: bool


@dataclass
class _Progress:
    """Everything about a run that is not weights or optimizer state; stored in each checkpoint."""

    epoch: int = 0
    best_value: float = 0.0
    best_epoch: int = 0
    best_valid: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    stopped: bool = False
    seconds: float = 0.0


# The task type whose default selection metric a model evaluated on `needs` gets (EarlyStoppingSpec.metric_for).
_TASK_OF_NEEDS = {"ranks": "ranking", "labels": "ctr", "ratings": "rating"}


def selection_metric(training: TrainingSpec, needs: str) -> str:
    """`training.earlyStopping.metric`, checked against what the task can measure ("ranks", "labels",
    "ratings"); not given (null), it is the task's own default (ndcg@10, auc, rmse), resolved by
    `EarlyStoppingSpec.metric_for` alike in process, on a Ray worker and on a cluster."""
    metric = training.early_stopping.metric_for(_TASK_OF_NEEDS[needs])
    chosen, k = parse_metric(metric)
    if chosen.needs == needs:
        return f"{chosen.name}@{k}" if k is not None else chosen.name
    raise UserError(f"training.earlyStopping.metric is {training.early_stopping.metric!r}, which needs "
                    f"{chosen.needs} but this task is evaluated on {needs}", field="training.earlyStopping.metric",
                    fix=f"use e.g. {DEFAULT_METRIC[needs]!r}")


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def _ranking_task(model: Ranks, split: LeaveOneOutSplit, training: TrainingSpec, device: torch.device,
                  ks: Sequence[int]) -> _Task:
    metric = selection_metric(training, "ranks")
    k = int(metric.split("@")[1])

    def validate() -> dict[str, float]:
        return evaluate_ranking(lambda users, histories: model.full_sort_predict(users.to(device), histories),
                                split, "valid", ks=(*ks, k))

    return _Task(lambda rng: model.training_batches(split, training.batch_size, rng), validate, metric,
                 parse_metric(metric)[0].higher_is_better)


def _pointwise_task(model: Scores, split: RandomSplit, training: TrainingSpec, device: torch.device) -> _Task:
    needs = getattr(model, "evaluates", "labels")
    metric = selection_metric(training, needs)
    train_rows, valid_rows = model.encode_rows(split, "train"), model.encode_rows(split, "valid")

    def batches(rng: np.random.Generator) -> Iterator[Batch]:
        n_rows = len(next(iter(train_rows.values())))
        order = torch.as_tensor(rng.permutation(n_rows))
        for start in range(0, n_rows, training.batch_size):
            index = order[start:start + training.batch_size]
            yield {key: value[index] for key, value in train_rows.items()}

    def validate() -> dict[str, float]:
        return evaluate_pointwise(lambda batch: model.predict(_to_device(batch, device)), valid_rows,
                                  metrics=REPORTED[needs])

    return _Task(batches, validate, metric, parse_metric(metric)[0].higher_is_better)


def parameter_groups(model: nn.Module, training: TrainingSpec) -> list[dict[str, Any]]:
    """AdamW groups: (pretrained LM layers | the rest) x (decayed | biases, norms and other 1-d tensors).

    A model marks its pretrained weights with `pretrained_parameters()`; models without it train at one rate.
    """
    marker = getattr(model, "pretrained_parameters", None)
    pretrained = {id(p) for p in marker()} if callable(marker) else set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for _, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((id(param) in pretrained, param.ndim >= 2), []).append(param)
    out = []
    for (is_pretrained, decays), params in sorted(groups.items()):
        out.append({"params": params, "weight_decay": training.weight_decay if decays else 0.0,
                    "lr": training.encoder_learning_rate if is_pretrained else training.learning_rate,
                    "name": f"{'pretrained' if is_pretrained else 'new'}/{'decay' if decays else 'no_decay'}"})
    return out


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    legacy = cast(tuple[Any, ...], np.random.get_state())  # the legacy tuple form (legacy=True, the default)
    return {"python": random.getstate(), "torch": torch.get_rng_state(), "batches": rng.bit_generator.state,
            "numpy": (legacy[0], torch.from_numpy(legacy[1].astype(np.int64)), *map(float, legacy[2:])),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"].cpu())
    rng.bit_generator.state = state["batches"]
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The current rate of the new layers ("lr") and of the pretrained ones ("encoder_lr"), when present."""
    rates = {}
    for group in optimizer.param_groups:
        rates["encoder_lr" if group["name"].startswith("pretrained") else "lr"] = float(group["lr"])
    return rates


def fit(model: nn.Module, split: LeaveOneOutSplit | RandomSplit, training: TrainingSpec, *,
        device: str | torch.device | None = None, hooks: FitHooks | None = None,
        checkpoint_dir: str | Path | None = None, resume: bool = False, eval_every: int = 1,
        log_every: int = 1, ks: Sequence[int] = RANKING_CUTOFFS) -> FitResult:
    """Fit `model` on the train part of `split`, selecting the epoch by validation.

    Args:
        model: a ranking model (`training_batches`, `calculate_loss`, `full_sort_predict`) for a
            LeaveOneOutSplit, or a pointwise one (`encode_rows`, `calculate_loss`, `predict`) for a RandomSplit.
        training: the spec's training section (epochs, batch size, rates, schedule, clipping, early stopping).
        device: default CUDA when available, else CPU.
        hooks: see `FitHooks`.
        checkpoint_dir: write `<dir>/latest/` after every epoch.
        resume: continue from the checkpoint in `checkpoint_dir`, if there is one.
        eval_every: validate every this many epochs (and after the last).
        log_every: one log line every this many epochs.
    Returns:
        FitResult with the best validation metrics, the best epoch and the per-epoch history; the model
        holds the best epoch's weights and is in eval mode.
    """
    if eval_every < 1 or log_every < 1:
        raise ValueError(f"eval_every and log_every must be >= 1, got {eval_every} and {log_every}")
    hooks = hooks or FitHooks()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    seed_everything(training.seed)
    model.to(device)
    if isinstance(split, LeaveOneOutSplit):
        task = _ranking_task(cast(Ranks, model), split, training, device, ks)
    elif isinstance(split, RandomSplit):
        task = _pointwise_task(cast(Scores, model), split, training, device)
    else:
        raise ValueError(f"split must be a LeaveOneOutSplit or a RandomSplit, got {type(split).__name__}")
    started = time.perf_counter()
    if not getattr(model, "trainable", True):  # fitted by counting, e.g. popularity
        if not isinstance(split, LeaveOneOutSplit):
            raise ValueError(f"{type(model).__name__} is fitted by counting and ranks; it needs a leave-one-out split")
        cast(Ranks, model).fit_without_gradients(split)
        model.eval()
        valid = task.validate()
        seconds = time.perf_counter() - started
        return FitResult(best_epoch=0, best_valid=valid, seconds=seconds,
                         history=[{"epoch": 0, "seconds": seconds, **{f"valid_{m}": v for m, v in valid.items()}}])

    rng = np.random.default_rng(training.seed)
    loss_module = LossModule(model)
    wrapped = hooks.wrap_model(loss_module) if hooks.wrap_model else loss_module

    def epoch_batches(generator: np.random.Generator, epoch: int) -> Iterable[Batch]:
        batches = task.batches(generator)
        return hooks.wrap_batches(batches, epoch) if hooks.wrap_batches else batches

    # Counted once from a copy of the generator: the schedule needs the run's length before the first step.
    n_batches = sum(1 for _ in epoch_batches(copy.deepcopy(rng), 1))
    steps_per_epoch = max(1, math.ceil(n_batches / training.grad_accumulation))
    total_steps = steps_per_epoch * training.epochs
    optimizer = torch.optim.AdamW(parameter_groups(model, training), lr=training.learning_rate)
    schedule = WarmupDecay(training.lr_schedule, total_steps, warmup_steps(total_steps, training.warmup_ratio))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    progress = _Progress(best_value=-math.inf if task.higher_is_better else math.inf)
    best_state = mutable_state(model)
    fingerprint = json.dumps(training.model_dump(mode="json"), sort_keys=True)
    root = Path(checkpoint_dir) if checkpoint_dir is not None else None

    saved = load_checkpoint(root, device) if resume and root is not None else None
    if saved is not None:
        if saved.state["training"] != fingerprint:
            raise UserError(f"checkpoint {saved.folder} was written with different training settings",
                            field="training", fix="resume with the same spec, or use a new checkpoint folder")
        load_mutable_state(model, saved.model)
        best_state = saved.best
        optimizer.load_state_dict(saved.state["optimizer"])
        scheduler.load_state_dict(saved.state["scheduler"])
        _set_rng_state(rng, saved.state["rng"])
        progress = _Progress(**saved.state["progress"])
        log.info("resumed from %s after epoch %d", saved.folder, progress.epoch)
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    params = [p for p in model.parameters() if p.requires_grad]
    average = WeightAverage(model, training.ema_decay) if training.ema_decay > 0 else None
    if average is not None and resume and root is not None and saved is not None:
        average.load_state_dict(saved.state["average"])

    def step() -> None:
        if training.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, training.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if average is not None:
            average.update()

    while not progress.stopped and progress.epoch < training.epochs:
        epoch = progress.epoch + 1
        epoch_started = time.perf_counter()
        wrapped.train()
        total, count, pending = 0.0, 0, 0
        bar = tqdm(epoch_batches(rng, epoch), total=n_batches, desc=f"epoch {epoch}", leave=False,
                   disable=quiet())
        for index, batch in enumerate(bar):
            batch = _to_device(batch, device)
            # Gradients are all-reduced (DDP) only on the micro-batch that ends an accumulation.
            last_micro = pending + 1 == training.grad_accumulation or index + 1 >= n_batches
            no_sync = getattr(wrapped, "no_sync", None)  # DistributedDataParallel's, when the hooks wrapped it in one
            sync = contextlib.nullcontext() if last_micro or no_sync is None else no_sync()
            with sync:
                with autocast:
                    loss = wrapped(batch)
                if not torch.isfinite(loss):
                    raise UserError(f"{type(model).__name__}: the loss became {loss.item()} at epoch {epoch}",
                                    field="training.learningRate",
                                    fix=f"lower training.learningRate (now {training.learning_rate})")
                (loss / training.grad_accumulation).backward()
            pending += 1
            if last_micro:
                step()
                pending = 0
            size = len(next(iter(batch.values())))
            total += loss.item() * size
            count += size
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if pending:
            step()  # batches beyond the counted ones (a sharded iterator that ran longer)
        record = {"epoch": epoch, "loss": total / max(count, 1), **_rates(optimizer),
                  "seconds": progress.seconds + time.perf_counter() - started}
        improved = False
        if epoch % eval_every == 0 or epoch == training.epochs:
            with average.applied() if average is not None else contextlib.nullcontext():
                model.eval()  # after the swap: eval() drops caches built from other weights
                valid = task.validate()
                record.update({f"valid_{key}": value for key, value in valid.items()})
                value = valid[task.metric]
                if (value > progress.best_value) if task.higher_is_better else (value < progress.best_value):
                    progress.best_value, progress.best_epoch, progress.best_valid = value, epoch, valid
                    best_state, improved = mutable_state(model), True
        progress.history.append(record)
        progress.epoch = epoch
        progress.stopped = bool(progress.best_epoch) and epoch - progress.best_epoch >= \
            training.early_stopping.patience
        folder = None
        if root is not None:
            elapsed = progress.seconds + time.perf_counter() - started
            state = {"training": fingerprint, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "rng": _rng_state(rng), "progress": {**vars(progress), "seconds": elapsed}}
            if average is not None:
                state["average"] = average.state_dict()
            folder = save_checkpoint(root, mutable_state(model), best_state, state)
        if epoch % log_every == 0 or progress.stopped:
            log.info("%s epoch %d/%d loss %.4f valid %s %.4f (best %.4f at epoch %d) lr %.2e %.1fs",
                     type(model).__name__, epoch, training.epochs, record["loss"], task.metric,
                     record.get(f"valid_{task.metric}", float("nan")), progress.best_value, progress.best_epoch,
                     record.get("lr", record.get("encoder_lr", 0.0)), time.perf_counter() - epoch_started)
        if hooks.on_epoch_end:
            hooks.on_epoch_end(EpochReport(epoch, dict(record), folder, improved, progress.stopped))
        if progress.stopped:
            log.info("early stop at epoch %d: no better %s for %d epochs", epoch, task.metric,
                     training.early_stopping.patience)
    load_mutable_state(model, best_state)
    model.eval()
    return FitResult(best_epoch=progress.best_epoch, best_valid=progress.best_valid, history=progress.history,
                     seconds=progress.seconds + time.perf_counter() - started)
