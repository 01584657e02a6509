"""User side features (age, gender, occupation, zip, ...) for the pointwise heads.

A CTR model that only knows a user through their ID and a short history has nothing to say about what people
*like them* click: FM and DCN read these columns, and on MovieLens they are part of why those baselines are
hard to beat. Each chosen column of the users table becomes a categorical field; the fields' embeddings are
summed into one vector that the model adds to the user tower's output.

The value -> id table is built once from the training data and stored as a buffer, so an artifact carries it
in its weights and serving looks a known user's features up by user index; no users table is needed to score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from fusionrec.data.schema import USER
from fusionrec.errors import UserError

MISSING = 0  # id of a missing value in every field (its embedding row stays zero)


def encode_user_features(users: pd.DataFrame | None, user_ids: np.ndarray,
                         columns: Sequence[str]) -> tuple[np.ndarray, int]:
    """Categorical ids of `columns` for each vocabulary user.

    Every field gets its own id range after the shared missing id 0, values sorted so the encoding does not
    depend on row order. Numbers are categories too (MovieLens ages are already bucket-like).

    Returns:
        tokens [n_users, len(columns)] int64 and the number of ids in use (the embedding table's size).
    """
    if not columns:
        return np.zeros((len(user_ids), 0), dtype=np.int64), 1
    if users is None:
        raise UserError(f"task.userFeatures lists {list(columns)} but the dataset has no users table",
                        field="task.userFeatures", fix="set data.users, or remove task.userFeatures")
    absent = [c for c in columns if c not in users.columns]
    if absent:
        available = [c for c in users.columns if c != USER]
        raise UserError(f"task.userFeatures: columns {absent} are not in the users table (it has {available})",
                        field="task.userFeatures", fix=f"choose from {available}")
    table = users.assign(_key=users[USER].astype(str)).drop_duplicates("_key").set_index("_key")
    aligned = table.reindex(pd.Index(np.asarray(user_ids).astype(str)))  # vocabulary order; unknown -> NaN
    tokens = np.zeros((len(user_ids), len(columns)), dtype=np.int64)
    next_id = MISSING + 1
    for f, column in enumerate(columns):
        values = aligned[column]
        present = values.notna().to_numpy() & (values.astype(str).str.strip() != "").to_numpy()
        keys = values.astype(str).str.strip().to_numpy()
        uniques = sorted(set(keys[present]))
        index = {value: next_id + i for i, value in enumerate(uniques)}
        tokens[present, f] = [index[k] for k in keys[present]]
        next_id += len(uniques)
    return tokens, next_id


class UserFeatures(nn.Module):
    """user index [B] -> [B, D], the sum of the user's field embeddings.

    Args:
        n_users: rows of the token table (the training vocabulary).
        n_fields: categorical columns per user.
        n_values: size of the shared id space (ids 0 .. n_values - 1, 0 = missing).
        dim: the tower dimension D.
    """

    tokens: Tensor  # buffer [n_users, n_fields]

    def __init__(self, n_users: int, n_fields: int, n_values: int, dim: int) -> None:
        super().__init__()
        if n_fields < 1 or n_values < 2:
            raise ValueError(f"need at least one field and one value, got n_fields={n_fields}, n_values={n_values}")
        # Filled by `set_tokens` when built from data, or by load_state_dict from an artifact.
        self.register_buffer("tokens", torch.zeros(n_users, n_fields, dtype=torch.long))
        self.embedding = nn.Embedding(n_values, dim, padding_idx=MISSING)
        nn.init.normal_(self.embedding.weight, std=0.02)
        with torch.no_grad():
            self.embedding.weight[MISSING].zero_()

    def set_tokens(self, tokens: np.ndarray) -> None:
        if tuple(tokens.shape) != tuple(self.tokens.shape):
            raise ValueError(f"tokens shape {tuple(tokens.shape)} != the table's {tuple(self.tokens.shape)}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.embedding.num_embeddings):
            raise ValueError(f"token ids must lie in [0, {self.embedding.num_embeddings}), got "
                             f"[{tokens.min()}, {tokens.max()}]")
        self.tokens.copy_(torch.as_tensor(tokens, dtype=torch.long))

    def forward(self, user: Tensor) -> Tensor:
        return self.embedding(self.tokens[user]).sum(dim=1)  # [B, F] -> [B, F, D] -> [B, D]
