"""Manifests over the tiny encoders for the `fusionrec run` tests (a plain module with a unique name, so
`from runkit import ...` finds this file whichever conftest.py pytest imported first)."""

from __future__ import annotations

from pathlib import Path

import yaml


def manifest_document(models: dict[str, Path], data: dict, storage: Path, *, version: str = "v1",
                      learning_rate: float = 1e-3, max_p99_ms: float = 10_000.0, baselines: list[str] | None = None,
                      families: tuple[str, ...] = ("bert", "llama")) -> dict:
    """A FusionRecommender over the tiny encoders: one epoch, torch compile backend (no ONNX export), one
    half-CPU replica, a two-step canary."""
    encoders = [{"name": f, "source": str(models[f]), "maxLength": 16, "freeze": True,
                 "pooling": "last" if f == "llama" else "mean"} for f in families]
    return {
        "apiVersion": "fusionrec.io/v1alpha1", "kind": "FusionRecommender", "metadata": {"name": "shop-recs"},
        "spec": {
            "version": version, "encoders": encoders, "fusion": {"method": "attention", "dim": 16, "hidden": 16},
            "task": {"type": "ranking", "historyLength": 6, "numNegatives": 8},
            "data": data,
            "training": {"epochs": 1, "batchSize": 16, "learningRate": learning_rate},
            "compile": {"backend": "torch", "precision": "fp32"},
            "serving": {"minReplicas": 1, "maxReplicas": 1, "resources": {"cpu": "0.5"}},
            "rollout": {"steps": [50, 100], "analysis": {"maxErrorRate": 0.0, "maxP99LatencyMs": max_p99_ms}},
            "evaluation": {"baselines": ["pop"] if baselines is None else baselines},
            "storage": {"uri": str(storage)},
        },
    }


def write_manifest(folder: Path, document: dict, name: str | None = None) -> Path:
    path = folder / (name or f"{document['spec']['version']}.yaml")
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path
