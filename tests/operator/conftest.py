"""Shared fixtures for the operator tests: sample FusionRecommenders and the vendored KubeRay schemas."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

REPO = Path(__file__).resolve().parents[2]
# KubeRay v1.7.0 CRDs, unmodified, Apache-2.0 (LICENSE and SOURCE.txt beside them).
KUBERAY_CRDS = Path(__file__).resolve().parent / "kuberay-crds"

# The design document's example (design.md section 7), on shared storage as a cluster needs.
DESIGN_CR: dict[str, Any] = {
    "apiVersion": "fusionrec.io/v1alpha1",
    "kind": "FusionRecommender",
    "metadata": {"name": "shop-recs", "namespace": "recs", "uid": "0b4a6f1e-2a4c-4c3e-9a53-4f4d2c1e7a10",
                 "generation": 1, "creationTimestamp": "2025-01-01T00:00:00Z"},
    "spec": {
        "version": "v3",
        "encoders": [
            {"name": "minilm", "source": "pvc://models/minilm", "pooling": "mean"},
            {"name": "mpnet", "source": "pkg://all_mpnet_base_v2", "pooling": "mean"},
        ],
        "fusion": {"method": "attention", "dim": 256},
        "task": {"type": "ranking"},
        "data": {"interactions": "s3://bucket/inter.parquet", "items": "s3://bucket/items.parquet"},
        "training": {"workers": 4, "gpusPerWorker": 1, "epochs": 5, "batchSize": 256, "learningRate": 2.0e-5,
                     "earlyStopping": {"metric": "ndcg@10", "patience": 2}, "schedule": "0 3 * * *"},
        "compile": {"backend": "tensorrt", "precision": "fp16"},
        "serving": {"minReplicas": 1, "maxReplicas": 8, "targetOngoingRequests": 2, "maxBatchSize": 64,
                    "batchWaitTimeoutMs": 5, "resources": {"cpu": "2", "memory": "4Gi", "gpu": 1},
                    "auth": {"secretRef": "recs-tokens"}},
        "rollout": {"strategy": "canary", "steps": [10, 50, 100], "stepIntervalSeconds": 300,
                    "analysis": {"maxErrorRate": 0.01, "maxP99LatencyMs": 50}, "autoRollback": True},
        "monitoring": {"serviceMonitor": True},
        "storage": {"uri": "pvc://fusionrec-artifacts/runs"},
    },
}


@pytest.fixture
def design_cr() -> dict[str, Any]:
    return copy.deepcopy(DESIGN_CR)


@pytest.fixture
def manifest(design_cr: dict[str, Any]):
    from fusionrec.operator.controller import parse_manifest

    return parse_manifest(design_cr)


def _load_crd_schema(filename: str) -> dict[str, Any]:
    path = KUBERAY_CRDS / filename
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return version["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="session")
def rayjob_schema() -> dict[str, Any]:
    return _load_crd_schema("ray.io_rayjobs.yaml")


@pytest.fixture(scope="session")
def rayservice_schema() -> dict[str, Any]:
    return _load_crd_schema("ray.io_rayservices.yaml")


VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}


def declare_resources(emulator) -> None:
    """What a cluster with the FusionRecommender CRD, KubeRay and Prometheus Operator would serve."""
    import kmock

    emulator.resources.load_bundled()  # core v1 (namespaces, events...): kopf waits for them otherwise
    for key, kind, subresources in [
        ("fusionrec.io/v1alpha1/fusionrecommenders", "FusionRecommender", {"status"}),
        ("ray.io/v1/rayjobs", "RayJob", {"status"}),
        ("ray.io/v1/rayservices", "RayService", {"status"}),
        ("monitoring.coreos.com/v1/servicemonitors", "ServiceMonitor", set()),
    ]:
        emulator.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=True, verbs=VERBS,
                                                     subresources=subresources)


@pytest_asyncio.fixture
async def kube_emulator():
    """kmock's Kubernetes emulator on a loopback port: (emulator, url)."""
    import kmock

    emulator = kmock.KubernetesEmulator()
    declare_resources(emulator)
    async with emulator, kmock.Server(emulator) as server:
        yield emulator, str(server.url).rstrip("/")
