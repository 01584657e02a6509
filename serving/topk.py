"""What a recommendation is (`Ranked`) and the top-k search serving runs, which lives in `fusionrec.retrieval`
so that the compiler measures an approximate index's recall through the same code (the compiler may not import
serving)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusionrec.retrieval.topk import FAISS_MIN_ITEMS, Approximate, InnerProductIndex, top_k

__all__ = ["FAISS_MIN_ITEMS", "Approximate", "InnerProductIndex", "Ranked", "top_k"]


@dataclass(frozen=True)
class Ranked:
    """Catalogue positions, best first, with their scores; `fallback` names a non-model ranking."""

    positions: np.ndarray
    scores: np.ndarray
    fallback: str | None = None
