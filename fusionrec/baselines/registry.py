"""Every baseline the protocol reports, in one explicit table: its model class, how to build it from a
dataset and its split, and the optimisation settings it is fitted with (RecBole's defaults unless noted).

A model is a RankingModel (leave-one-out split, full ranking) or a PointwiseModel (random split, CTR); the
evaluation runner reads which from the class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fusionrec.baselines.base import FitConfig, PointwiseModel, RankingModel
from fusionrec.baselines.bpr import BPR
from fusionrec.baselines.fm import FactorizationMachine
from fusionrec.baselines.lr import LogisticRegression
from fusionrec.baselines.pop import Popularity
from fusionrec.data.schema import Dataset
from fusionrec.errors import UserError

Model = RankingModel | PointwiseModel


def _sasrec_class() -> type[RankingModel]:
    # Imported when asked for, so a broken or missing sequential module cannot take the other baselines down.
    try:
        from fusionrec.baselines.sasrec import SASRec
    except ModuleNotFoundError as exc:
        raise UserError(f"the sasrec baseline is not available: {exc}", field="baselines") from exc
    return SASRec


def _build_sasrec(dataset: Dataset, split: Any) -> RankingModel:
    return _sasrec_class()(split.n_items)


@dataclass(frozen=True)
class Baseline:
    name: str
    model: Callable[[], type[Model]]  # the class, resolved on first use
    build: Callable[[Dataset, Any], Model]  # (dataset, its split) -> a fresh model
    fit: FitConfig
    selection_metric: str  # validation metric the best epoch is chosen by

    @property
    def task(self) -> Literal["ranking", "ctr"]:
        return "ranking" if issubclass(self.model(), RankingModel) else "ctr"


def _eager(cls: type[Model]) -> Callable[[], type[Model]]:
    return lambda: cls


# RecBole 1.2.1 defaults: Adam, lr 1e-3, batch 2048, early stopping after 10 evaluations without improvement.
BASELINES: dict[str, Baseline] = {
    "pop": Baseline("pop", _eager(Popularity), Popularity.from_data, FitConfig(epochs=1), "ndcg@10"),
    "bpr": Baseline("bpr", _eager(BPR), BPR.from_data,
                    FitConfig(epochs=300, batch_size=2048, learning_rate=1e-3, patience=10), "ndcg@10"),
    # Sequences, not interactions, are its training rows: 943 users on ml-100k, hence the small batches.
    "sasrec": Baseline("sasrec", _sasrec_class, _build_sasrec,
                       FitConfig(epochs=200, batch_size=128, learning_rate=1e-3, patience=10), "ndcg@10"),
    "lr": Baseline("lr", _eager(LogisticRegression), LogisticRegression.from_data,
                   FitConfig(epochs=300, batch_size=2048, learning_rate=1e-3, patience=10), "auc"),
    "fm": Baseline("fm", _eager(FactorizationMachine), FactorizationMachine.from_data,
                   FitConfig(epochs=300, batch_size=2048, learning_rate=1e-3, patience=10), "auc"),
}


def get_baseline(name: str) -> Baseline:
    try:
        return BASELINES[name]
    except KeyError:
        raise UserError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}", field="baselines") from None
