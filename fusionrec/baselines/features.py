"""Categorical side features for the CTR baselines (LR, FM), in the field-embedding form of RecBole's
context-aware models: every row is a fixed list of fields (user id, item id, user age, gender, ..., item year,
genres), each field contributing one vector.

All feature values share one index space, 0 being padding (missing values and the empty slots of multi-valued
fields), so one embedding table serves every field. The per-user and per-item feature ids are looked up once
here and kept as tables; a batch then carries only (user, item) indices.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from fusionrec.baselines.base import PointwiseModel
from fusionrec.data.schema import ITEM, ITEM_IDX, LABEL, RATING, USER, USER_IDX, Dataset, Vocab
from fusionrec.data.splits import RandomSplit

log = logging.getLogger(__name__)

# Columns used when present; the first name found in each group wins, so both our names and RecBole's work.
USER_FIELDS: tuple[tuple[str, ...], ...] = (("age",), ("gender",), ("occupation",), ("zip_code", "zip"))
ITEM_FIELDS: tuple[tuple[str, ...], ...] = (("year", "release_year"),)
ITEM_MULTI_FIELDS: tuple[tuple[str, ...], ...] = (("genres", "genre", "class"),)


@dataclass
class FeatureConfig:
    user_fields: Sequence[Sequence[str]] = USER_FIELDS
    item_fields: Sequence[Sequence[str]] = ITEM_FIELDS
    item_multi_fields: Sequence[Sequence[str]] = ITEM_MULTI_FIELDS


def _missing(value: object) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return value is None or bool(pd.isna(value))


def _split_multi(values: pd.Series) -> list[list[str]]:
    """Lists, or strings joined by '|', ',' or whitespace (the separator is chosen once per column)."""
    strings = [v for v in values if isinstance(v, str)]
    sep = "|" if any("|" in s for s in strings) else ("," if any("," in s for s in strings) else None)
    out = []
    for value in values:
        if isinstance(value, str):
            parts = value.split(sep)
        elif isinstance(value, (list, tuple, np.ndarray)):
            parts = [str(v) for v in value]
        else:
            parts = []
        out.append([p.strip() for p in parts if p.strip()])
    return out


def _pick(frame: pd.DataFrame | None, candidates: Sequence[str]) -> str | None:
    if frame is None:
        return None
    return next((name for name in candidates if name in frame.columns), None)


class FeatureTable:
    """Global feature ids per user and per item.

    user_tokens: [n_users, n_user_fields] (user id first), item_tokens: [n_items, n_item_fields] (item id first),
    item_multi: one [n_items, max_values] table per multi-valued item field, 0-padded.
    """

    def __init__(self, dataset: Dataset, vocab: Vocab, config: FeatureConfig | None = None) -> None:
        config = config or FeatureConfig()
        self.fields: list[str] = []
        self.n_features = 1  # id 0 is padding
        users = self._aligned(dataset.users, USER, vocab.user_ids)
        items = self._aligned(dataset.items, ITEM, vocab.item_ids)
        user_columns = [self._token_field("user_id", pd.Series(vocab.user_ids))]
        for candidates in config.user_fields:
            name = _pick(users, candidates)
            if users is not None and name is not None:
                user_columns.append(self._token_field(f"user.{name}", users[name]))
        item_columns = [self._token_field("item_id", pd.Series(vocab.item_ids))]
        for candidates in config.item_fields:
            name = _pick(items, candidates)
            if items is not None and name is not None:
                item_columns.append(self._token_field(f"item.{name}", items[name]))
        self.user_tokens = torch.as_tensor(np.stack(user_columns, axis=1))  # [n_users, n_user_fields]
        self.item_tokens = torch.as_tensor(np.stack(item_columns, axis=1))  # [n_items, n_item_fields]
        self.item_multi: list[torch.Tensor] = []
        for candidates in config.item_multi_fields:
            name = _pick(items, candidates)
            if items is not None and name is not None:
                self.item_multi.append(self._multi_field(f"item.{name}", items[name]))
        log.info("CTR features: %s (%d feature values)", ", ".join(self.fields), self.n_features - 1)

    @property
    def n_fields(self) -> int:
        return len(self.fields)

    @staticmethod
    def _aligned(frame: pd.DataFrame | None, key: str, ids: np.ndarray) -> pd.DataFrame | None:
        """The frame's rows in vocabulary order (missing ids give empty rows)."""
        if frame is None:
            return None
        table = frame.assign(_key=frame[key].astype(str)).drop_duplicates("_key").set_index("_key")
        return table.reindex(pd.Index(ids.astype(str)))

    def _token_field(self, name: str, values: pd.Series) -> np.ndarray:
        present = [not _missing(v) for v in values]
        keys = values.astype(str).to_numpy()
        uniques = sorted(set(keys[present]))
        index = {value: self.n_features + i for i, value in enumerate(uniques)}
        ids = np.array([index[k] if ok else 0 for k, ok in zip(keys, present)], dtype=np.int64)
        self.fields.append(name)
        self.n_features += len(uniques)
        return ids

    def _multi_field(self, name: str, values: pd.Series) -> torch.Tensor:
        lists = _split_multi(values)
        uniques = sorted({token for row in lists for token in row})
        index = {value: self.n_features + i for i, value in enumerate(uniques)}
        width = max([len(row) for row in lists] + [1])
        ids = np.zeros((len(lists), width), dtype=np.int64)
        for r, row in enumerate(lists):
            ids[r, : len(row)] = [index[token] for token in row]
        self.fields.append(name)
        self.n_features += len(uniques)
        return torch.as_tensor(ids)


