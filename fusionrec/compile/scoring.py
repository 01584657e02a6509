"""Ranking metrics through compiled graphs: the catalogue from the item graph, user vectors from the user
graph, scores from the model's own head, masks and ranks from the protocol's evaluator. The int8 gate and
the pruning report compare this against the same path run by torch."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fusionrec.compile.inputs import TowerInputs
from fusionrec.data.splits import LeaveOneOutSplit
from fusionrec.metrics import evaluate_ranking

BATCH = 64


def encode_catalogue(item_runtime: Any, inputs: TowerInputs, n_items: int, batch: int = BATCH) -> np.ndarray:
    """[N, D] item vectors from the item graph, `batch` items per call."""
    rows = [item_runtime.run(inputs.item_inputs(np.arange(start, min(start + batch, n_items))))
            for start in range(0, n_items, batch)]
    return np.concatenate(rows).astype(np.float32)


def graph_ranking_metrics(model: Any, user_runtime: Any, item_runtime: Any, inputs: TowerInputs,
                          split: LeaveOneOutSplit, stage: str = "valid") -> dict[str, float]:
    """HR/NDCG/MRR@10 at `stage` when every vector comes from the given runtimes."""
    catalogue = encode_catalogue(item_runtime, inputs, model.n_items)
    items = torch.from_numpy(catalogue)

    def score(users: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        vectors = user_runtime.run(inputs.user_inputs(histories, catalogue, users.numpy()))
        return model.head.full_sort_predict(torch.from_numpy(vectors), items, users)

    return evaluate_ranking(score, split, stage, ks=(10,))
