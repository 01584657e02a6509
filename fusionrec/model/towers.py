"""The two towers of the fused recommender: items (text through every LM, fused) and users (a sequence
model over fused item vectors, or the fused text of the user's recent items).

Frozen encoders never run during training: their pooled catalogue features are computed once, kept as buffers,
and only the projection above them learns, so a frozen fusion trains as fast as an ID model. Unfrozen
encoders run on the items a batch needs, from token ids tokenized once per catalogue.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import cast

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from fusionrec.data.schema import ITEM_IDX, TIME, USER_IDX
from fusionrec.model.encoders import TextEncoder
from fusionrec.model.fusion import FusionMethod
from fusionrec.model.sasrec import SequenceEncoder, SequenceEncoderConfig, left_pad  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

PROJECTION_STD = 0.05  # per-dimension std of a projected item vector at init: unsaturated first softmaxes
STATS_ROWS = 4096  # catalogue rows the feature standardisation of an unfrozen encoder is estimated on
TEXT_CACHE_ENTRIES = 50_000  # pooled user texts a frozen encoder keeps (LRU)
UNKNOWN_FEEDBACK = 2  # feedback id of a history item whose label is unknown (and of padding)
TEXT_BATCH_SIZE = 64  # texts per LM call over a catalogue (catalogue_embedding batches alike: same vectors)


class ItemTower(nn.Module):
    """Catalogue items -> one vector each: pooled text per encoder -> standardise -> project -> fuse
    (+ a learned item-ID embedding for the hybrid).

    Args:
        encoders: the M text encoders (each projects to fusion.dim).
        fusion: fuses [B, M, D] -> [B, D]; built for the encoders' names, without context.
        item_texts: [N] the text of every catalogue item, in item-index order.
        use_item_ids: add an item-ID embedding to the fused text vector.
        dropout: on each encoder's projected vector, before fusion.
        text_batch_size: texts per LM call when a whole catalogue is encoded.
    """

    def __init__(self, encoders: Sequence[TextEncoder], fusion: FusionMethod, item_texts: Sequence[str], *,
                 use_item_ids: bool, dropout: float = 0.0,
                 text_batch_size: int = TEXT_BATCH_SIZE) -> None:
        super().__init__()
        names = [e.spec.name for e in encoders]
        if names != fusion.model_names:
            raise ValueError(f"fusion was built for models {fusion.model_names} but the encoders are {names}")
        dims = {e.spec.name: e.dim for e in encoders}
        if any(d != fusion.dim for d in dims.values()):
            raise ValueError(f"every encoder must project to fusion.dim={fusion.dim}, got {dims}")
        if not item_texts:
            raise ValueError("item_texts is empty: the catalogue needs at least one item")
        self.encoders = nn.ModuleList(encoders)
        self.fusion = fusion
        self.dim = fusion.dim
        self.item_texts = list(item_texts)
        self.n_items = len(self.item_texts)
        self.text_batch_size = text_batch_size
        self.drop = nn.Dropout(dropout)
        self.id_embedding = nn.Embedding(self.n_items, self.dim) if use_item_ids else None
        if self.id_embedding is not None:
            nn.init.normal_(self.id_embedding.weight, std=0.02)
        self._text_cache: list[OrderedDict[str, Tensor]] = [OrderedDict() for _ in encoders]
        for m, encoder in enumerate(encoders):
            self._prepare_encoder(m, encoder)

    def _prepare_encoder(self, m: int, encoder: TextEncoder) -> None:
        """Cache a frozen encoder's catalogue features, or tokenize the catalogue for an unfrozen one, and
        estimate the per-dimension standardisation (LMs differ in scale by orders of magnitude)."""
        if encoder.frozen:
            pooled = encoder.pooled_texts(self.item_texts, self.text_batch_size).float()  # [N, H]
            self.register_buffer(f"pooled_{m}", pooled, persistent=False)
            sample = pooled
        else:
            batch = encoder.tokenizer(self.item_texts, padding=True, truncation=True,
                                      max_length=encoder.max_length, return_tensors="pt")
            self.register_buffer(f"tokens_{m}", batch["input_ids"], persistent=False)  # [N, T]
            self.register_buffer(f"mask_{m}", batch["attention_mask"], persistent=False)  # [N, T]
            sample = encoder.pooled_texts(self.item_texts[:STATS_ROWS], self.text_batch_size).float()
        self.register_buffer(f"mean_{m}", sample.mean(dim=0))  # [H]
        self.register_buffer(f"std_{m}", sample.std(dim=0).clamp(min=1e-6) if len(sample) > 1
                             else torch.ones(sample.shape[1]))
        with torch.no_grad():
            nn.init.normal_(encoder.projection.weight, std=PROJECTION_STD / encoder.hidden_size ** 0.5)
            nn.init.zeros_(encoder.projection.bias)

    @property
    def frozen(self) -> bool:
        """True when no encoder runs during training (every one is frozen and cached)."""
        return all(e.frozen for e in self.encoders)

    # --- per-encoder features ----------------------------------------------------------------------------

    def _encoder(self, m: int) -> TextEncoder:
        # nn.ModuleList's items are typed as Module; self.encoders holds the TextEncoders given to __init__.
        return cast(TextEncoder, self.encoders[m])

    def _project(self, m: int, pooled: Tensor) -> Tensor:
        """[B, H] pooled LM states -> [B, D]: standardised with the catalogue statistics, then projected."""
        encoder = self._encoder(m)
        standard = (pooled.float() - getattr(self, f"mean_{m}")) / getattr(self, f"std_{m}")  # [B, H]
        return self.drop(encoder.projection(standard.to(encoder.projection.weight.dtype)))

    def _pooled_items(self, m: int, items: Tensor | None) -> Tensor:
        """[B] item indices (None = the whole catalogue) -> [B, H] pooled states of encoder m."""
        encoder = self._encoder(m)
        if encoder.frozen:
            pooled = getattr(self, f"pooled_{m}")
            return pooled if items is None else pooled[items]
        tokens, mask = getattr(self, f"tokens_{m}"), getattr(self, f"mask_{m}")
        rows = torch.arange(self.n_items, device=tokens.device) if items is None else items
        chunk = len(rows) if torch.is_grad_enabled() else self.text_batch_size
        out = []
        for start in range(0, len(rows), max(chunk, 1)):
            index = rows[start:start + chunk]
            ids, attention = tokens[index], mask[index]  # [b, T]
            width = max(int(attention.sum(dim=1).max()), 1)  # right padding: trim to the batch's longest text
            out.append(encoder.pool_tokens(ids[:, :width], attention[:, :width]))  # [b, H]
        return torch.cat(out) if out else torch.empty(0, encoder.hidden_size, device=tokens.device)

    def _pooled_texts(self, m: int, texts: list[str]) -> Tensor:
        """[B] free texts (user histories) -> [B, H]; a frozen encoder looks each text up in an LRU cache."""
        encoder = self._encoder(m)
        if not encoder.frozen:
            return encoder.pool_tokens(**encoder.tokenize(texts))
        cache = self._text_cache[m]
        missing = list(dict.fromkeys(t for t in texts if t not in cache))
        if missing:
            fresh = encoder.pooled_texts(missing, self.text_batch_size).detach().cpu()  # [n_missing, H]
            for text, row in zip(missing, fresh):
                cache[text] = row
        rows = []
        for text in texts:
            cache.move_to_end(text)
            rows.append(cache[text])
        while len(cache) > TEXT_CACHE_ENTRIES:
            cache.popitem(last=False)
        return torch.stack(rows).to(encoder.device)

    # --- fused vectors -----------------------------------------------------------------------------------

    def stacked(self, items: Tensor | None = None) -> Tensor:
        """[B] item indices (None = all N) -> [B, M, D] the encoders' projected embeddings."""
        return torch.stack([self._project(m, self._pooled_items(m, items)) for m in range(len(self.encoders))],
                           dim=1)

    def text_stacked(self, texts: list[str]) -> Tensor:
        """[B] free texts -> [B, M, D], through the same encoders, statistics and projections as items."""
        return torch.stack([self._project(m, self._pooled_texts(m, texts)) for m in range(len(self.encoders))],
                           dim=1)

    def forward(self, items: Tensor | None = None) -> Tensor:
        """Item vectors.

        Args:
            items: [B] item indices, or None for the whole catalogue.
        Returns:
            [B, D] (or [N, D]) fused text vectors, plus the item-ID embedding in the hybrid.
        """
        if items is not None and items.numel() and (int(items.min()) < 0 or int(items.max()) >= self.n_items):
            raise ValueError(f"item indices must be in [0, {self.n_items}), got min {int(items.min())} "
                             f"max {int(items.max())}")
        fused = self.fusion(self.stacked(items))  # [B, M, D] -> [B, D]
        if self.id_embedding is None:
            return fused
        ids = self.id_embedding.weight if items is None else self.id_embedding(items)
        return fused + ids


