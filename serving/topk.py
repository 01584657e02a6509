"""Top-k over a catalogue: one matrix product and a partial sort, or faiss for very large catalogues.

A full sort of N scores costs N log N per request; `argpartition` finds the k best in linear time and only
those k are sorted. Ties are broken by item index, so the same scores always give the same list (the service
and an offline computation must agree item for item). faiss is used only when it is installed and the
catalogue is large enough for an index to pay off; its exact inner-product index returns the same items.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FAISS_MIN_ITEMS = 200_000  # below this a BLAS matrix-vector product is as fast as an index search


@dataclass(frozen=True)
class Ranked:
    """Catalogue positions, best first, with their scores; `fallback` names a non-model ranking."""

    positions: np.ndarray
    scores: np.ndarray
    fallback: str | None = None


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


class InnerProductIndex:
    """Exact maximum-inner-product search over a fixed catalogue: faiss when available and worth it, else the
    matrix product itself.

    Args:
        catalogue: [N, D] float32 item vectors.
        use_faiss: None = decide (installed and N >= FAISS_MIN_ITEMS); False = never; True = require it.
    """

    def __init__(self, catalogue: np.ndarray, use_faiss: bool | None = None) -> None:
        self.catalogue = np.ascontiguousarray(catalogue, dtype=np.float32)
        self._faiss: Any = None
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
        return "faiss" if self._faiss is not None else "numpy"

    def search(self, user: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """[D] user vector -> (positions [<=k], scores [<=k]) of the best items, `exclude` left out."""
        if self._faiss is None:
            scores = self.catalogue @ user  # [N, D] @ [D] -> [N]
            best = top_k(scores, k, exclude)
            return best, scores[best]
        excluded = np.unique(exclude) if exclude is not None and len(exclude) else np.empty(0, dtype=np.int64)
        want = min(k + len(excluded), len(self.catalogue))
        scores, positions = self._faiss.search(user.reshape(1, -1).astype(np.float32), want)  # [1, want] each
        positions, scores = positions[0], scores[0]
        keep = (positions >= 0) & ~np.isin(positions, excluded)
        positions, scores = positions[keep], scores[keep]
        order = np.lexsort((positions, -scores))[:k]  # faiss does not promise an order among equal scores
        return positions[order].astype(np.int64), scores[order]
