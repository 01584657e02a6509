"""Top-k over a catalogue: one matrix product and a partial sort, faiss's exact index for very large
catalogues, or an approximate faiss index (HNSW, IVF) built at compile time.

A full sort of N scores costs N log N per request; `argpartition` finds the k best in linear time and only
those k are sorted. Ties are broken by item index, so the same scores always give the same list (the service
and an offline computation must agree item for item). faiss's exact inner-product index is used only when it
is installed and the catalogue is large enough for it to pay off; it returns the same items. An approximate
index returns most of them (its recall@10 is measured when it is built, see `fusionrec.retrieval.ann`).

Every faiss index is searched the same way: it cannot leave items out, so it is asked for k + |excluded|
items and the excluded ones are dropped afterwards; an approximate index that still comes back short (an IVF
whose probed clusters hold too few items) has that query answered exactly, so a caller always gets
min(k, N - |excluded|) items.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FAISS_MIN_ITEMS = 200_000  # below this a BLAS matrix-vector product is as fast as an exact index search
_BROADCAST_MAX = 1 << 16  # answers x excluded items compared pairwise, below which np.isin is slower
# Share of a faiss index's rows that may be dead (replaced vectors) before it is rebuilt from the live rows:
# every dead row costs memory and is asked for on every search (`want`), so they must not pile up.
REBUILD_DEAD_SHARE = 0.1


@dataclass(frozen=True)
class Approximate:
    """An approximate faiss index over the catalogue, and what it is (hnsw, ivf) for reports."""

    kind: str
    index: Any


def top_k(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Positions of the k highest scores, best first, ties by position; `exclude` positions never appear.

    Args:
        scores: [N] float scores.
        k: how many to return (fewer when fewer positions remain).
        exclude: [E] positions to leave out (repeats allowed).
    Returns:
        [min(k, N - |exclude|)] int64 positions.
    """
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    keep = np.ones(len(scores), dtype=bool)
    if exclude is not None and len(exclude):
        keep[exclude] = False
    positions = np.flatnonzero(keep)  # [A] ascending, so a stable sort breaks ties by position
    values = scores[positions]
    if k < len(positions):
        # Everything strictly better than the k-th value, then enough of those equal to it, lowest first.
        kth = np.partition(values, len(values) - k)[len(values) - k]
        better = np.flatnonzero(values > kth)
        ties = np.flatnonzero(values == kth)[: k - len(better)]
        chosen = np.concatenate([better, ties])
    else:
        chosen = np.arange(len(positions))
    return positions[_stable_by_position(values, chosen)]


