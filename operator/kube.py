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
from pathlib import Path
from typing import Any

import httpx
import kopf
import yaml

from fusionrec.errors import UserError
from fusionrec.operator.config import OperatorConfig
from fusionrec.operator.consts import Resource

MERGE_PATCH = "application/merge-patch+json"
# The API server's metadata-only form of any object (what client-go's metadata client asks for).
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


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
    """Which API server, with which credentials, in a fixed order that never guesses.

    1. FUSIONREC_KUBE_SERVER: a URL used without credentials (kubectl proxy, test servers).
    2. FUSIONREC_KUBECONFIG: that kubeconfig file and nothing else; a missing file is an error, never a
       fall-through to ~/.kube/config (a test pointed at a throw-away cluster must not reach a real one).
    3. In a pod: the mounted service-account token.
    4. $KUBECONFIG, else ~/.kube/config, read when the operator logs in (not when a library is imported).
    5. The kubernetes client library, only for kubeconfig users that need it (exec plugins, auth providers).
    """
    if config.kube_server:
        return kopf.ConnectionInfo(server=config.kube_server)
    if config.kubeconfig:
        return kubeconfig_connection(config.kubeconfig, trust_env=settings.networking.trust_env)
    for login in (kopf.login_with_service_account, kopf.login_with_kubeconfig):
        info = login(settings=settings, logger=logger, **kwargs)
        if info is not None and (info.token or info.certificate_path or info.certificate_data or info.username):
            return info
    try:
        info = kopf.login_via_client(settings=settings, logger=logger, **kwargs)
    except Exception as exc:  # the client library raises its own types for every kind of bad kubeconfig
        raise kopf.LoginError(f"no usable credentials: {exc}") from exc
    if info is not None:
        return info
    raise kopf.LoginError("no API server: set FUSIONREC_KUBECONFIG or KUBECONFIG, or run in a pod with a "
                          "service account")


def kubeconfig_connection(path: str, *, trust_env: bool = False) -> kopf.ConnectionInfo:
    """The current context of one kubeconfig file: server, CA, and a token or a client certificate.

    kopf's own reader only looks at $KUBECONFIG; this one takes an explicit path, so nothing in the
    environment can redirect the operator. File references are relative to the kubeconfig, as kubectl reads them.
    """
    where = Path(path).expanduser()
    try:
        document = yaml.safe_load(where.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise UserError(f"kubeconfig {where} does not exist", field="FUSIONREC_KUBECONFIG") from None
    except yaml.YAMLError as exc:
        raise UserError(f"kubeconfig {where} is not valid YAML: {exc}", field="FUSIONREC_KUBECONFIG") from None

    def named(section: str, name: str | None) -> dict[str, Any]:
        for item in document.get(section) or []:
            if item.get("name") == name:
                return item.get(section[:-1]) or {}
        raise UserError(f"kubeconfig {where}: no {section[:-1]} named {name!r}", field="FUSIONREC_KUBECONFIG")

    context = named("contexts", document.get("current-context"))
    cluster, user = named("clusters", context.get("cluster")), named("users", context.get("user"))

    def relative(value: str | None) -> str | None:
        return None if not value else str((where.parent / value).expanduser())

    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(relative(user["tokenFile"]) or "").read_text(encoding="utf-8").strip()
    return kopf.ConnectionInfo(
        server=cluster.get("server", ""),
        ca_path=relative(cluster.get("certificate-authority")),
        ca_data=cluster.get("certificate-authority-data"),
        insecure=cluster.get("insecure-skip-tls-verify"),
        certificate_path=relative(user.get("client-certificate")),
        certificate_data=user.get("client-certificate-data"),
        private_key_path=relative(user.get("client-key")),
        private_key_data=user.get("client-key-data"),
        token=token,
        default_namespace=context.get("namespace"),
        trust_env=trust_env,
    )


def contains(desired: Any, actual: Any) -> bool:
    """Whether every field of `desired` is in `actual` with the same value (the server may add more)."""
    if isinstance(desired, dict):
        return isinstance(actual, dict) and all(k in actual and contains(v, actual[k]) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(actual, list) and len(desired) == len(actual) and all(map(contains, desired, actual))
    return desired == actual


def owner_uids(obj: dict[str, Any]) -> set[str]:
    return {ref.get("uid") for ref in obj.get("metadata", {}).get("ownerReferences", []) or []}


def _left_by_namesake(existing: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Whether `existing` is owned by an earlier object of the same kind and name as `desired`'s owner.

    Two objects with one name cannot exist in one namespace at once, so that earlier owner is gone and
    `existing` is garbage the collector has not reached yet (or that an orphaning delete left behind).
    """
    def owners(obj: dict[str, Any]) -> list[dict[str, Any]]:
        return list(obj.get("metadata", {}).get("ownerReferences") or [])

    wanted = {(ref.get("apiVersion"), ref.get("kind"), ref.get("name")) for ref in owners(desired)}
    return bool(owners(existing)) and all(
        (ref.get("apiVersion"), ref.get("kind"), ref.get("name")) in wanted for ref in owners(existing))


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

    async def exists(self, resource: Resource, namespace: str | None, name: str) -> bool:
        """Whether the object exists, asking for its metadata only: the operator checks that a Secret is there
        without ever receiving its data (RBAC's `get` is the same verb either way)."""
        try:
            await self.request("GET", resource.path(namespace, name), accept=METADATA_ONLY)
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def list(self, resource: Resource, namespace: str | None, *, label_selector: str) -> list[dict[str, Any]]:
        """Objects matching `label_selector` (one page: the operator lists only its own few children)."""
        found = await self.request("GET", resource.path(namespace), params={"labelSelector": label_selector})
        return list((found or {}).get("items") or [])

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
            if _left_by_namesake(existing, desired):
                # A FusionRecommender deleted and created again under the same name: its old children wait
                # for the garbage collector. Remove this one now rather than refuse the new owner.
                await self.delete(resource, namespace, name)
                raise KubeApiError(409, "Conflict", f"{resource.kind} {where} belonged to a deleted "
                                   "FusionRecommender of the same name; deleted it, will create it again",
                                   method="POST", path=resource.path(namespace))
            raise UserError(f"{resource.kind} {where} already exists and is not owned by this "
                            "FusionRecommender; delete it or rename the FusionRecommender", field="metadata.name")
        body = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind", "metadata", "status")}
        body["metadata"] = {k: meta[k] for k in ("labels", "annotations", "ownerReferences") if k in meta}
        if not update or contains(body, existing):
            return existing, Change.UNCHANGED
        return await self.patch(resource, namespace, name, copy.deepcopy(body)), Change.UPDATED
