"""The evaluation protocol (design.md section 4), in one place: how data is split for each task, which seeds
are fixed, which cutoffs and metrics are reported, and how a fitted model is scored. The runner, the CLI, the
training job and the benches all call these, so every number the project publishes comes from the same rules.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from fusionrec.data.schema import Dataset
from fusionrec.data.splits import LeaveOneOutSplit, RandomSplit, leave_one_out, random_split
from fusionrec.metrics import evaluate_pointwise, evaluate_ranking

CTR_SPLIT_SEED = 2020  # the protocol's random split is fixed; seeds vary the model, never the data
RANKING_CUTOFFS = (5, 10, 20)
DEFAULT_METRIC = {"ranks": "ndcg@10", "labels": "auc", "ratings": "rmse"}
REPORTED = {"labels": ("auc", "logloss"), "ratings": ("rmse", "mae")}
PROTOCOL = {
    "ranking": "chronological leave-one-out; full ranking over all items, seen items excluded; "
               "checkpoint selected by validation",
    "ctr": f"label = rating >= 4; random 80/10/10 split by interaction (seed {CTR_SPLIT_SEED}); AUC, LogLoss",
    "rating": f"random 80/10/10 split by interaction (seed {CTR_SPLIT_SEED}); RMSE, MAE",
}


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch seeded alike; called before a model is built, so the seed fixes its initial
    weights too (NumPy's legacy seed takes only 32 bits)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_split(dataset: Dataset, task: str) -> LeaveOneOutSplit | RandomSplit:
    """The protocol's split for a task type."""
    return leave_one_out(dataset) if task == "ranking" else random_split(dataset, seed=CTR_SPLIT_SEED)


def evaluate_model(model: Any, split: LeaveOneOutSplit | RandomSplit, stage: str = "test",
                   device: str | torch.device | None = None) -> dict[str, float]:
    """The protocol's metrics of a fitted model at `stage`, by the same evaluators as the baselines."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    if isinstance(split, LeaveOneOutSplit):
        return evaluate_ranking(lambda users, histories: model.full_sort_predict(users.to(device), histories),
                                split, stage, ks=RANKING_CUTOFFS)
    rows = model.encode_rows(split, stage)
    return evaluate_pointwise(lambda batch: model.predict({k: v.to(device) for k, v in batch.items()}), rows,
                              metrics=REPORTED[getattr(model, "evaluates", "labels")])


def user_histories(split: LeaveOneOutSplit | RandomSplit, n_users: int) -> list[np.ndarray]:
    """What each user has done before the test stage, oldest first (the model's input at serving time)."""
    if isinstance(split, LeaveOneOutSplit):
        return split.history("test")
    ordered = split.train.sort_values(["user_idx", "timestamp"], kind="stable")
    histories = [np.empty(0, dtype=np.int64) for _ in range(n_users)]
    for user, items in ordered.groupby("user_idx", sort=False)["item_idx"]:
        histories[int(user)] = items.to_numpy(dtype=np.int64)
    return histories
