"""The fused recommender: several pretrained LMs fused into one item tower, a user tower, and a task head.

It follows the same contract as the in-project baselines (`fusionrec.baselines.base`): `training_batches` /
`calculate_loss` / `full_sort_predict` for ranking, `encode_rows` / `calculate_loss` / `predict` for CTR and
rating, so `fusionrec.metrics.evaluate_ranking` and `evaluate_pointwise` measure it with the same code as
every baseline, and one training loop fits them all. The data adapters behind `training_batches` and
`encode_rows` (windows, rows with their histories, the catalogue's texts) live in `fusionrec.model.fused_data`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from fusionrec.data.schema import RATING, Dataset
from fusionrec.data.splits import LeaveOneOutSplit, RandomSplit
from fusionrec.errors import UserError
from fusionrec.model.encoders import TextEncoder
from fusionrec.model.fused_data import Batch, item_texts_in_order, pointwise_rows, ranking_batches
from fusionrec.model.fusion import FusionWeights, build_fusion
from fusionrec.model.heads import RankingHead, RatingHead, build_head
from fusionrec.model.towers import (
    UNKNOWN_FEEDBACK,
    VECTOR_TOWERS,
    ItemTower,
    PooledUserTower,
    SequenceUserTower,
    TextUserTower,
    left_pad,
)
from fusionrec.model.user_features import UserFeatures, encode_user_features
from fusionrec.spec import FusionRecommenderSpec, FusionSpec

log = logging.getLogger(__name__)
FEEDBACK_DROPOUT = 0.15  # share of history labels hidden per training step

__all__ = ["Batch", "FusedConfig", "FusedRecommender", "item_texts_in_order"]


@dataclass
class FusedConfig:
    """Settings of the fused model, all filled by `build` from the spec (task.sequenceLayers, sequenceHeads and
    headHidden for the sizes) and, for the user features' id space, from the data; the defaults equal the
    spec's. Written to an artifact's metrics["model"] for information, never read back to build."""

    task: Literal["ranking", "ctr", "rating"] = "ranking"
    user_tower: Literal["sequence", "pooled", "text"] = "sequence"
    use_item_ids: bool = True
    history_length: int = 50
    negatives: Literal["full", "in_batch", "sampled"] = "full"
    num_negatives: int = 256
    dropout: float = 0.2  # sequence tower and head MLP (training.dropout)
    feature_dropout: float = 0.1  # each encoder's projected vector, before fusion (fusion.dropout)
    n_layers: int = 2
    n_heads: int = 1
    head_hidden: int = 128
    text_windows_per_user: int = 4  # text tower: training targets per user (its last N training items)
    # Pointwise only: users-table columns embedded into the user vector (task.userFeatures) and the size of
    # their shared id space; set from the data by from_spec, from the weights' table by load_model.
    user_features: tuple[str, ...] = ()
    user_feature_values: int = 0
    cross_layers: int = 0  # pointwise only: explicit cross layers in the head (task.crossLayers)


class FusedRecommender(nn.Module):
    """Item tower (fused LM text embeddings, optional item IDs) + user tower + task head.

    Args:
        encoders: the M text encoders, all projecting to the fusion dimension.
        fusion_spec: the fusion method, its dimension (the towers' D), hidden width and dropout.
        item_texts: [N] text per item, in item-index order.
        n_users: users of the training vocabulary.
        config: see `FusedConfig`.
    """

    name = "fused"
    trainable = True

    def __init__(self, encoders: Sequence[TextEncoder], fusion_spec: FusionSpec, item_texts: Sequence[str],
                 n_users: int, config: FusedConfig) -> None:
        super().__init__()
        self.config = config
        dim = fusion_spec.dim
        fusion = build_fusion(fusion_spec, [e.spec.name for e in encoders])
        self.items = ItemTower(encoders, fusion, item_texts, use_item_ids=config.use_item_ids,
                               dropout=config.feature_dropout)
        self.n_items = self.items.n_items
        self.n_users = n_users
        self.pad = self.n_items  # padding slot of every history tensor
        if config.user_tower == "sequence":
            self.user_tower: SequenceUserTower | PooledUserTower | TextUserTower = SequenceUserTower(
                dim, config.history_length, config.dropout, config.n_layers, config.n_heads)
        elif config.user_tower == "pooled":
            self.user_tower = PooledUserTower(dim, config.history_length, config.dropout)
        else:
            self.user_tower = TextUserTower(dim, config.history_length)
        pointwise = config.task != "ranking"
        self.user_embedding = nn.Embedding(n_users, dim) if config.use_item_ids and pointwise else None
        # CTR/rating histories carry whether the user liked each item (0/1, or unknown): added to its vector.
        self.feedback = nn.Embedding(UNKNOWN_FEEDBACK + 1, dim) if pointwise and config.user_tower != "text" \
            else None
        for table in (self.user_embedding, self.feedback):
            if table is not None:
                nn.init.normal_(table.weight, std=0.02)
        self.user_features = None
        if config.user_features:
            if not pointwise:
                raise ValueError("user_features apply to the ctr and rating tasks only")
            self.user_features = UserFeatures(n_users, len(config.user_features), config.user_feature_values, dim)
        self.head = build_head(config.task, dim=dim, n_users=n_users, negatives=config.negatives,
                               num_negatives=config.num_negatives, hidden=config.head_hidden,
                               dropout=config.dropout, cross_layers=config.cross_layers)
        self._catalogue: Tensor | None = None

    # --- construction ------------------------------------------------------------------------------------

    @classmethod
    def from_spec(cls, spec: FusionRecommenderSpec, dataset: Dataset, split: LeaveOneOutSplit | RandomSplit, *,
                  model_cache_dir: Path | None = None, embedding_cache_dir: Path | None = None,
                  encoders: Sequence[TextEncoder] | None = None) -> FusedRecommender:
        """Build the model a spec describes for a dataset and its split (item texts in vocabulary order,
        the user vocabulary, the user features' id space, the training rating scale)."""
        features = tuple(spec.task.user_features)
        tokens, n_values = encode_user_features(dataset.users, split.vocab.user_ids, features)
        model = cls.build(spec, item_texts_in_order(dataset, split.vocab.item_ids), split.vocab.n_users,
                          model_cache_dir=model_cache_dir, embedding_cache_dir=embedding_cache_dir,
                          encoders=encoders, user_feature_values=n_values if features else 0)
        if model.user_features is not None:
            model.user_features.set_tokens(tokens)
        if isinstance(model.head, RatingHead):
            if RATING not in split.train:
                raise UserError("task.type is rating but the interactions have no rating column",
                                field="task.type", fix="use task.type ctr or ranking, or map a rating column")
            ratings = split.train[RATING].to_numpy(dtype=np.float64)
            model.head.set_rating_range(float(ratings.mean()), float(ratings.min()), float(ratings.max()))
        return model

    @classmethod
    def build(cls, spec: FusionRecommenderSpec, item_texts: Sequence[str], n_users: int, *,
              model_cache_dir: Path | None = None, embedding_cache_dir: Path | None = None,
              encoders: Sequence[TextEncoder] | None = None, user_feature_values: int = 0) -> FusedRecommender:
        """Build from a spec and an explicit catalogue (how an artifact is reloaded without its data). The
        architecture is the spec's, and only the spec's: there is no other way in.

        `encoders` reuses already loaded encoders of the same specs (a benchmark that trains many models on
        one catalogue loads each LM once); their projections are re-initialised by the item tower.
        `user_feature_values` is the size of the user features' id space (task.userFeatures), which the data
        decides: `from_spec` counts it, `load_model` reads it off the trained table.
        """
        if encoders is None:
            encoders = [TextEncoder(e, spec.fusion.dim, model_cache_dir=model_cache_dir,
                                    embedding_cache_dir=embedding_cache_dir) for e in spec.encoders]
        elif [e.spec for e in encoders] != list(spec.encoders) or any(e.dim != spec.fusion.dim for e in encoders):
            raise ValueError(f"encoders {[e.spec.name for e in encoders]} were built for other specs than "
                             f"spec.encoders {[e.name for e in spec.encoders]} (dim {spec.fusion.dim})")
        frozen = all(e.frozen for e in encoders)
        task = spec.task
        negatives = task.negatives_for(fine_tuned=not frozen)
        if task.type == "ranking" and not frozen:
            if task.negatives == "full":
                log.warning("task.negatives=full with a fine-tuned encoder runs the whole catalogue through "
                            "the LM every step; in_batch or sampled is much cheaper")
            elif task.negatives is None:
                log.info("an encoder is fine-tuned: softmax over sampled negatives (task.negatives not set)")
        if task.user_features and user_feature_values < 2:
            raise ValueError(f"spec.task.userFeatures {task.user_features} need the size of their id space "
                             f"(user_feature_values, got {user_feature_values}): build through from_spec, which "
                             "encodes them")
        config = FusedConfig(task=task.type, user_tower=spec.user_tower, use_item_ids=task.use_item_ids,
                             history_length=task.history_length, negatives=negatives,
                             num_negatives=task.num_negatives, dropout=spec.training.dropout,
                             feature_dropout=spec.fusion.dropout, n_layers=task.sequence_layers,
                             n_heads=task.sequence_heads, head_hidden=task.head_hidden,
                             user_features=tuple(task.user_features),
                             user_feature_values=user_feature_values if task.user_features else 0,
                             cross_layers=task.cross_layers)
        return cls(encoders, spec.fusion, item_texts, n_users, config)

    # --- the shared plumbing -----------------------------------------------------------------------------

    def train(self, mode: bool = True) -> FusedRecommender:
        self._catalogue = None  # weights are about to change (or just did)
        return super().train(mode)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        self._catalogue = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def evaluates(self) -> str:
        """What the evaluator reads: "ranks", "labels" (CTR) or "ratings"."""
        return self.head.evaluates

    @property
    def device(self) -> torch.device:
        return self.items._encoder(0).projection.weight.device

    def text_encoders(self) -> list[TextEncoder]:
        """The item tower's encoders, in fusion order, typed (its nn.ModuleList yields plain Modules)."""
        return [self.items._encoder(m) for m in range(len(self.items.encoders))]

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """Trainable LM weights: the training loop gives them `training.encoderLearningRate`."""
        return [p for encoder in self.text_encoders() for p in encoder.backbone.parameters() if p.requires_grad]

    def catalogue(self) -> Tensor:
        """[N, D] every item's vector; cached while the model is in eval mode without gradients."""
        if self.training or torch.is_grad_enabled():
            return self.items()
        if self._catalogue is None:
            self._catalogue = self.items()
        return self._catalogue

    def _item_table(self, ids: Tensor | None) -> tuple[Tensor, Tensor]:
        """Vectors of the items a batch needs, and where each item index finds its row.

        Args:
            ids: item indices the batch touches (padding allowed), or None for the whole catalogue.
        Returns:
            table [U + 1, D] (last row zeros, for padding) and lookup [N + 1] (item index -> row).
        """
        device = self.device
        if ids is None or (not self.training and not torch.is_grad_enabled()):
            vectors = self.catalogue()  # [N, D]
            lookup = torch.arange(self.n_items + 1, device=vectors.device)
        else:
            unique = torch.unique(ids[ids != self.pad])  # [U]
            vectors = self.items(unique)  # [U, D]
            lookup = torch.full((self.n_items + 1,), len(unique), dtype=torch.long, device=device)
            lookup[unique] = torch.arange(len(unique), device=device)
        table = torch.cat([vectors, vectors.new_zeros(1, vectors.shape[1])])  # [U + 1, D]
        return table, lookup

    def _user_vectors(self, history: Tensor, table: Tensor, lookup: Tensor, feedback: Tensor | None = None) -> Tensor:
        """[B, L] left-padded histories (oldest first), [B, L] feedback ids (pointwise) -> [B, D] user vectors."""
        if isinstance(self.user_tower, VECTOR_TOWERS):
            vectors = table[lookup[history]]  # [B, L, D]
            if self.feedback is not None:
                if feedback is None:
                    feedback = torch.full_like(history, UNKNOWN_FEEDBACK)
                elif self.training:
                    # Serving may not know past labels: hide some in training so "unknown" stays meaningful.
                    hidden = torch.rand(feedback.shape, device=feedback.device) < FEEDBACK_DROPOUT
                    feedback = feedback.masked_fill(hidden, UNKNOWN_FEEDBACK)
                vectors = vectors + self.feedback(feedback)
            return self.user_tower(vectors, history != self.pad)  # [B, L, D] -> [B, D]
        rows = [row[row != self.pad].tolist() for row in history]
        return self.user_tower(self.items, rows)

    def _pad_histories(self, histories: Sequence[np.ndarray]) -> Tensor:
        """B histories of item indices, oldest first -> [B, L] left-padded with the last history_length items."""
        return left_pad([np.asarray(h, dtype=np.int64)[-self.config.history_length:] for h in histories],
                         self.pad).to(self.device)

    # --- ranking contract --------------------------------------------------------------------------------

    def training_batches(self, split: LeaveOneOutSplit, batch_size: int,
                         rng: np.random.Generator) -> Iterator[Batch]:
        """One epoch of (history, next item) windows over the training sequences, shuffled by `rng`.

        Sequence tower: every prefix of a window predicts its next item (SASRec's all-positions objective).
        Text tower: one target per window, the user's last `text_windows_per_user` training items.
        """
        if self.config.task != "ranking":
            raise ValueError(f"training_batches is the ranking contract; this model's task is {self.config.task}")
        tower = self.config.user_tower
        targets = None if tower != "text" else self.config.text_windows_per_user
        return ranking_batches(split, batch_size, rng, history_length=self.config.history_length,
                               targets_per_user=targets, pad=self.pad, head=self.head, n_items=self.n_items,
                               shuffle_histories=tower == "pooled")

    def calculate_loss(self, batch: Batch) -> Tensor:
        if self.config.task != "ranking":
            return self._pointwise_loss(batch)
        assert isinstance(self.head, RankingHead)  # build_head gives task "ranking" a RankingHead
        history, targets = batch["items"], batch["targets"]
        sequence = isinstance(self.user_tower, VECTOR_TOWERS)
        real = targets != self.pad  # [B, L]
        flat_targets = targets[real] if sequence else targets[:, -1]  # [Q]
        candidates, target_index = self.head.candidates(flat_targets, batch.get("negatives"))
        needed = None if candidates is None else (torch.cat([history.flatten(), candidates]) if sequence
                                                  else candidates)
        table, lookup = self._item_table(needed)
        if isinstance(self.user_tower, VECTOR_TOWERS):  # `sequence`, narrowed for the checker
            states = self.user_tower.states(table[lookup[history]], history != self.pad)  # [B, L, D]
            queries = states[real]  # [Q, D]
        else:
            queries = self._user_vectors(history, table, lookup)  # [B, D]
        items = table[: self.n_items] if candidates is None else table[lookup[candidates]]  # [C, D]
        return self.head.calculate_loss(queries, items, {"target_index": target_index})

    @property
    def knows_users(self) -> bool:
        """Whether the user vector has a per-user part (ID embedding, side features) beyond the history."""
        return self.user_embedding is not None or self.user_features is not None

    def user_offset(self, user: Tensor) -> Tensor | None:
        """[B] user indices -> [B, D] the per-user part added to the history's vector, or None if there is none.

        Serving adds it for users of the training vocabulary; a new user has only their history."""
        parts = [module(user) for module in (self.user_embedding, self.user_features) if module is not None]
        return sum(parts[1:], parts[0]) if parts else None

    def user_vectors(self, histories: Sequence[np.ndarray]) -> Tensor:
        """[B] histories (item indices, oldest first) -> [B, D] user-tower outputs, without any user-ID
        embedding: a vector that depends on the history alone, which is what serving caches per history."""
        history = self._pad_histories(histories)  # [B, L]
        table, lookup = self._item_table(None)  # [N + 1, D], [N + 1]
        return self._user_vectors(history, table, lookup)

    def full_sort_predict(self, users: Tensor, histories: list[np.ndarray]) -> Tensor:
        """[B] users and their histories (oldest first) -> [B, N] scores over the whole catalogue."""
        if len(histories) != len(users):
            raise ValueError(f"need one history per user, got {len(histories)} histories for {len(users)} users")
        history = self._pad_histories(histories)
        table, lookup = self._item_table(None)  # one catalogue pass serves the tower and the scores
        user_vectors = self._user_vectors(history, table, lookup)
        offset = self.user_offset(users.to(self.device))
        if offset is not None:
            user_vectors = user_vectors + offset
        return self.head.full_sort_predict(user_vectors, table[: self.n_items], users.to(self.device))

    # --- pointwise contract (ctr, rating) -----------------------------------------------------------------

    def encode_rows(self, split: RandomSplit, stage: str) -> Batch:
        """All rows of `stage` with each row's history: the user's training items strictly before the row's
        timestamp (so a training row never sees itself, and train and test rows are built alike) and whether
        the user liked each of them (their label), which the sequence tower reads with the items."""
        if self.config.task == "ranking":
            raise ValueError("encode_rows is the CTR/rating contract; this model ranks (use training_batches)")
        return pointwise_rows(split, stage, history_length=self.config.history_length, pad=self.pad)

    def _pair_vectors(self, batch: Batch) -> tuple[Tensor, Tensor]:
        history, item = batch["history"], batch["item"]
        # The text tower reads history texts itself; only the sequence tower needs the history items' vectors
        # (with an unfrozen encoder, encoding them anyway cost 10x per step).
        needed = torch.cat([history.flatten(), item]) if isinstance(self.user_tower, VECTOR_TOWERS) else item
        table, lookup = self._item_table(needed)
        users = self._user_vectors(history, table, lookup, batch.get("history_feedback"))  # [B, D]
        offset = self.user_offset(batch["user"])
        if offset is not None:
            users = users + offset
        return users, table[lookup[item]]

    def _pointwise_loss(self, batch: Batch) -> Tensor:
        users, items = self._pair_vectors(batch)
        return self.head.calculate_loss(users, items, batch)

    def predict(self, batch: Batch) -> Tensor:
        """[B] click probabilities (ctr) or ratings (rating), or dot-product scores (ranking)."""
        users, items = self._pair_vectors(batch)
        return self.head.predict(users, items, batch)

    # --- reports -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def item_embeddings(self) -> np.ndarray:
        """[N, D] float32 final item vectors (the artifact's item_index.npy)."""
        was_training = self.training
        self.eval()
        try:
            return self.catalogue().float().cpu().numpy()
        finally:
            self.train(was_training)

    @torch.no_grad()
    def fusion_weights(self, histories: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
        """How much each LM counts: over the catalogue ("global") and, given histories, per user.

        Per user: for a sequence tower, the mean of the item-level weights over the user's recent items (the
        items that make up the user state); for a text tower, the fusion weights of the user's own text.
        Returns {"method", "kind", "models", "global": {name: weight}, "per_user": [U, M] tensor or None}.
        """
        was_training = self.training
        self.eval()
        try:
            fusion = self.items.fusion
            per_item = fusion.weights(self.items.stacked(None))  # over [N, M, D]
            report: dict[str, Any] = {"method": fusion.name, "kind": per_item["kind"],
                                      "models": list(fusion.model_names), "global": per_item["per_model"],
                                      "per_user": None}
            if histories is None:
                return report
            if isinstance(self.user_tower, TextUserTower):
                stacked = self.user_tower.stacked(self.items, [np.asarray(h).tolist() for h in histories])
                user_weights = fusion.weights(stacked)
                report["per_user"] = user_weights.get("per_example", _repeat(user_weights, len(histories)))
                return report
            if per_item["kind"] != "per_example":
                report["per_user"] = _repeat(per_item, len(histories))
                return report
            weights = per_item["per_example"]  # [N, M]
            rows = []
            for history in histories:
                recent = np.asarray(history, dtype=np.int64)[-self.config.history_length:]
                rows.append(weights[torch.tensor(recent)].mean(dim=0) if len(recent)
                            else weights.mean(dim=0))
            report["per_user"] = torch.stack(rows) if rows else weights.new_zeros(0, weights.shape[1])
            return report
        finally:
            self.train(was_training)


# --- helpers ------------------------------------------------------------------------------------------------


def _repeat(weights: FusionWeights, n: int) -> Tensor:
    """A per-model report -> [n, M], the same row for everyone."""
    row = torch.tensor([weights["per_model"][name] for name in weights["models"]])
    return row.unsqueeze(0).expand(n, -1).clone()

