"""Versioned model artifacts: one directory per model version, written atomically and verified on every load.

Layout (design.md section 5) of `<out_root>/<version>/`:

    spec.yaml              the full FusionRecommenderSpec that produced the model (required)
    model.safetensors      the weights; safetensors only, never pickles (required)
    tokenizers/<encoder>/  each encoder's tokenizer files
    item_index.npy         precomputed item embeddings [n_items, D], rows in items.parquet order
    items.parquet          item ids and titles
    metrics.json           evaluation results
    encoder.onnx, encoder.plan   compiled encoders (ONNX / TensorRT), often added later with `add_files`
    item_index.faiss       an approximate item index (HNSW / IVF) from `fusionrec compile`, described in compile.json
    MANIFEST.json          sha256 and size of every other file, format and fusionrec versions, times

Why the ceremony: an artifact travels from a training job to serving replicas through shared storage, and
a replica must never serve a half-written or altered model. A version is therefore built in a hidden temp
directory next to its final place and renamed in (a crash leaves only a `.tmp-*` directory, which is never
listed as a version), every load checks each file against the manifest, and pickled weights are refused
because unpickling runs arbitrary code. One writer per version at a time is assumed (the operator runs one
job per version); replacing an existing version renames the old one aside first, so readers see the old
version or the new one, or for the instant between two renames no version, but never a mixture.

    layout.py   the file names and the checks writing and reading share (names, pickles, symlinks, spec)
    reading.py  load_artifact (every file checked against the manifest), Artifact, list_versions
    writing.py  write_artifact, add_files (atomic), save_tensors, content_hash
"""

from fusionrec.artifact.layout import (
    ANN_INDEX_NAME,
    FORMAT_VERSION,
    ITEM_INDEX_NAME,
    ITEMS_NAME,
    MANIFEST_NAME,
    METRICS_NAME,
    ONNX_NAME,
    PICKLE_SUFFIXES,
    PLAN_NAME,
    REQUIRED,
    SPEC_NAME,
    WEIGHTS_NAME,
    FileSource,
)
from fusionrec.artifact.reading import Artifact, list_versions, load_artifact
from fusionrec.artifact.writing import add_files, content_hash, save_tensors, write_artifact

__all__ = ["ANN_INDEX_NAME", "FORMAT_VERSION", "ITEMS_NAME", "ITEM_INDEX_NAME", "MANIFEST_NAME", "METRICS_NAME",
           "ONNX_NAME", "PICKLE_SUFFIXES", "PLAN_NAME", "REQUIRED", "SPEC_NAME", "WEIGHTS_NAME", "Artifact",
           "FileSource", "add_files", "content_hash", "list_versions", "load_artifact", "save_tensors",
           "write_artifact"]
