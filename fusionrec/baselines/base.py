"""The contract every in-project model follows, after RecBole's abstract recommender: a model says how to
make its training batches, how to compute its loss, and how to score; the one training loop
(`fusionrec.train.loop.fit`) and the protocol's evaluators (`fusionrec.metrics`) do the rest, so a new model
is one file plus a registry line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from fusionrec.data.splits import LeaveOneOutSplit, RandomSplit


class Ranks(Protocol):
    """What the loop needs of a ranking model (the fused model has it without subclassing `RankingModel`)."""

    def training_batches(self, split: LeaveOneOutSplit, batch_size: int,
                         rng: np.random.Generator) -> Iterator[dict[str, torch.Tensor]]: ...

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def full_sort_predict(self, users: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor: ...

    def fit_without_gradients(self, split: LeaveOneOutSplit) -> None: ...


class Scores(Protocol):
    """What the loop needs of a pointwise (CTR, rating) model."""

    def encode_rows(self, split: RandomSplit, stage: str) -> dict[str, torch.Tensor]: ...

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...


class RankingModel(nn.Module, ABC):
    """A model ranked over the full catalogue (HR/NDCG/MRR@K, leave-one-out)."""

    name: ClassVar[str]
    paper: ClassVar[str] = ""
    trainable: ClassVar[bool] = True  # Popularity is not: it is fitted by counting

    @abstractmethod
    def training_batches(self, split: LeaveOneOutSplit, batch_size: int,
                         rng: np.random.Generator) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch of training batches (tensors on CPU)."""

    @abstractmethod
    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scalar loss of one batch."""

    @abstractmethod
    def full_sort_predict(self, users: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        """Scores of every item for each user.

        Args:
            users: [B] user indices.
            histories: B arrays of item indices the user saw before the evaluated stage, oldest first
                (sequential models read them; ID models may ignore them).
        Returns:
            [B, n_items] scores; higher is better. Seen items are masked by the evaluator, not here.
        """

    def fit_without_gradients(self, split: LeaveOneOutSplit) -> None:
        """Models with `trainable = False` fit here (e.g. counting)."""
        raise NotImplementedError


class PointwiseModel(nn.Module, ABC):
    """A CTR (BCE on a 0/1 label) or rating (MSE) model over (user, item, features) rows."""

    name: ClassVar[str]
    paper: ClassVar[str] = ""

    @abstractmethod
    def encode_rows(self, split: RandomSplit, stage: str) -> dict[str, torch.Tensor]:
        """All rows of one stage as tensors (feature ids, label, rating) for batching by the fit loop."""

    @abstractmethod
    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scalar loss of one batch."""

    @abstractmethod
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B] probabilities (CTR) or ratings."""