class SequenceUserTower(nn.Module):
    """A user is the causal transformer state after their most recent items' fused vectors (SASRec over text).

    Args:
        dim: the fusion dimension.
        history_length: most recent items read (the positional table's length).
        dropout: of the transformer (inputs, attention, residual branches).
    """

    def __init__(self, dim: int, history_length: int, dropout: float, n_layers: int = 2, n_heads: int = 1) -> None:
        super().__init__()
        self.history_length = history_length
        self.encoder = SequenceEncoder(SequenceEncoderConfig(dim=dim, n_layers=n_layers, n_heads=n_heads,
                                                             max_len=history_length, dropout=dropout,
                                                             inner_size=4 * dim))
        self.encoder.apply(_small_init)

    def states(self, vectors: Tensor, mask: Tensor) -> Tensor:
        """[B, L, D] item vectors (oldest first) and [B, L] bool mask -> [B, L, D] state after each slot."""
        return self.encoder(vectors, mask)

    def forward(self, vectors: Tensor, mask: Tensor) -> Tensor:
        """[B, L, D] item vectors and [B, L] mask -> [B, D] the state after the newest real item."""
        return SequenceEncoder.last_state(self.states(vectors, mask), mask)


class PooledUserTower(nn.Module):
    """A user is an attention-weighted average of their recent items' fused vectors: no positions, so the order
    of the history changes nothing (`data.order: none`, or a shop whose baskets have no meaningful order).

    Each item gets a relevance logit from a learned query against a key of its vector; the softmax over the
    history weights the vectors, and a linear map (initialised to the identity) turns the average into the user
    vector. `states` gives the pooled vector after every prefix, so training scores every position at once, as
    the sequence tower does.

    Args:
        dim: the fusion dimension.
        history_length: most recent items read.
        dropout: on the item vectors before pooling.
    """

    def __init__(self, dim: int, history_length: int, dropout: float) -> None:
        super().__init__()
        self.history_length = history_length
        self.key = nn.Linear(dim, dim)
        self.query = nn.Parameter(torch.zeros(dim))  # zero: training starts from the plain mean of the history
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(dim, dim)
        nn.init.normal_(self.key.weight, std=0.02)
        nn.init.zeros_(self.key.bias)
        with torch.no_grad():
            self.out.weight.copy_(torch.eye(dim))
            self.out.bias.zero_()

    def _logits(self, vectors: Tensor) -> Tensor:
        """[B, L, D] -> [B, L] relevance of each history item."""
        return torch.tanh(self.key(vectors)) @ self.query

    def states(self, vectors: Tensor, mask: Tensor) -> Tensor:
        """[B, L, D] item vectors and [B, L] bool mask -> [B, L, D] the pooled user after each prefix."""
        vectors = self.drop(vectors)
        length = vectors.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=vectors.device).tril()  # [L, L]
        allowed = causal.unsqueeze(0) & mask.unsqueeze(1)  # [B, L (after), L (item)]
        logits = self._logits(vectors).unsqueeze(1).expand(-1, length, -1)  # [B, L, L]
        weights = torch.softmax(logits.masked_fill(~allowed, torch.finfo(logits.dtype).min), dim=-1)
        weights = weights * allowed  # a prefix of padding alone pools nothing (its row is all zeros)
        return self.out(weights @ vectors)  # [B, L, D]

    def forward(self, vectors: Tensor, mask: Tensor) -> Tensor:
        """[B, L, D] item vectors and [B, L] mask -> [B, D] the pooled user over the whole history."""
        vectors = self.drop(vectors)
        logits = self._logits(vectors)  # [B, L]
        weights = torch.softmax(logits.masked_fill(~mask, torch.finfo(logits.dtype).min), dim=-1) * mask
        return self.out((weights.unsqueeze(1) @ vectors).squeeze(1))  # [B, 1, L] @ [B, L, D] -> [B, D]


