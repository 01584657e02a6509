"""Top-k retrieval over an item catalogue: exact (a matrix product, or faiss's flat index) or an approximate
faiss index (HNSW, IVF) that `fusionrec compile` builds, measures against exact search and stores in the artifact.

The compiler measures an index's recall through the very class serving then searches it with, so the number in
compile.json describes what /v1/recommend returns (seen items excluded, ties broken by position).

    topk.py   top_k (one score vector), InnerProductIndex (exact or approximate, one query or a batch)
    ann.py    which index a catalogue gets (plan_index), building, storing and loading it, recall@k
"""

from fusionrec.retrieval.ann import (
    RECALL_K,
    IndexPlan,
    build_index,
    index_bytes,
    load_index,
    plan_index,
    recall_at_k,
)
from fusionrec.retrieval.topk import FAISS_MIN_ITEMS, InnerProductIndex, top_k

__all__ = ["FAISS_MIN_ITEMS", "RECALL_K", "IndexPlan", "InnerProductIndex", "build_index", "index_bytes",
           "load_index", "plan_index", "recall_at_k", "top_k"]
