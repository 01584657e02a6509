"""Metrics over one prediction per interaction: AUC and LogLoss for CTR, RMSE and MAE for ratings.

AUC is computed from ranks (the Mann-Whitney statistic), with tied scores given their average rank; that is
the same number as the trapezoidal ROC area, so it matches scikit-learn's `roc_auc_score` on ties.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

LOGLOSS_EPS = 1e-7  # predictions are clipped into [eps, 1 - eps]; one confident mistake must not be infinite


def _as_vector(values: Any, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values)
    tensor = tensor.detach().to("cpu", torch.float64).flatten()
    if tensor.numel() == 0:
        raise ValueError(f"{name} is empty")
    if torch.isnan(tensor).any():
        raise ValueError(f"{name} contains {int(torch.isnan(tensor).sum())} NaN values")
    return tensor


def _pair(predictions: Any, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
    pred = _as_vector(predictions, "predictions")
    true = _as_vector(targets, "targets")
    if pred.shape != true.shape:
        raise ValueError(f"predictions and targets differ in length: {pred.numel()} vs {true.numel()}")
    return pred, true


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """[N] 1-based ranks of `values` in ascending order; tied values share the mean of their ranks."""
    unique, inverse, counts = torch.unique(values, sorted=True, return_inverse=True, return_counts=True)
    last_rank = torch.cumsum(counts, dim=0).double()  # [n_unique] rank of each group's last member
    mean_rank = last_rank - (counts.double() - 1.0) / 2.0
    return mean_rank[inverse]


def auc(predictions: Any, labels: Any) -> float:
    """Area under the ROC curve of scores against 0/1 labels."""
    scores, truth = _pair(predictions, labels)
    positive = truth > 0.5
    n_pos = int(positive.sum())
    n_neg = truth.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes, got {n_pos} positives and {n_neg} negatives")
    ranks = average_ranks(scores)
    u_statistic = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u_statistic / (n_pos * n_neg))


def logloss(predictions: Any, labels: Any) -> float:
    """Mean binary cross-entropy of probabilities against 0/1 labels."""
    prob, truth = _pair(predictions, labels)
    if (prob < 0).any() or (prob > 1).any():
        raise ValueError(f"logloss needs probabilities in [0, 1], got range [{float(prob.min())}, {float(prob.max())}]")
    prob = prob.clamp(LOGLOSS_EPS, 1.0 - LOGLOSS_EPS)
    return float(-(truth * torch.log(prob) + (1.0 - truth) * torch.log1p(-prob)).mean())


def rmse(predictions: Any, ratings: Any) -> float:
    pred, true = _pair(predictions, ratings)
    return float(torch.sqrt(((pred - true) ** 2).mean()))


def mae(predictions: Any, ratings: Any) -> float:
    pred, true = _pair(predictions, ratings)
    return float((pred - true).abs().mean())
