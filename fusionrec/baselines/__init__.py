"""Reference models every fused model is reported beside: popularity, BPR-MF, SASRec (ranking), LR, FM (CTR)."""

from fusionrec.baselines.base import FitConfig, FitResult, PointwiseModel, RankingModel
from fusionrec.baselines.fit import fit_pointwise, fit_ranking
from fusionrec.baselines.registry import BASELINES, Baseline, get_baseline

__all__ = [
    "BASELINES", "Baseline", "FitConfig", "FitResult", "PointwiseModel", "RankingModel", "fit_pointwise",
    "fit_ranking", "get_baseline",
]
