"""The protocol's two evaluators. Models only score; masking, ranking and averaging happen here, once, so every
model in a results table is measured by the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from fusionrec.data.schema import ITEM_IDX, USER_IDX
from fusionrec.data.splits import LeaveOneOutSplit
from fusionrec.metrics.ranking import target_ranks
from fusionrec.metrics.registry import METRICS, parse_metric

ScoreFn = Callable[[torch.Tensor, list[np.ndarray]], torch.Tensor]
PredictFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]

RANK_METRICS = ("hr", "ndcg", "mrr")
RANKING_CUTOFFS = (5, 10, 20)  # the protocol's cutoffs K (`fusionrec.protocol` publishes them)


def rank_targets(score_fn: ScoreFn, split: LeaveOneOutSplit, stage: str,
                 batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per evaluated user, the 1-based rank of the held-out item among all items the user has not seen.

    Users are scored `batch_size` at a time, so memory stays at [batch_size, n_items] whatever the user count.

    Returns:
        users [U] and ranks [U] (int64), one per user with a target at `stage`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    targets = split.targets(stage)
    users = targets[USER_IDX].to_numpy(dtype=np.int64)
    items = targets[ITEM_IDX].to_numpy(dtype=np.int64)
    seen = split.seen_matrix(stage)
    histories = split.history(stage)
    ranks = np.empty(len(users), dtype=np.int64)
    with torch.no_grad():
        for start in range(0, len(users), batch_size):
            chunk = users[start:start + batch_size]
            user_tensor = torch.tensor(chunk, dtype=torch.long)
            scores = score_fn(user_tensor, [histories[u] for u in chunk])
            if scores.shape != (len(chunk), split.n_items):
                raise ValueError(f"score_fn returned shape {tuple(scores.shape)}, expected "
                                 f"({len(chunk)}, {split.n_items}) = (users in the batch, n_items)")
            chunk_ranks = target_ranks(scores, torch.tensor(items[start:start + batch_size]), seen[chunk])
            ranks[start:start + len(chunk)] = chunk_ranks.cpu().numpy()
    return users, ranks


def metrics_from_ranks(ranks: np.ndarray | torch.Tensor, ks: Iterable[int] = RANKING_CUTOFFS,
                       metrics: Sequence[str] = RANK_METRICS) -> dict[str, float]:
    """Mean of each rank metric at each cutoff, keyed `"ndcg@10"`; all from the same ranks."""
    rank_tensor = torch.as_tensor(ranks)
    if rank_tensor.numel() == 0:
        raise ValueError("no users to evaluate: every user has fewer than 3 interactions")
    out: dict[str, float] = {}
    for name in metrics:
        metric = METRICS.get(name)
        if metric is None or metric.needs != "ranks":
            raise ValueError(f"{name!r} is not a rank metric; choose from {RANK_METRICS}")
        for k in ks:
            out[f"{name}@{k}"] = float(metric.fn(rank_tensor, int(k)).mean())
    return out


def evaluate_ranking(score_fn: ScoreFn, split: LeaveOneOutSplit, stage: str, ks: Iterable[int] = RANKING_CUTOFFS,
                     batch_size: int = 1024, metrics: Sequence[str] = RANK_METRICS) -> dict[str, float]:
    """HR/NDCG/MRR@K of `score_fn` at `stage` ("valid" or "test"), seen items excluded.

    score_fn(users [B], histories: B arrays oldest first) -> [B, n_items] scores.
    """
    _, ranks = rank_targets(score_fn, split, stage, batch_size=batch_size)
    return metrics_from_ranks(ranks, ks=sorted(set(ks)), metrics=metrics)


def evaluate_pointwise(predict_fn: PredictFn, rows: dict[str, torch.Tensor],
                       metrics: Sequence[str] = ("auc", "logloss"), batch_size: int = 8192) -> dict[str, float]:
    """Pointwise metrics over encoded rows: "labels" metrics read `rows["label"]`, "ratings" ones `rows["rating"]`.

    predict_fn(batch) -> [B] probability (CTR) or rating, for a batch sliced from `rows`.
    """
    chosen = [parse_metric(name)[0] for name in metrics]
    for metric in chosen:
        if metric.needs == "ranks":
            raise ValueError(f"{metric.name} is a ranking metric; use evaluate_ranking")
        column = "label" if metric.needs == "labels" else "rating"
        if column not in rows:
            raise ValueError(f"{metric.name} needs the {column!r} column, rows have {sorted(rows)}")
    n_rows = len(next(iter(rows.values())))
    predictions = []
    with torch.no_grad():
        for start in range(0, n_rows, batch_size):
            batch = {key: value[start:start + batch_size] for key, value in rows.items()}
            predictions.append(predict_fn(batch).detach().float().cpu().flatten())
    predicted = torch.cat(predictions)
    out = {}
    for metric in chosen:
        truth = rows["label" if metric.needs == "labels" else "rating"]
        out[metric.name] = float(metric.fn(predicted, truth))
    return out
