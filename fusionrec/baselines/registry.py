"""Every baseline the protocol reports, in one explicit table: its model class, how to build it from a
dataset and its split, and the training settings it is fitted with, as the same `TrainingSpec` a manifest gives
the fused model (RecBole's defaults unless noted). `fusionrec.train.evaluate` fits it through the one loop,
`fusionrec.train.loop.fit`.

A model is a RankingModel (leave-one-out split, full ranking) or a PointwiseModel (random split, CTR); the
evaluation runner reads which from the class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fusionrec.baselines.base import PointwiseModel, RankingModel
from fusionrec.baselines.bpr import BPR
from fusionrec.baselines.fm import FactorizationMachine
from fusionrec.baselines.lr import LogisticRegression
from fusionrec.baselines.pop import Popularity
from fusionrec.data.schema import Dataset
from fusionrec.errors import UserError
from fusionrec.spec import TrainingSpec

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
    training: TrainingSpec  # epochs, batch, rate, early stopping (its metric selects the best epoch)
    # False: fitting is one counting pass (Pop), so an epoch budget (evaluation.baselineEpochs) does not apply.
    trained: bool = True

    @property
    def task(self) -> Literal["ranking", "ctr"]:
        return "ranking" if issubclass(self.model(), RankingModel) else "ctr"


def _eager(cls: type[Model]) -> Callable[[], type[Model]]:
    return lambda: cls


def recbole_training(epochs: int, metric: str, batch_size: int = 2048, learning_rate: float = 1e-3,
                     patience: int = 10) -> TrainingSpec:
    """RecBole 1.2.1's fitting: Adam at one constant rate (no warm-up, decay, clipping or weight decay), early
    stopping after `patience` validations without improvement, the best epoch selected by `metric`."""
    return TrainingSpec(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, weight_decay=0.0,
                        warmup_ratio=0.0, lr_schedule="constant", grad_clip=0.0,
                        early_stopping={"metric": metric, "patience": patience})


BASELINES: dict[str, Baseline] = {
    "pop": Baseline("pop", _eager(Popularity), Popularity.from_data, recbole_training(1, "ndcg@10"), trained=False),
    "bpr": Baseline("bpr", _eager(BPR), BPR.from_data, recbole_training(300, "ndcg@10")),
    # Sequences, not interactions, are its training rows: 943 users on ml-100k, hence the small batches.
    "sasrec": Baseline("sasrec", _sasrec_class, _build_sasrec, recbole_training(200, "ndcg@10", batch_size=128)),
    "lr": Baseline("lr", _eager(LogisticRegression), LogisticRegression.from_data, recbole_training(300, "auc")),
    "fm": Baseline("fm", _eager(FactorizationMachine), FactorizationMachine.from_data, recbole_training(300, "auc")),
}


def get_baseline(name: str) -> Baseline:
    try:
        return BASELINES[name]
    except KeyError:
        raise UserError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}", field="baselines") from None
