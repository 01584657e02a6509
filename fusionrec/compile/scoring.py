"""Ranking metrics for the compile gate: through compiled graphs (the catalogue from the item graph, user
vectors from the user graph), or through the model itself for the torch reference, both scored by the
model's own head with masks and ranks from the protocol's evaluator. The int8 gate and the pruning report
compare the two.

The reference reads what the loaded model already holds: a frozen encoder's pooled catalogue is cached
(computed, or read from the embedding cache, when the model is built), so the reference catalogue costs a
projection and a fusion instead of one more pass of every LM over every item (274 s of a ~10 min compile of
the fused MiniLM + MPNet + SmolLM2 model). It computes what the eager graphs compute (the graphs re-run the
same submodules, `graphs.py`) up to float rounding; pruned encoders make it stale, so a pruned model is
measured through its pruned graphs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fusionrec.compile.inputs import TowerInputs
from fusionrec.data.splits import LeaveOneOutSplit
from fusionrec.metrics.evaluator import RANK_METRICS, metrics_from_ranks, rank_targets

BATCH = 64
UserVectors = Callable[[torch.Tensor, list[np.ndarray]], torch.Tensor]  # users [B], histories -> [B, D]


class Ranking(dict):
    """HR/NDCG/MRR@10 by name, plus `ranks`: the held-out item's rank for each evaluated user, in split order.

    The metrics alone answer "how good"; comparing two models on the same users needs the ranks too
    (`parity.paired_drop_interval`), so one evaluation pass serves both.
    """

    def __init__(self, metrics: dict[str, float], ranks: np.ndarray) -> None:
        super().__init__(metrics)
        self.ranks = ranks  # [U] 1-based


def encode_catalogue(item_runtime: Any, inputs: TowerInputs, n_items: int, batch: int = BATCH) -> np.ndarray:
    """[N, D] item vectors from the item graph, `batch` items per call."""
    rows = [item_runtime.run(inputs.item_inputs(np.arange(start, min(start + batch, n_items))))
            for start in range(0, n_items, batch)]
    return np.concatenate(rows).astype(np.float32)


def graph_ranking_metrics(model: Any, user_runtime: Any, item_runtime: Any, inputs: TowerInputs,
                          split: LeaveOneOutSplit, stage: str = "valid") -> Ranking:
    """HR/NDCG/MRR@10 at `stage` when every vector comes from the given runtimes."""
    catalogue = encode_catalogue(item_runtime, inputs, model.n_items)

    def users(ids: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(user_runtime.run(inputs.user_inputs(histories, catalogue, ids.numpy())))

    return _metrics(model, torch.from_numpy(catalogue), users, split, stage)


def model_vectors(model: Any) -> tuple[torch.Tensor, UserVectors]:
    """The torch reference from the model in eval mode: its catalogue [N, D] and a user-vector function
    (the user tower on the histories, plus the per-user part where the model has one, as `full_sort_predict`
    adds it)."""
    model.eval()
    catalogue = torch.from_numpy(model.item_embeddings())  # [N, D]

    def users(ids: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        with torch.no_grad():
            vectors = model.user_vectors(histories)  # [B, D]
            offset = model.user_offset(ids.to(model.device))
            return (vectors if offset is None else vectors + offset).float().cpu()

    return catalogue, users


def model_ranking_metrics(model: Any, split: LeaveOneOutSplit, stage: str = "valid") -> Ranking:
    """HR/NDCG/MRR@10 at `stage` of the (unpruned) model itself: the gate's torch reference."""
    catalogue, users = model_vectors(model)
    return _metrics(model, catalogue, users, split, stage)


def _metrics(model: Any, catalogue: torch.Tensor, users: UserVectors, split: LeaveOneOutSplit,
             stage: str) -> Ranking:
    def score(ids: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        with torch.no_grad():
            return model.head.full_sort_predict(users(ids, histories), catalogue, ids)  # [B, N]

    _, ranks = rank_targets(score, split, stage)
    return Ranking(metrics_from_ranks(ranks, ks=[10], metrics=RANK_METRICS), ranks)
