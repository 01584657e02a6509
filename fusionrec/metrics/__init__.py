"""Evaluation, kept apart from the models: full-ranking HR/NDCG/MRR@K and pointwise AUC/LogLoss/RMSE/MAE."""

from fusionrec.metrics.evaluator import (
    RANKING_CUTOFFS,
    evaluate_pointwise,
    evaluate_ranking,
    metrics_from_ranks,
    rank_targets,
)
from fusionrec.metrics.pointwise import auc, logloss, mae, rmse
from fusionrec.metrics.ranking import hit_rate, ndcg, reciprocal_rank, target_ranks
from fusionrec.metrics.registry import METRICS, Metric, parse_metric, selection_value

__all__ = [
    "METRICS", "Metric", "RANKING_CUTOFFS", "auc", "evaluate_pointwise", "evaluate_ranking", "hit_rate", "logloss",
    "mae", "metrics_from_ranks", "ndcg", "parse_metric", "rank_targets", "reciprocal_rank", "rmse", "selection_value",
    "target_ranks",
]