def _stable_by_position(values: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Sort `chosen` by value descending, equal values by position ascending."""
    return chosen[np.lexsort((chosen, -values[chosen]))]


Found = tuple[np.ndarray, np.ndarray]  # (positions [<=k] int64, scores [<=k] float32), best first


class InnerProductIndex:
    """Maximum-inner-product search over a fixed catalogue: an approximate index when one is given, else
    exact, with faiss when available and worth it, else the matrix product itself.

    Args:
        catalogue: [N, D] float32 item vectors.
        use_faiss: exact search only: None = decide (installed and N >= FAISS_MIN_ITEMS); False = never;
            True = require it.
        approximate: an approximate index over the same catalogue (`fusionrec.retrieval.ann.load_index`),
            searched instead of exact search.
    """

    def __init__(self, catalogue: np.ndarray, use_faiss: bool | None = None,
                 approximate: Approximate | None = None) -> None:
        self.catalogue = np.ascontiguousarray(catalogue, dtype=np.float32)
        self.approximate = approximate
        self._faiss: Any = None
        # A live catalogue (`add`, `replace`, `hide`): rows grow in a buffer with spare room; a faiss index,
        # which cannot overwrite a vector, gets the new one appended and the old row marked dead (-1 in
        # `_position_of_row`); hidden positions (retired items) are left out of every answer.
        self._buffer = self.catalogue
        self._position_of_row: np.ndarray | None = None  # faiss row -> catalogue position (-1: dead); None: same
        self._row_of_position: np.ndarray | None = None
        self._hidden = np.empty(0, dtype=np.int64)
        self._dead_rows = 0
        self._lock = threading.Lock()  # faiss may not be searched while rows are added
        if approximate is not None:
            if (approximate.index.ntotal, approximate.index.d) != self.catalogue.shape:
                raise ValueError(f"the {approximate.kind} index holds {approximate.index.ntotal} vectors of "
                                 f"{approximate.index.d} dims, the catalogue is {self.catalogue.shape}")
            self._faiss = approximate.index
            return
        if use_faiss is False or (use_faiss is None and len(self.catalogue) < FAISS_MIN_ITEMS):
            return
        try:
            import faiss
        except ImportError:
            if use_faiss:
                raise
            log.info("faiss is not installed; top-k over %d items uses a matrix product", len(self.catalogue))
            return
        self._faiss = faiss.IndexFlatIP(self.catalogue.shape[1])
        self._faiss.add(self.catalogue)

    @property
    def backend(self) -> str:
        """numpy, faiss (exact), or faiss-hnsw / faiss-ivf (approximate)."""
        if self.approximate is not None:
            return f"faiss-{self.approximate.kind}"
        return "faiss" if self._faiss is not None else "numpy"

    def search(self, user: np.ndarray, k: int, exclude: np.ndarray | None = None) -> Found:
        """[D] user vector -> (positions [<=k], scores [<=k]) of the best items, `exclude` left out."""
        return self.search_many(user.reshape(1, -1), k, [exclude])[0]

    def search_many(self, users: np.ndarray, k: int,
                    exclude: Sequence[np.ndarray | None] | None = None) -> list[Found]:
        """[B, D] user vectors -> one (positions, scores) per user, `exclude[b]` left out of user b's list.

        One matrix product (or one faiss call) for the whole batch: the catalogue is read once, not B times.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        users = np.ascontiguousarray(users, dtype=np.float32)
        if users.ndim != 2 or users.shape[1] != self.catalogue.shape[1]:
            raise ValueError(f"users must be [B, {self.catalogue.shape[1]}], got shape {users.shape}")
        excluded = [_unique(e) for e in (exclude if exclude is not None else [None] * len(users))]
        if len(excluded) != len(users):
            raise ValueError(f"{len(users)} users but {len(excluded)} exclude lists")
        if len(self._hidden):
            excluded = [np.union1d(e, self._hidden) for e in excluded]
        if self._faiss is None:
            return self._exact(users, k, excluded)
        with self._lock:
            total = int(self._faiss.ntotal)
            want = min(k + max((len(e) for e in excluded), default=0) + self._dead_rows, total)
            scores, positions = self._faiss.search(users, want)  # [B, want] each; -1 where nothing was found
            if self._position_of_row is not None:
                positions = np.where(positions >= 0, self._position_of_row[np.maximum(positions, 0)], -1)
        found = [_drop_excluded(p, s, e, k) for p, s, e in zip(positions, scores, excluded)]
        short = [b for b, (p, _) in enumerate(found)
                 if len(p) < min(k, len(self.catalogue) - len(excluded[b]))]
        if short:  # only an approximate index comes back short; those users are answered exactly
            for b, answer in zip(short, self._exact(users[short], k, [excluded[b] for b in short])):
                found[b] = answer
        return found

    # --- a live catalogue (serving's item changes) -------------------------------------------------------

    def add(self, vectors: np.ndarray) -> np.ndarray:
        """Append [M, D] item vectors; returns their positions (N .. N+M-1). The buffer grows by half at a time,
        so a stream of small additions costs amortised O(M), not a copy of the catalogue each."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.catalogue.shape[1])
        n, m = len(self.catalogue), len(vectors)
        with self._lock:
            if n + m > len(self._buffer):
                grown = np.empty((max(n + m, n + n // 2 + 16), self.catalogue.shape[1]), dtype=np.float32)
                grown[:n] = self.catalogue
                self._buffer = grown
            self._buffer[n:n + m] = vectors
            if self._faiss is not None:
                if self._position_of_row is not None and self._row_of_position is not None:
                    rows = int(self._faiss.ntotal)
                    self._position_of_row = np.concatenate([self._position_of_row, np.arange(n, n + m)])
                    self._row_of_position = np.concatenate([self._row_of_position, np.arange(rows, rows + m)])
                self._faiss.add(vectors)
            self.catalogue = self._buffer[:n + m]  # one reference swap: a concurrent reader sees old or new
        return np.arange(n, n + m, dtype=np.int64)

    def replace(self, positions: np.ndarray, vectors: np.ndarray) -> None:
        """New [M, D] vectors for existing positions (an item's text changed). A faiss index cannot overwrite
        a vector: the new ones are appended as rows answering for the same positions, the old rows dead."""
        positions = np.asarray(positions, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(positions), -1)
        with self._lock:
            self.catalogue[positions] = vectors
            if self._faiss is None:
                return
            rows = int(self._faiss.ntotal)
            if self._position_of_row is None or self._row_of_position is None:
                self._position_of_row = np.arange(rows, dtype=np.int64)
                self._row_of_position = np.arange(rows, dtype=np.int64)
            self._position_of_row[self._row_of_position[positions]] = -1
            self._dead_rows += len(positions)
            self._position_of_row = np.concatenate([self._position_of_row, positions])
            self._row_of_position[positions] = np.arange(rows, rows + len(positions))
            self._faiss.add(vectors)
            if self._dead_rows <= REBUILD_DEAD_SHARE * int(self._faiss.ntotal):
                return
            index, dead = self._faiss, self._dead_rows
        # Built beside the one searched (searches go on meanwhile), then swapped in. Only the one applier of
        # item changes calls add/replace, so the catalogue does not change while this runs.
        rebuilt = self._rebuilt(index)
        with self._lock:
            self._faiss = rebuilt
            if self.approximate is not None:
                self.approximate = Approximate(self.approximate.kind, rebuilt)
            self._position_of_row = self._row_of_position = None
            self._dead_rows = 0
        log.info("faiss index rebuilt from the %d live catalogue rows: %d of its %d rows were replaced vectors",
                 len(self.catalogue), dead, int(index.ntotal))

    def _rebuilt(self, index: Any) -> Any:
        """A copy of `index` (same kind and settings: HNSW's graph parameters, IVF's trained clusters and
        nprobe) holding the current catalogue's rows only, row = position."""
        import faiss

        rebuilt = faiss.clone_index(index)
        rebuilt.reset()
        rebuilt.add(self.catalogue)
        return rebuilt

    def hide(self, positions: np.ndarray) -> None:
        """Never return these positions again (retired items); `show` undoes it."""
        self._hidden = np.union1d(self._hidden, np.asarray(positions, dtype=np.int64))

    def show(self, positions: np.ndarray) -> None:
        self._hidden = np.setdiff1d(self._hidden, np.asarray(positions, dtype=np.int64))

    @property
    def hidden(self) -> np.ndarray:
        """Sorted positions never returned (retired items)."""
        return self._hidden

    def _exact(self, users: np.ndarray, k: int, excluded: list[np.ndarray]) -> list[Found]:
        scores = users @ self.catalogue.T  # [B, D] @ [D, N] -> [B, N]
        out = []
        for row, exclude in zip(scores, excluded):
            best = top_k(row, k, exclude)
            out.append((best, row[best]))
        return out


def _unique(exclude: np.ndarray | None) -> np.ndarray:
    return np.unique(exclude) if exclude is not None and len(exclude) else np.empty(0, dtype=np.int64)


def _drop_excluded(positions: np.ndarray, scores: np.ndarray, excluded: np.ndarray, k: int) -> Found:
    """One faiss answer row without the excluded (and the -1 padding) items, the k best by score then position
    (faiss does not promise an order among equal scores)."""
    keep = positions >= 0
    if len(excluded):
        if len(positions) * len(excluded) <= _BROADCAST_MAX:  # np.isin's set-up costs more on short lists
            keep &= ~(positions[:, None] == excluded[None, :]).any(axis=1)
        else:
            keep &= ~np.isin(positions, excluded)
    positions, scores = positions[keep], scores[keep]
    order = np.lexsort((positions, -scores))[:k]
    return positions[order].astype(np.int64), scores[order]
