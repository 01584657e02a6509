"""Against a real cluster, when FUSIONREC_E2E_KUBECONFIG names a kubeconfig (skipped otherwise).

Applies the committed CRD (and KubeRay's vendored CRDs when the cluster lacks them), checks that the API
server itself refuses bad FusionRecommenders with the field in the message (the real CEL, not
cel-python), runs `python -m fusionrec.operator` against the cluster and watches it create the RayJob
and fill the status; the test plays KubeRay by marking the RayJob succeeded, then sees the RayService.
Everything lives in a throw-away namespace; the CRDs are left installed.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import kopf
import pytest
import pytest_asyncio
import yaml
from fusionrec.operator import consts, crd
from fusionrec.operator.config import OperatorConfig
from fusionrec.operator.kube import KubeApi, KubeApiError, resolve_connection

KUBECONFIG = os.environ.get("FUSIONREC_E2E_KUBECONFIG")
REPO = Path(__file__).resolve().parents[2]
KUBERAY_CRDS = REPO.parent / "shared" / "vendor" / "kuberay-crds"
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.asyncio,
    pytest.mark.skipif(not KUBECONFIG, reason="set FUSIONREC_E2E_KUBECONFIG to a kubeconfig to run the e2e tests"),
]
CRDS = consts.Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
                       namespaced=False)
NAMESPACES = consts.Resource("", "v1", "namespaces", "Namespace", namespaced=False)


async def _eventually(check, what: str, timeout: float = 120.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting until {what}")


async def _apply_crd(kube: KubeApi, document: dict[str, Any]) -> None:
    await kube.ensure(CRDS, document)

    async def established():
        current = await kube.get(CRDS, None, document["metadata"]["name"])
        conditions = (current or {}).get("status", {}).get("conditions", [])
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    await _eventually(established, f"CRD {document['metadata']['name']} is established", 60)


@pytest_asyncio.fixture
async def cluster(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", KUBECONFIG)
    connection = resolve_connection(OperatorConfig(), settings=kopf.OperatorSettings(), logger=logging.getLogger())
    kube = KubeApi(lambda: connection)
    await _apply_crd(kube, crd.build_crd())
    kuberay = [("rayjobs.ray.io", "ray.io_rayjobs.yaml"), ("rayservices.ray.io", "ray.io_rayservices.yaml")]
    for name, filename in kuberay:
        if await kube.get(CRDS, None, name) is None:
            if not KUBERAY_CRDS.exists():
                pytest.skip(f"the cluster has no {name} CRD and {KUBERAY_CRDS} is absent")
            await _apply_crd(kube, yaml.load((KUBERAY_CRDS / filename).read_text(), Loader=yaml.CSafeLoader))
    namespace = f"fusionrec-e2e-{uuid.uuid4().hex[:6]}"
    await kube.create(NAMESPACES, None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    try:
        yield kube, namespace
    finally:
        await kube.delete(NAMESPACES, None, namespace)
        await kube.close()


def _cr(design_cr: dict[str, Any], namespace: str) -> dict[str, Any]:
    doc = copy.deepcopy(design_cr)
    doc["metadata"] = {"name": "shop-recs", "namespace": namespace}
    doc["spec"]["storage"] = {"uri": "s3://fusionrec-e2e/models"}  # no PVC needed
    doc["spec"]["monitoring"] = {"serviceMonitor": False}
    doc["spec"]["training"].pop("schedule")
    return doc


@pytest.mark.parametrize("path,value,field,words", [
    (("rollout", "steps"), [10, 50], "spec.rollout.steps", "end at 100"),
    (("task", "type"), "regression", "spec.task.type", "Unsupported value"),
    (("serving", "minReplicas"), -1, "spec.serving.minReplicas", "greater than or equal to 0"),
    (("serving",), {"minReplicas": 3, "maxReplicas": 2}, "spec.serving.maxReplicas", "maxReplicas (2) must be >="),
    (("encoders",), None, "spec.encoders", "Required value"),
])
async def test_api_server_refuses_bad_specs(cluster, design_cr, path, value, field, words):
    kube, namespace = cluster
    doc = _cr(design_cr, namespace)
    node = doc["spec"]
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    with pytest.raises(KubeApiError) as refused:
        await kube.create(consts.FUSIONRECOMMENDERS, namespace, doc)
    assert refused.value.status == 422
    assert field in str(refused.value) and words in str(refused.value), str(refused.value)


async def test_operator_creates_children_and_status(cluster, design_cr, tmp_path):
    kube, namespace = cluster
    log = tmp_path / "operator.log"
    env = {**os.environ, "KUBECONFIG": KUBECONFIG, "FUSIONREC_SYNC_INTERVAL": "2", "FUSIONREC_METRICS_PORT": "0"}
    with log.open("wb") as out:
        operator = subprocess.Popen([sys.executable, "-m", "fusionrec.operator", "--namespace", namespace],
                                    env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        created = await kube.create(consts.FUSIONRECOMMENDERS, namespace, _cr(design_cr, namespace))
        job_name = "shop-recs-train-v3"
        job = await _eventually(lambda: kube.get(consts.RAYJOBS, namespace, job_name), "the RayJob exists")
        assert job["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]

        async def status(phase: str):
            body = await kube.get(consts.FUSIONRECOMMENDERS, namespace, "shop-recs")
            return body if (body.get("status") or {}).get("phase") == phase else None

        body = await _eventually(lambda: status("Training"), "phase is Training")
        assert body["status"]["observedGeneration"] == body["metadata"]["generation"]
        table = await kube.request("GET", consts.FUSIONRECOMMENDERS.path(namespace, "shop-recs"),
                                   accept="application/json;as=Table;v=v1;g=meta.k8s.io")
        columns = [c["name"] for c in table["columnDefinitions"] if not c.get("priority")]
        assert columns[1:] == ["VERSION", "PHASE", "CANARY", "READY", "AGE"]  # what `kubectl get frec` shows

        # Play KubeRay: the job succeeded, so the operator serves v3 through a RayService.
        await kube.patch(consts.RAYJOBS, namespace, job_name,
                         {"status": {"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete"}},
                         subresource="status")
        service = await _eventually(lambda: kube.get(consts.RAYSERVICES, namespace, "shop-recs"), "the RayService")
        assert "version: v3" in service["spec"]["serveConfigV2"]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- operator log ---\n{log.read_text(errors='replace')[-4000:]}") from None
    finally:
        operator.terminate()
        operator.wait(timeout=30)
