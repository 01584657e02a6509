"""Request data -> the numpy inputs a compiled graph takes (the same tensors `graphs.py` feeds the model).

Serving and the parity gate both build inputs here, so a compiled graph is checked on exactly what it will
be fed: tokens from the artifact's own tokenizers (right padded, cut to each encoder's max length), user texts
built the way the text tower builds them, histories left padded with the padding row of the item table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusionrec.compile.graphs import GraphSignature, token_names
from fusionrec.model.towers import TextUserTower

Arrays = dict[str, np.ndarray]


@dataclass
class TextTokenizer:
    """One encoder's tokenizer and the max length the model used."""

    name: str
    tokenizer: Any
    max_length: int

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="np")
        return batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64)  # (B, T) each


class TowerInputs:
    """Builds graph inputs from texts, item indices or histories.

    Args:
        tokenizers: one per encoder, in the model's encoder order.
        item_texts: [N] catalogue texts in item-index order.
        history_length: the user tower's window (most recent items read).
        user_text_tower: whether the user tower reads text (else item vectors of the history).
    """

    def __init__(self, tokenizers: Sequence[TextTokenizer], item_texts: Sequence[str], history_length: int,
                 user_text_tower: bool) -> None:
        self.tokenizers = list(tokenizers)
        self.item_texts = list(item_texts)
        self.history_length = history_length
        self.user_text_tower = user_text_tower
        self._texter = TextUserTower(1, history_length) if user_text_tower else None

    @classmethod
    def from_model(cls, model: Any) -> TowerInputs:
        tokenizers = [TextTokenizer(e.spec.name, e.tokenizer, e.max_length) for e in model.items.encoders]
        return cls(tokenizers, model.items.item_texts, model.config.history_length,
                   model.config.user_tower == "text")

    def tokens(self, texts: list[str]) -> Arrays:
        """B texts -> `<encoder>_input_ids` / `<encoder>_attention_mask` (B, T_m) for every encoder."""
        out: Arrays = {}
        for tokenizer in self.tokenizers:
            ids_name, mask_name = token_names(tokenizer.name)
            out[ids_name], out[mask_name] = tokenizer(texts)
        return out

    def item_inputs(self, items: np.ndarray) -> Arrays:
        """[B] item indices -> item-graph inputs (their texts' tokens, and the indices for the ID embedding)."""
        items = np.asarray(items, dtype=np.int64)
        out = self.tokens([self.item_texts[i] for i in items])
        out["item_index"] = items
        return out

    def user_inputs(self, histories: Sequence[np.ndarray], item_vectors: np.ndarray | None = None,
                    users: np.ndarray | None = None) -> Arrays:
        """B histories (item indices, oldest first) -> user-graph inputs.

        The text tower takes the tokens of each user's text; the sequence tower the last `history_length`
        item vectors [B, L, D] (rows of `item_vectors` [N, D]), left padded with zeros, and a mask [B, L].
        """
        recent = [np.asarray(h, dtype=np.int64)[-self.history_length:] for h in histories]
        if self._texter is not None:
            out = self.tokens(self._texter.texts(self.item_texts, [r.tolist() for r in recent]))
        else:
            if item_vectors is None:
                raise ValueError("the sequence user tower needs item_vectors [N, D] (item_index.npy)")
            length = max([len(r) for r in recent] + [1])
            index = np.full((len(recent), length), len(item_vectors), dtype=np.int64)  # (B, L), pad = N
            for i, row in enumerate(recent):
                if len(row):
                    index[i, length - len(row):] = row
            table = np.concatenate([item_vectors, np.zeros((1, item_vectors.shape[1]), item_vectors.dtype)])
            out = {"history_vectors": table[index].astype(np.float32),  # (B, L, D)
                   "history_mask": (index != len(item_vectors)).astype(np.int64)}  # (B, L)
        if users is not None:
            out["user_index"] = np.asarray(users, dtype=np.int64)
        return out


def select(inputs: Arrays, signature: GraphSignature) -> Arrays:
    """Only the inputs a graph declares, in its order (a graph without an ID embedding takes no index)."""
    missing = [name for name in signature.inputs if name not in inputs]
    if missing:
        raise ValueError(f"graph inputs {missing} are missing; got {sorted(inputs)}")
    return {name: inputs[name] for name in signature.inputs}
