"""What the e2e tests need from a real cluster: a small synchronous client, helm, and the operator process.

The cluster is the one named by FUSIONREC_E2E_KUBECONFIG and nothing else: the client is built from that
file alone, and the operator subprocess gets it as FUSIONREC_KUBECONFIG with KUBECONFIG pointed at a path
that does not exist, so neither can fall through to a ~/.kube/config on the machine. `make test` and
`make e2e` start a throw-away control plane (tools/kube/kube-up.sh) and set the variable.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

from fusionrec.operator import consts
from fusionrec.operator.kube import kubeconfig_connection

from _operator_process import OperatorProcess

KUBECONFIG = os.environ.get("FUSIONREC_E2E_KUBECONFIG")
REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "fusion-recommender"
KUBERAY_CRDS = Path(__file__).resolve().parent / "kuberay-crds"
CRDS = consts.Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
                       namespaced=False)
NAMESPACES = consts.Resource("", "v1", "namespaces", "Namespace", namespaced=False)
EVENTS = consts.Resource("", "v1", "events", "Event")
SERVICE_ACCOUNTS = consts.Resource("", "v1", "serviceaccounts", "ServiceAccount")

T = TypeVar("T")


class ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any], what: str) -> None:
        self.status = status
        self.body = body
        super().__init__(f"{what}: HTTP {status}: {body.get('message', body)}")


class Kube:
    """Just enough of the REST API for the tests, synchronous; credentials from one kubeconfig file."""

    def __init__(self, kubeconfig: str, *, timeout: float = 120.0) -> None:
        info = kubeconfig_connection(kubeconfig)
        self.server = info.server
        self.ca_data = info.ca_data
        self.client = httpx.Client(base_url=info.server, headers=info.as_http_headers(),
                                   verify=info.as_ssl_context(), timeout=timeout, trust_env=False)

    def close(self) -> None:
        self.client.close()

    def request(self, method: str, path: str, *, body: Any = None, content_type: str | None = None,
                params: dict[str, str] | None = None, accept: str | None = None) -> Any:
        headers = {k: v for k, v in (("Content-Type", content_type), ("Accept", accept)) if v}
        response = self.client.request(method, path, json=body, headers=headers, params=params)
        if response.status_code >= 400:
            try:
                detail = response.json()
            except ValueError:
                detail = {"message": response.text[:500]}
            raise ApiError(response.status_code, detail, f"{method} {path}")
        return response.json() if response.content else None

    def get(self, resource: consts.Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", resource.path(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, resource: consts.Resource, namespace: str | None, **params: str) -> list[dict[str, Any]]:
        return self.request("GET", resource.path(namespace), params=params or None).get("items") or []

    def create(self, resource: consts.Resource, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", resource.path(namespace), body=body)

    def patch(self, resource: consts.Resource, namespace: str | None, name: str, patch: dict[str, Any],
              subresource: str | None = None) -> dict[str, Any]:
        return self.request("PATCH", resource.path(namespace, name, subresource), body=patch,
                            content_type="application/merge-patch+json")

    def apply(self, resource: consts.Resource, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply, as `kubectl apply --server-side --force-conflicts` does."""
        return self.request("PATCH", resource.path(namespace, body["metadata"]["name"]), body=body,
                            content_type="application/apply-patch+yaml",
                            params={"fieldManager": "fusionrec-e2e", "force": "true"})

    def delete(self, resource: consts.Resource, namespace: str | None, name: str) -> bool:
        try:
            self.request("DELETE", resource.path(namespace, name),
                         body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return self.list(EVENTS, namespace, fieldSelector=f"involvedObject.name={name}")

    def service_account_kubeconfig(self, namespace: str, account: str, path: Path) -> Path:
        """A kubeconfig that acts as `account`, with a short-lived token from the TokenRequest API."""
        issued = self.request("POST", SERVICE_ACCOUNTS.path(namespace, account, "token"), body={
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600}})
        ca = self.ca_data if isinstance(self.ca_data, str) else base64.b64encode(self.ca_data or b"").decode()
        document = {
            "apiVersion": "v1", "kind": "Config", "current-context": "operator",
            "clusters": [{"name": "e2e", "cluster": {"server": self.server, "certificate-authority-data": ca}}],
            "users": [{"name": account, "user": {"token": issued["status"]["token"]}}],
            "contexts": [{"name": "operator", "context": {"cluster": "e2e", "user": account}}],
        }
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        return path


def eventually(check: Callable[[], T | None], what: str, timeout: float = 60.0, interval: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting until {what} (last seen: {last!r})")


def apply_crd(kube: Kube, document: dict[str, Any]) -> None:
    kube.apply(CRDS, None, document)

    def established() -> bool:
        current = kube.get(CRDS, None, document["metadata"]["name"]) or {}
        conditions = (current.get("status") or {}).get("conditions") or []  # null right after creation
        return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)

    eventually(established, f"CRD {document['metadata']['name']} is established")


def install_kuberay_crds(kube: Kube) -> None:
    """KubeRay's own CRDs (vendored, v1.7.0): no KubeRay controller runs; the tests play it."""
    for filename in ("ray.io_rayjobs.yaml", "ray.io_rayservices.yaml"):
        document = yaml.load((KUBERAY_CRDS / filename).read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
        apply_crd(kube, document)


def tool(name: str) -> str:
    """helm or kubectl: the venv's (tools/install-helm.sh), else PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise AssertionError(f"{name} is not installed (make tools installs it into the venv)")
    return found


def run_tool(name: str, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": KUBECONFIG or "/nonexistent", "HELM_CACHE_HOME": "/tmp/fusionrec-helm-cache",
           "HELM_CONFIG_HOME": "/tmp/fusionrec-helm-config", "HELM_DATA_HOME": "/tmp/fusionrec-helm-data"}
    done = subprocess.run([tool(name), *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{name} {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def operator_as(kubeconfig: Path, log: Path, *args: str, **env: str) -> OperatorProcess:
    """The operator logged in with `kubeconfig` only (KUBECONFIG points nowhere), re-checking every second."""
    return OperatorProcess(log, args, {"FUSIONREC_KUBECONFIG": str(kubeconfig), "KUBECONFIG": "/nonexistent",
                                       "FUSIONREC_SYNC_INTERVAL": "1", "FUSIONREC_METRICS_PORT": "0",
                                       "FUSIONREC_PROMETHEUS_URL": "", **env})
