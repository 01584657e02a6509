"""The fusion weights of a fitted model, summarised for metrics.json and `fusionrec report`."""

from __future__ import annotations

from typing import Any

import numpy as np


def summarise_weights(report: dict[str, Any], quantiles: tuple[int, ...] = (5, 25, 50, 75, 95),
                      bins: int = 20) -> dict[str, Any]:
    """JSON form of `FusedRecommender.fusion_weights`: the global weights and per-user statistics.

    The per-user matrix itself is not stored (one row per user), so the spread is kept as quantiles
    (`p5`...`p95`) and a histogram per model: enough for `fusionrec report` to draw box plots and
    distributions. The histograms of all models share one set of bin edges so they can be overlaid.
    """
    out = {key: report[key] for key in ("method", "kind", "models", "global")}
    per_user = report.get("per_user")
    if per_user is not None and len(per_user):
        values = per_user.detach().cpu().double().numpy()  # [U, M]
        stats = {"mean": values.mean(0), "std": values.std(0), "min": values.min(0), "max": values.max(0),
                 **{f"p{q}": np.percentile(values, q, axis=0) for q in quantiles}}
        low, high = float(values.min()), float(values.max())
        if high - low < 1e-9:  # every user has the same weights (a global fusion): one narrow bin range
            low, high = low - 1e-3, high + 1e-3
        edges = np.linspace(low, high, bins + 1)
        summary: dict[str, Any] = {"users": len(values)}
        for m, name in enumerate(report["models"]):
            counts, _ = np.histogram(values[:, m], bins=edges)
            summary[name] = {**{key: round(float(v[m]), 6) for key, v in stats.items()},
                             "histogram": {"edges": [round(float(e), 6) for e in edges],
                                           "counts": [int(c) for c in counts]}}
        out["per_user"] = summary
    return out
