"""Metrics over one prediction per interaction: AUC and LogLoss for CTR, RMSE and MAE for ratings.

The arithmetic is scikit-learn's (`roc_auc_score`, `log_loss`, `mean_squared_error`, `mean_absolute_error`);
this module only checks the inputs (no NaN, equal lengths, both classes, probabilities in [0, 1]) with messages
that name the problem, and fixes the LogLoss clipping at `LOGLOSS_EPS`, so a number does not move with
scikit-learn's own default epsilon.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from sklearn.metrics import log_loss, mean_absolute_error, mean_squared_error, roc_auc_score

LOGLOSS_EPS = 1e-7  # predictions are clipped into [eps, 1 - eps]; one confident mistake must not be infinite


def _as_vector(values: Any, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if np.isnan(array).any():
        raise ValueError(f"{name} contains {int(np.isnan(array).sum())} NaN values")
    return array


def _pair(predictions: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    pred = _as_vector(predictions, "predictions")
    true = _as_vector(targets, "targets")
    if pred.shape != true.shape:
        raise ValueError(f"predictions and targets differ in length: {pred.size} vs {true.size}")
    return pred, true


def _labels(truth: np.ndarray) -> np.ndarray:
    """0/1 labels (anything above 0.5 is a positive), checked to hold both classes."""
    positive = truth > 0.5
    n_pos = int(positive.sum())
    if n_pos == 0 or n_pos == truth.size:
        raise ValueError(f"AUC needs both classes, got {n_pos} positives and {truth.size - n_pos} negatives")
    return positive.astype(np.int64)


def auc(predictions: Any, labels: Any) -> float:
    """Area under the ROC curve of scores against 0/1 labels (tied scores count half)."""
    scores, truth = _pair(predictions, labels)
    return float(roc_auc_score(_labels(truth), scores))


def logloss(predictions: Any, labels: Any) -> float:
    """Mean binary cross-entropy of probabilities against 0/1 labels, probabilities clipped at `LOGLOSS_EPS`."""
    prob, truth = _pair(predictions, labels)
    if (prob < 0).any() or (prob > 1).any():
        raise ValueError(f"logloss needs probabilities in [0, 1], got range [{prob.min()}, {prob.max()}]")
    return float(log_loss(truth, np.clip(prob, LOGLOSS_EPS, 1.0 - LOGLOSS_EPS), labels=[0, 1]))


def rmse(predictions: Any, ratings: Any) -> float:
    pred, true = _pair(predictions, ratings)
    return math.sqrt(mean_squared_error(true, pred))


def mae(predictions: Any, ratings: Any) -> float:
    pred, true = _pair(predictions, ratings)
    return float(mean_absolute_error(true, pred))
