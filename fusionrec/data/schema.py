"""The data contract every reader produces and every model consumes (design.md section 2).

Readers turn a shop's export into a `Dataset` of plain DataFrames with these column names; the splits turn
raw string ids into dense integer indices (`Vocab`) once, so models, metrics and serving agree on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

USER = "user_id"
ITEM = "item_id"
TIME = "timestamp"
RATING = "rating"
LABEL = "label"

# Integer index columns added by the splits.
USER_IDX = "user_idx"
ITEM_IDX = "item_idx"


@dataclass(frozen=True)
class Dataset:
    """Interactions in file order, the item catalogue with its text fields, optional user features.

    interactions: user_id (str), item_id (str), timestamp (int64 seconds), optional rating (float64) and
        label (int8). Row order is the order in the source file: it breaks timestamp ties in the protocol.
    items: item_id (str) plus text fields (title, genres, year, ...); every interacted item is present.
    users: user_id (str) plus feature columns, or None.
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame | None = None
    # The item text template `text` was rendered with (None: not rendered): a served version renders the items
    # added live with the same one (artifact metrics.json `item_text_template`).
    template: str | None = None

    @property
    def n_users(self) -> int:
        return int(self.interactions[USER].nunique())

    @property
    def n_items(self) -> int:
        return int(len(self.items))


@dataclass(frozen=True)
class Vocab:
    """Dense indices for raw ids. Items are indexed over the whole catalogue, so full ranking covers items
    nobody has interacted with yet; users over those who have interactions."""

    user_ids: np.ndarray  # [n_users] str, index -> raw id
    item_ids: np.ndarray  # [n_items] str
    _user_index: dict[str, int] = field(repr=False, compare=False, default_factory=dict)
    _item_index: dict[str, int] = field(repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._user_index.update({u: i for i, u in enumerate(self.user_ids)})
        self._item_index.update({v: i for i, v in enumerate(self.item_ids)})

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> Vocab:
        users = pd.unique(dataset.interactions[USER].astype(str))
        items = pd.unique(pd.concat([dataset.items[ITEM], dataset.interactions[ITEM]]).astype(str))
        return cls(user_ids=np.asarray(users, dtype=object), item_ids=np.asarray(items, dtype=object))

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def user_index(self, user_id: str) -> int | None:
        return self._user_index.get(str(user_id))

    def item_index(self, item_id: str) -> int | None:
        return self._item_index.get(str(item_id))

    def encode_users(self, ids: pd.Series) -> np.ndarray:
        return ids.astype(str).map(self._user_index).to_numpy(dtype=np.int64)

    def encode_items(self, ids: pd.Series) -> np.ndarray:
        return ids.astype(str).map(self._item_index).to_numpy(dtype=np.int64)
