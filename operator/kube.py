"""A small async Kubernetes REST client for the operator's children, and how the operator logs in.

kopf talks to the API for the FusionRecommender itself; the children (RayJob, RayService, ConfigMap,
Service, ServiceMonitor) go through this client, built from the same `kopf.ConnectionInfo` that kopf's
login produced, so both always reach the same cluster with the same credentials.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import httpx
import kopf
from fusionrec.operator.config import OperatorConfig
from fusionrec.operator.consts import Resource

from fusionrec.errors import UserError

MERGE_PATCH = "application/merge-patch+json"


class KubeApiError(Exception):
    def __init__(self, status: int, reason: str, message: str, *, method: str, path: str) -> None:
        self.status = status
        self.reason = reason
        self.method = method
        self.path = path
        super().__init__(f"{method} {path}: HTTP {status} {reason}: {message}")


class Change(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


def resolve_connection(config: OperatorConfig, *, settings: kopf.OperatorSettings, logger: logging.Logger | Any,
                       **kwargs: Any) -> kopf.ConnectionInfo:
    """FUSIONREC_KUBE_SERVER if set (kubectl proxy, test servers), else in-cluster, else the kubeconfig."""
    if config.kube_server:
        return kopf.ConnectionInfo(server=config.kube_server)
    for login in (kopf.login_via_client, kopf.login_with_service_account, kopf.login_with_kubeconfig):
        info = login(settings=settings, logger=logger, **kwargs)
        if info is not None:
            return info
    raise kopf.LoginError("no API server: set FUSIONREC_KUBE_SERVER or KUBECONFIG, or run in a pod with a "
                          "service account")


def contains(desired: Any, actual: Any) -> bool:
    """Whether every field of `desired` is in `actual` with the same value (the server may add more)."""
    if isinstance(desired, dict):
        return isinstance(actual, dict) and all(k in actual and contains(v, actual[k]) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(actual, list) and len(desired) == len(actual) and all(map(contains, desired, actual))
    return desired == actual


def owner_uids(obj: dict[str, Any]) -> set[str]:
    return {ref.get("uid") for ref in obj.get("metadata", {}).get("ownerReferences", []) or []}


class KubeApi:
    """The few REST verbs the children need, async (kopf's loop), JSON merge patches only.

    The connection is resolved lazily and again after a 401, so rotated service-account tokens and
    refreshed kubeconfig credentials are picked up without a restart.
    """

    def __init__(self, connect: Callable[[], kopf.ConnectionInfo], *, timeout: float = 30.0) -> None:
        self._connect = connect
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None

    def _build(self) -> httpx.AsyncClient:
        info = self._connect()
        verify: Any = info.as_ssl_context() if info.server.startswith("https") else False
        return httpx.AsyncClient(base_url=info.server, headers=info.as_http_headers(), verify=verify,
                                 timeout=self._timeout, trust_env=info.trust_env)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def request(self, method: str, path: str, *, body: Any = None, content_type: str | None = None,
                      params: dict[str, str] | None = None, accept: str | None = None) -> Any:
        for attempt in (1, 2):
            if self._client is None:
                self._client = self._build()
            headers = {k: v for k, v in (("Content-Type", content_type), ("Accept", accept)) if v}
            response = await self._client.request(method, path, json=body, headers=headers, params=params)
            if response.status_code == 401 and attempt == 1:  # expired token: log in again, once
                await self.close()
                continue
            break
        if response.status_code >= 400:
            try:
                status = response.json()
            except ValueError:
                status = {}
            status = status if isinstance(status, dict) else {}
            raise KubeApiError(response.status_code, status.get("reason", "") or response.reason_phrase,
                               status.get("message", response.text[:500]), method=method, path=path)
        return response.json() if response.content else None

    async def get(self, resource: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", resource.path(namespace, name))
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, resource: Resource, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", resource.path(namespace), body=body)

    async def patch(self, resource: Resource, namespace: str | None, name: str, patch: dict[str, Any],
                    *, subresource: str | None = None) -> dict[str, Any]:
        return await self.request("PATCH", resource.path(namespace, name, subresource), body=patch,
                                  content_type=MERGE_PATCH)

    async def delete(self, resource: Resource, namespace: str | None, name: str) -> bool:
        """Delete with background propagation (the RayJob's RayCluster goes too); False if it was gone."""
        try:
            await self.request("DELETE", resource.path(namespace, name),
                               body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def ensure(self, resource: Resource, desired: dict[str, Any], *, update: bool = True
                     ) -> tuple[dict[str, Any], Change]:
        """Create `desired`, or patch the fields it sets when they drifted; idempotent.

        An existing object owned by someone else is never taken over: that raises UserError naming it.
        `update=False` leaves an existing object alone (a running RayJob must not be rewritten).
        """
        meta = desired["metadata"]
        namespace, name = meta.get("namespace"), meta["name"]
        existing = await self.get(resource, namespace, name)
        if existing is None:
            try:
                return await self.create(resource, namespace, desired), Change.CREATED
            except KubeApiError as exc:
                if exc.status != 409:
                    raise
                existing = await self.get(resource, namespace, name)
                if existing is None:
                    raise
        wanted_owners = owner_uids(desired)
        if wanted_owners and not wanted_owners & owner_uids(existing):
            where = f"{namespace}/{name}" if namespace else name
            raise UserError(f"{resource.kind} {where} already exists and is not owned by this "
                            "FusionRecommender; delete it or rename the FusionRecommender", field="metadata.name")
        body = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind", "metadata", "status")}
        body["metadata"] = {k: meta[k] for k in ("labels", "annotations", "ownerReferences") if k in meta}
        if not update or contains(body, existing):
            return existing, Change.UNCHANGED
        return await self.patch(resource, namespace, name, copy.deepcopy(body)), Change.UPDATED