class FieldEmbedding(nn.Module):
    """(user, item) -> one vector per field, [B, n_fields, dim]; multi-valued fields average their values."""

    user_tokens: torch.Tensor  # buffers: [n_users, n_user_fields], [n_items, n_item_fields]
    item_tokens: torch.Tensor

    def __init__(self, table: FeatureTable, dim: int) -> None:
        super().__init__()
        self.register_buffer("user_tokens", table.user_tokens.clone())
        self.register_buffer("item_tokens", table.item_tokens.clone())
        for i, multi in enumerate(table.item_multi):
            self.register_buffer(f"item_multi_{i}", multi.clone())
        self.n_multi = len(table.item_multi)
        self.embedding = nn.Embedding(table.n_features, dim, padding_idx=0)

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.user_tokens[user], self.item_tokens[item]], dim=1)  # [B, n_single]
        fields = [self.embedding(tokens)]  # [B, n_single, D]
        for i in range(self.n_multi):
            values = getattr(self, f"item_multi_{i}")[item]  # [B, L]
            mask = (values > 0).unsqueeze(-1).float()  # [B, L, 1]
            summed = (self.embedding(values) * mask).sum(dim=1)  # [B, D]
            fields.append((summed / mask.sum(dim=1).clamp(min=1.0)).unsqueeze(1))  # [B, 1, D]
        return torch.cat(fields, dim=1)  # [B, n_fields, D]


class FieldCTRModel(PointwiseModel):
    """Shared plumbing of the field-based CTR models: rows are (user, item, label), the loss is BCE on logits."""

    def encode_rows(self, split: RandomSplit, stage: str) -> dict[str, torch.Tensor]:
        part = split.part(stage)
        rows = {"user": torch.tensor(part[USER_IDX].to_numpy(dtype=np.int64)),
                "item": torch.tensor(part[ITEM_IDX].to_numpy(dtype=np.int64)),
                "label": torch.tensor(part[LABEL].to_numpy(dtype=np.float32))}
        if RATING in part:
            rows["rating"] = torch.tensor(part[RATING].to_numpy(dtype=np.float32))
        return rows

    def logits(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """[B] click logits."""
        raise NotImplementedError

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(self.logits(batch["user"], batch["item"]),
                                                              batch["label"].float())

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(self.logits(batch["user"], batch["item"]))
