"""Approximate item indexes: which one a catalogue gets, building it, its bytes in the artifact, loading it
back, and its recall against exact search.

Why at compile time: building an index over a million items takes a minute or more (IVF's k-means, HNSW's
graph), too long for a replica's start, and its recall has to be known before it serves anyone. The compiler
builds it once, measures recall@10 against exact search on real users' vectors, refuses it below the spec's
floor, and stores it with faiss's own format (`faiss.serialize_index`: no pickle) under the artifact's
manifest, so every replica loads the same verified bytes.

Below `compile.index.minItems` (kind auto) the catalogue is searched exactly: a matrix product over a few
hundred thousand items takes milliseconds, and exact needs no recall to be checked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fusionrec.errors import UserError
from fusionrec.retrieval.topk import Approximate, InnerProductIndex
from fusionrec.spec import IndexSpec

RECALL_K = 10
IVF_TRAIN_PER_CLUSTER = 64  # k-means sample per cluster: faiss wants >= 39; more costs build time, not recall
RECALL_CHUNK = 32  # queries per exact matrix product while measuring ([32, N] float32 scores at once)
INSTALL_HINT = 'pip install "faiss-cpu>=1.8" (in the serve and compile extras)'


@dataclass(frozen=True)
class IndexPlan:
    """What `compile.index` means for one catalogue: exact, or an approximate index with these parameters."""

    kind: Literal["exact", "hnsw", "ivf"]
    reason: str
    params: dict[str, int] = field(default_factory=dict)


def plan_index(settings: IndexSpec, n_items: int, task: str) -> IndexPlan:
    """Resolve kind auto and the parameters left at 0 (nlist) for a catalogue of `n_items`.

    Raises:
        UserError: an approximate kind for a ctr/rating model (it scores items through its head, which no
            inner-product index can search), or an nlist larger than the catalogue.
    """
    kind = settings.kind
    if task != "ranking":
        if kind in ("hnsw", "ivf"):
            raise UserError(f"compile.index.kind {kind}: a {task} model scores every item through its head, which "
                            "an inner-product index cannot search", field="compile.index.kind",
                            fix="use kind auto or exact (the same for ctr and rating models: exact)")
        return IndexPlan("exact", f"a {task} model scores items through its head")
    if kind == "exact":
        return IndexPlan("exact", "kind exact")
    if kind == "auto":
        if n_items < settings.min_items:
            return IndexPlan("exact", f"kind auto: {n_items} items, below minItems {settings.min_items}")
        kind, reason = "ivf", f"kind auto: {n_items} items, at least minItems {settings.min_items}"
    else:
        reason = f"kind {kind}"
    if kind == "hnsw":
        return IndexPlan("hnsw", reason, {"m": settings.hnsw_m, "ef_construction": settings.ef_construction,
                                          "ef_search": settings.ef_search})
    if settings.nlist > n_items:
        raise UserError(f"compile.index.nlist {settings.nlist} is more clusters than the catalogue's {n_items} items",
                        field="compile.index.nlist", fix=f"use at most {n_items}, or 0 for about 4*sqrt(items)")
    nlist = settings.nlist or default_nlist(n_items)
    return IndexPlan("ivf", reason, {"nlist": nlist, "nprobe": min(settings.nprobe, nlist)})


def default_nlist(n_items: int) -> int:
    """About 4*sqrt(N) clusters (faiss's guidance for IVF), but at least 39 training items per cluster."""
    return max(1, min(round(4 * math.sqrt(n_items)), n_items // 39))


def build_index(catalogue: np.ndarray, plan: IndexPlan, seed: int = 0) -> Approximate:
    """Build the planned approximate index over [N, D] float32 item vectors (IVF trains on a seeded sample)."""
    faiss = _faiss()
    catalogue = np.ascontiguousarray(catalogue, dtype=np.float32)
    n, dim = catalogue.shape
    if plan.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, plan.params["m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = plan.params["ef_construction"]
        index.add(catalogue)
    elif plan.kind == "ivf":
        nlist = plan.params["nlist"]
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        sample = np.random.default_rng(seed).choice(n, min(n, IVF_TRAIN_PER_CLUSTER * nlist), replace=False)
        index.train(catalogue[np.sort(sample)])
        index.add(catalogue)
    else:
        raise ValueError(f"an {plan.kind!r} plan builds no index")
    approximate = Approximate(plan.kind, index)
    set_search_params(approximate, plan.params)
    return approximate


def set_search_params(approximate: Approximate, params: dict[str, int]) -> None:
    """The search-time knobs (HNSW efSearch, IVF nprobe), as recorded when the recall was measured."""
    if approximate.kind == "hnsw":
        approximate.index.hnsw.efSearch = params["ef_search"]
    elif approximate.kind == "ivf":
        approximate.index.nprobe = params["nprobe"]


def index_bytes(approximate: Approximate) -> bytes:
    """The index in faiss's own file format (what `faiss.write_index` writes; not a pickle)."""
    return _faiss().serialize_index(approximate.index).tobytes()


def load_index(path: Path, kind: str, params: dict[str, int]) -> Approximate:
    """An index file from the artifact (already verified against its manifest), with its recorded search
    parameters set."""
    if kind not in ("hnsw", "ivf"):
        raise UserError(f"unknown approximate index kind {kind!r} for {path.name}", field="compile.json.index.kind")
    approximate = Approximate(kind, _faiss().read_index(str(path)))
    set_search_params(approximate, params)
    return approximate


def recall_at_k(exact: InnerProductIndex, approximate: InnerProductIndex, queries: np.ndarray,
                exclude: Sequence[np.ndarray | None], k: int = RECALL_K) -> float:
    """Mean share of each query's exact top-k (exclusions applied, as /v1/recommend does) that the
    approximate index also returns."""
    if len(queries) == 0:
        raise ValueError("recall needs at least one query")
    shares = []
    for start in range(0, len(queries), RECALL_CHUNK):
        rows = slice(start, start + RECALL_CHUNK)
        truth = exact.search_many(queries[rows], k, exclude[rows])
        found = approximate.search_many(queries[rows], k, exclude[rows])
        shares += [len(np.intersect1d(t, f)) / len(t) for (t, _), (f, _) in zip(truth, found) if len(t)]
    return float(np.mean(shares))


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise UserError("an approximate item index needs faiss, which is not installed", field="compile.index.kind",
                        fix=f"{INSTALL_HINT}, or set compile.index.kind: exact") from None
    return faiss
