"""Reference models every fused model is reported beside: popularity, BPR-MF, SASRec (ranking), LR, FM (CTR).

They are fitted by the one training loop (`fusionrec.train.loop.fit`) and evaluated by the protocol
(`fusionrec.train.evaluate.run_baseline`); this package holds only the models and their registry.
"""

from fusionrec.baselines.base import PointwiseModel, RankingModel
from fusionrec.baselines.registry import BASELINES, Baseline, get_baseline, recbole_training

__all__ = ["BASELINES", "Baseline", "PointwiseModel", "RankingModel", "get_baseline", "recbole_training"]
