"""The compile step's item index: exact below `compile.index.minItems`, else an approximate faiss index whose
recall@10 against exact search is measured on real users' vectors and must reach `compile.index.minRecall`.

The queries are the artifact's own users (users.parquet: each user's history before the test stage, the
history /v1/recommend reads for a known user), embedded by the model's user tower, with each user's seen items
excluded as serving excludes them. They are held out from the index in the sense that matters: an index is
built from item vectors alone (IVF's k-means samples the catalogue, HNSW links items), so no query shaped it.
An artifact without user histories is measured on a sample of item vectors instead, and the record says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from fusionrec.artifact import ANN_INDEX_NAME, Artifact
from fusionrec.errors import UserError
from fusionrec.model.fused import FusedRecommender
from fusionrec.model.saved import USERS_NAME
from fusionrec.retrieval import RECALL_K, InnerProductIndex, build_index, index_bytes, plan_index, recall_at_k
from fusionrec.spec import IndexSpec

log = logging.getLogger(__name__)

RECALL_QUERIES = 1000  # users whose top-10 is compared; the recall's standard error is then at most ~0.016
_TOWER_BATCH = 256


Embed = Callable[[Sequence[np.ndarray]], np.ndarray]  # histories (positions, oldest first) -> [B, D] user vectors


def model_embedder(model: FusedRecommender) -> Embed:
    """The model's user tower as serving runs it: each history's last `history_length` items, no user ID."""
    length = model.config.history_length

    def embed(histories: Sequence[np.ndarray]) -> np.ndarray:
        model.eval()
        with torch.inference_mode():
            return np.concatenate([
                model.user_vectors([h[-length:] for h in histories[s:s + _TOWER_BATCH]]).float().cpu().numpy()
                for s in range(0, len(histories), _TOWER_BATCH)])

    return embed


def compile_index(artifact: Artifact, settings: IndexSpec, embed: Embed, report: Callable[[str], None] = log.info,
                  seed: int = 0) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Plan, build and measure the item index; returns compile.json's "index" entry and the files to store.

    Args:
        embed: the user tower (`model_embedder`), run on a sample of the artifact's user histories.

    Raises:
        UserError: the index's recall@10 is below `compile.index.minRecall` (nothing is stored), or the plan
            is impossible (see `fusionrec.retrieval.plan_index`).
    """
    catalogue = artifact.load_item_index().astype(np.float32)  # [N, D]
    plan = plan_index(settings, len(catalogue), artifact.spec.task.type)
    if plan.kind == "exact":
        record = {"kind": "exact", "reason": plan.reason, "items": len(catalogue)}
        report(describe_index(record))
        return record, {}
    started = time.perf_counter()
    approximate = build_index(catalogue, plan, seed=seed)
    build_seconds = time.perf_counter() - started
    data = index_bytes(approximate)
    queries, exclude, source = _queries(embed, artifact, catalogue, seed)
    recall = recall_at_k(InnerProductIndex(catalogue, use_faiss=False),
                         InnerProductIndex(catalogue, approximate=approximate), queries, exclude)
    if recall < settings.min_recall:
        raise UserError(f"the {plan.kind} item index reaches recall@{RECALL_K} {recall:.4f} against exact search, "
                        f"below compile.index.minRecall {settings.min_recall:g}; nothing was written",
                        field="compile.index.minRecall", fix=_recall_fix(plan.kind))
    record = {"kind": plan.kind, "reason": plan.reason, "file": ANN_INDEX_NAME, "params": plan.params,
              "items": len(catalogue), "dim": int(catalogue.shape[1]), "bytes": len(data),
              "build_seconds": round(build_seconds, 2), f"recall@{RECALL_K}": round(recall, 5),
              "min_recall": settings.min_recall, "recall_queries": len(queries), "query_source": source,
              "faiss": _faiss_version()}
    report(describe_index(record))
    return record, {ANN_INDEX_NAME: data}


def describe_index(record: dict[str, Any]) -> str:
    """One line for people: compile.json's "index" entry (what `fusionrec compile` prints)."""
    if record["kind"] == "exact":
        return f"exact search over {record['items']} items ({record['reason']})"
    params = ", ".join(f"{name} {value}" for name, value in record["params"].items())
    return (f"{record['kind']} ({params}) over {record['items']} items, built in {record['build_seconds']:.1f}s, "
            f"{record['bytes'] / 2**20:.1f} MiB; recall@{RECALL_K} {record[f'recall@{RECALL_K}']:.4f} against exact "
            f"on {record['recall_queries']} {record['query_source']} (floor {record['min_recall']:g})")


def _queries(embed: Embed, artifact: Artifact, catalogue: np.ndarray,
             seed: int) -> tuple[np.ndarray, list[np.ndarray | None], str]:
    """Up to RECALL_QUERIES user vectors with their seen items, or item vectors when no user has a history."""
    rng = np.random.default_rng(seed)
    histories = _histories(artifact)
    if histories:
        chosen = rng.choice(len(histories), min(len(histories), RECALL_QUERIES), replace=False)
        picked = [histories[i] for i in np.sort(chosen)]
        vectors = np.asarray(embed(picked), dtype=np.float32)
        return vectors, list(picked), "users' vectors (users.parquet, seen items excluded)"
    log.info("%s: no user histories; the index's recall is measured on item vectors", artifact.version)
    chosen = np.sort(rng.choice(len(catalogue), min(len(catalogue), RECALL_QUERIES), replace=False))
    return catalogue[chosen], [None] * len(chosen), "item vectors (the artifact has no user histories)"


def _histories(artifact: Artifact) -> list[np.ndarray]:
    """Every user's stored history as catalogue positions (unknown ids dropped), users with none left out."""
    if artifact.file(USERS_NAME) is None or artifact.items_path is None:
        return []
    position = {item: i for i, item in enumerate(pd.read_parquet(artifact.items_path)["item_id"].astype(str))}
    out = []
    for history in pd.read_parquet(artifact.path / USERS_NAME)["history"]:
        positions = np.array([position[i] for i in map(str, history) if i in position], dtype=np.int64)
        if len(positions):
            out.append(positions)
    return out


def _recall_fix(kind: str) -> str:
    knob = {"hnsw": "raise compile.index.efSearch (or hnswM, efConstruction)",
            "ivf": "raise compile.index.nprobe (or lower nlist)"}[kind]
    return f"{knob}, lower compile.index.minRecall, or set compile.index.kind: exact"


def _faiss_version() -> str:
    import faiss

    return str(faiss.__version__)
