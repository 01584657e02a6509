"""The one training loop every baseline uses: Adam(W) over the model's parameters, validation every
`eval_every` epochs by the protocol's own evaluator, early stopping on one validation metric, and the best
epoch's weights restored at the end, so what is tested is what was selected.

Model-specific behaviour (negative sampling, features, losses) lives in the model behind the base-class hooks;
nothing here knows which model it is fitting.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from fusionrec.baselines.base import FitConfig, FitResult, PointwiseModel, RankingModel
from fusionrec.data.splits import LeaveOneOutSplit, RandomSplit
from fusionrec.metrics import evaluate_pointwise, evaluate_ranking, parse_metric

log = logging.getLogger(__name__)

RANKING_CUTOFFS = (5, 10, 20)
Batch = dict[str, torch.Tensor]


def _check_config(config: FitConfig) -> None:
    for field in ("epochs", "batch_size", "eval_every"):
        if getattr(config, field) < 1:
            raise ValueError(f"FitConfig.{field} must be at least 1, got {getattr(config, field)}")
    if config.patience < 1:
        raise ValueError(f"FitConfig.patience must be at least 1, got {config.patience}")
    if not config.learning_rate > 0:
        raise ValueError(f"FitConfig.learning_rate must be positive, got {config.learning_rate}")


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # state_dict() shares storage with the live parameters: clone, or the "best" weights keep training.
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def _train(model: torch.nn.Module, epoch_batches: Callable[[np.random.Generator], Iterable[Batch]],
           loss_fn: Callable[[Batch], torch.Tensor], validate: Callable[[], dict[str, float]],
           config: FitConfig, metric: str, higher_is_better: bool, log_every: int) -> FitResult:
    """Epochs of gradient steps with early stopping on `metric`; restores the best weights before returning."""
    device = torch.device(config.device)
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    started = time.perf_counter()
    history: list[dict[str, float]] = []
    best_value = -math.inf if higher_is_better else math.inf
    best_epoch, best_valid, best_state = 0, {}, _snapshot(model)
    for epoch in range(1, config.epochs + 1):
        model.train()
        total, count = 0.0, 0
        for batch in epoch_batches(rng):
            batch = _to_device(batch, device)
            loss = loss_fn(batch)
            if not torch.isfinite(loss):
                raise ValueError(f"{type(model).__name__}: loss became {loss.item()} at epoch {epoch}; "
                                 f"lower FitConfig.learning_rate (now {config.learning_rate})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            size = len(next(iter(batch.values())))
            total += loss.item() * size
            count += size
        record: dict[str, float] = {"epoch": epoch, "loss": total / max(count, 1),
                                    "seconds": time.perf_counter() - started}
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            model.eval()
            valid = validate()
            record.update({f"valid_{key}": value for key, value in valid.items()})
            value = valid[metric]
            if (value > best_value) if higher_is_better else (value < best_value):
                best_value, best_epoch, best_valid, best_state = value, epoch, valid, _snapshot(model)
        history.append(record)
        if epoch % log_every == 0:
            log.info("%s epoch %d loss %.4f valid %s %s (best %.4f at epoch %d)", type(model).__name__, epoch,
                     record["loss"], metric, f"{record.get('valid_' + metric, float('nan')):.4f}",
                     best_value, best_epoch)
        if best_epoch and epoch - best_epoch >= config.patience:
            log.info("early stop at epoch %d: no better %s for %d epochs", epoch, metric, config.patience)
            break
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(best_epoch=best_epoch, best_valid=best_valid, history=history,
                     seconds=time.perf_counter() - started)


def fit_ranking(model: RankingModel, split: LeaveOneOutSplit, config: FitConfig, metric: str = "ndcg@10",
                log_every: int = 1) -> FitResult:
    """Fit a ranking model on the leave-one-out train part, selecting the epoch by validation `metric`.

    Non-trainable models (`trainable = False`, e.g. popularity) are fitted by `fit_without_gradients` and
    validated once; their `best_epoch` is 0.
    """
    _check_config(config)
    chosen, k = parse_metric(metric)
    if chosen.needs != "ranks":
        raise ValueError(f"fit_ranking selects by a ranking metric such as ndcg@10, got {metric!r}")
    metric = f"{chosen.name}@{k}"
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    model.to(device)

    def score(users: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        return model.full_sort_predict(users.to(device), histories)

    def validate() -> dict[str, float]:
        return evaluate_ranking(score, split, "valid", ks=(*RANKING_CUTOFFS, k))

    if not model.trainable:
        started = time.perf_counter()
        model.fit_without_gradients(split)
        model.eval()
        valid = validate()
        seconds = time.perf_counter() - started
        return FitResult(best_epoch=0, best_valid=valid, seconds=seconds,
                         history=[{"epoch": 0, "seconds": seconds, **{f"valid_{m}": v for m, v in valid.items()}}])

    def epoch_batches(rng: np.random.Generator) -> Iterator[Batch]:
        return model.training_batches(split, config.batch_size, rng)

    return _train(model, epoch_batches, model.calculate_loss, validate, config, metric,
                  chosen.higher_is_better, log_every)


def _slices(rows: Batch, batch_size: int, rng: np.random.Generator) -> Iterator[Batch]:
    n_rows = len(next(iter(rows.values())))
    order = torch.as_tensor(rng.permutation(n_rows))
    for start in range(0, n_rows, batch_size):
        index = order[start:start + batch_size]
        yield {key: value[index] for key, value in rows.items()}


def fit_pointwise(model: PointwiseModel, split: RandomSplit, config: FitConfig, metric: str = "auc",
                  log_every: int = 1) -> FitResult:
    """Fit a CTR or rating model on the random split's train part, selecting the epoch by validation `metric`
    ("auc"/"logloss" read the 0/1 label, "rmse"/"mae" the rating)."""
    _check_config(config)
    chosen, _ = parse_metric(metric)
    if chosen.needs == "ranks":
        raise ValueError(f"fit_pointwise selects by a pointwise metric (auc, logloss, rmse, mae), got {metric!r}")
    reported = ("auc", "logloss") if chosen.needs == "labels" else ("rmse", "mae")
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    model.to(device)
    train_rows = model.encode_rows(split, "train")
    valid_rows = model.encode_rows(split, "valid")

    def predict(batch: Batch) -> torch.Tensor:
        return model.predict(_to_device(batch, device))

    def validate() -> dict[str, float]:
        return evaluate_pointwise(predict, valid_rows, metrics=reported)

    def epoch_batches(rng: np.random.Generator) -> Iterator[Batch]:
        return _slices(train_rows, config.batch_size, rng)

    return _train(model, epoch_batches, model.calculate_loss, validate, config, chosen.name,
                  chosen.higher_is_better, log_every)