# The towers that read the history's item vectors (the model gathers them from the item table); the text tower
# reads the items' text instead.
VECTOR_TOWERS = (SequenceUserTower, PooledUserTower)


class TextUserTower(nn.Module):
    """A user is the fused text of their recent items, newest first, cut to each encoder's max length.

    The text goes through the item tower's encoders, projections and fusion (passed in, not owned, so
    the weights are shared and stored once), then a linear adapter, so that a user vector is not forced to
    equal the vector of a similar-looking item.
    """

    def __init__(self, dim: int, history_length: int, separator: str = " | ") -> None:
        super().__init__()
        self.history_length = history_length
        self.separator = separator
        self.adapter = nn.Linear(dim, dim)
        with torch.no_grad():
            self.adapter.weight.copy_(torch.eye(dim))
            self.adapter.bias.zero_()

    def texts(self, item_texts: Sequence[str], histories: Sequence[Sequence[int]]) -> list[str]:
        """B histories of item indices, oldest first -> B user texts, newest item first."""
        out = []
        for history in histories:
            recent = [int(i) for i in history][-self.history_length:][::-1]
            out.append(self.separator.join(item_texts[i] for i in recent))
        return out

    def stacked(self, items: ItemTower, histories: Sequence[Sequence[int]]) -> Tensor:
        """B histories -> [B, M, D] the encoders' projected embeddings of the user texts."""
        return items.text_stacked(self.texts(items.item_texts, histories))

    def forward(self, items: ItemTower, histories: Sequence[Sequence[int]]) -> Tensor:
        """B histories (item indices, oldest first) -> [B, D] user vectors."""
        return self.adapter(items.fusion(self.stacked(items, histories)))  # [B, M, D] -> [B, D]


