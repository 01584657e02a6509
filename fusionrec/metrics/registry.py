"""Every metric the project reports, listed explicitly, each saying what it needs.

`needs` tells the evaluators what to collect, after RecBole's `metric_need`: "ranks" metrics read the target's
rank from a full-catalogue ranking (and take a cutoff K, named `ndcg@10`); "labels" metrics read a probability
per row and its 0/1 label; "ratings" metrics read a predicted rating and the true one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fusionrec.metrics import pointwise, ranking


@dataclass(frozen=True)
class Metric:
    name: str
    needs: Literal["ranks", "labels", "ratings"]
    higher_is_better: bool
    # ranks metrics: (ranks [U], k) -> per-user values [U]; the others: (predictions, targets) -> float
    fn: Callable[..., Any]


METRICS: dict[str, Metric] = {
    "hr": Metric("hr", "ranks", True, ranking.hit_rate),
    "ndcg": Metric("ndcg", "ranks", True, ranking.ndcg),
    "mrr": Metric("mrr", "ranks", True, ranking.reciprocal_rank),
    "auc": Metric("auc", "labels", True, pointwise.auc),
    "logloss": Metric("logloss", "labels", False, pointwise.logloss),
    "rmse": Metric("rmse", "ratings", False, pointwise.rmse),
    "mae": Metric("mae", "ratings", False, pointwise.mae),
}

_NAME = re.compile(r"^(?P<name>[a-z]+)(?:@(?P<k>\d+))?$")


def parse_metric(text: str) -> tuple[Metric, int | None]:
    """`"ndcg@10"` -> (the NDCG metric, 10); `"auc"` -> (the AUC metric, None). Cutoffs go with rank metrics only."""
    match = _NAME.match(text.strip().lower())
    metric = METRICS.get(match["name"]) if match else None
    if match is None or metric is None:
        known = ", ".join(f"{m.name}@K" if m.needs == "ranks" else m.name for m in METRICS.values())
        raise ValueError(f"unknown metric {text!r}; known: {known}")
    k = int(match["k"]) if match["k"] else None
    if metric.needs == "ranks" and (k is None or k < 1):
        raise ValueError(f"metric {text!r} needs a cutoff of at least 1, e.g. {metric.name}@10")
    if metric.needs != "ranks" and k is not None:
        raise ValueError(f"metric {text!r} takes no cutoff; use {metric.name}")
    return metric, k


def selection_value(value: Any, higher_is_better: bool) -> float:
    """A validation value as a number where more is better, so models compare with max() whichever way their
    metric points; a missing or non-finite value ranks last. Every "which model validated best" in the project
    (shipping with evaluation.select, the fused-vs-members check, reports, benches) compares through this."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return -math.inf
    return float(value) if higher_is_better else -float(value)