def _small_init(module: nn.Module) -> None:
    """BERT's N(0, 0.02) init: PyTorch's default N(0, 1) position table would drown item vectors of norm ~0.5."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


# --- tower inputs ---------------------------------------------------------------------------------------------


def histories_before(train: pd.DataFrame, part: pd.DataFrame, length: int, pad: int,
                     feedback: str | None = None) -> tuple[Tensor, Tensor]:
    """Per row of `part`, the user's training items with an earlier timestamp (oldest first, left-padded).

    Args:
        train: training interactions (user_idx, item_idx, timestamp and the `feedback` column).
        part: the rows to build histories for.
        length: most recent items kept.
        pad: item index of padding slots.
        feedback: a 0/1 column of `train` (e.g. the CTR label) to return beside each history item.
    Returns:
        items [R, length] int64 and feedback [R, length] int64: 0/1, or UNKNOWN_FEEDBACK (also at padding).
    """
    ordered = train.sort_values([USER_IDX, TIME], kind="stable")
    by_user = {int(u): (g[TIME].to_numpy(), g[ITEM_IDX].to_numpy(dtype=np.int64),
                        g[feedback].to_numpy(dtype=np.int64) if feedback else np.full(len(g), UNKNOWN_FEEDBACK))
               for u, g in ordered.groupby(USER_IDX, sort=False)}
    items = np.full((len(part), length), pad, dtype=np.int64)
    signals = np.full((len(part), length), UNKNOWN_FEEDBACK, dtype=np.int64)
    empty = (np.empty(0), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
    for r, (user, when) in enumerate(zip(part[USER_IDX].to_numpy(), part[TIME].to_numpy())):
        times, seen, signal = by_user.get(int(user), empty)
        end = int(np.searchsorted(times, when, side="left"))
        start = max(0, end - length)
        if end > start:
            items[r, length - (end - start):] = seen[start:end]
            signals[r, length - (end - start):] = signal[start:end]
    return torch.from_numpy(items), torch.from_numpy(signals)
