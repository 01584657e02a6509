"""The ingress's routing logic, without Ray: pick a version for a request, call it, collect its metrics.

The Serve ingress deployment gives the router one `VersionClient` per version over a DeploymentHandle; the
tests give it in-process engines. Weights change through `set_weights` (the ingress's `reconfigure`), so a
canary step never restarts a replica.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from fusionrec.serving.cache import LRUCache
from fusionrec.serving.config import RESPONSE_CACHE_ENTRIES
from fusionrec.serving.engine import VersionEngine
from fusionrec.serving.errors import ApiError
from fusionrec.serving.metrics import ServingMetrics
from fusionrec.serving.routing import TrafficSplit, request_key

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 2.0
CACHEABLE = frozenset({"recommend", "score"})


class BackendUnavailable(Exception):
    """A version could not answer (no live replica after retries): a 503, not the client's fault."""


class VersionClient(Protocol):
    async def call(self, method: str, query: dict[str, Any]) -> dict[str, Any]:
        """Run `method` ("recommend", "score", "describe", "ready") on the version; raise BackendUnavailable."""
        ...


class LocalClient:
    """A version served in this process (tests, benches, the naive baseline)."""

    def __init__(self, engine: VersionEngine) -> None:
        self.engine = engine

    async def call(self, method: str, query: dict[str, Any]) -> dict[str, Any]:
        if method == "describe":
            return self.engine.describe()
        if method == "ready":
            return {"ready": True, "version": self.engine.version}
        return await getattr(self.engine, method)(query)


class Router:
    """Routes queries to versions by weight, sticky per user.

    Args:
        name: the application's name (the FusionRecommender's).
        clients: version -> client, for every deployed version (weight 0 included).
        weights: version -> percent of traffic.
        metrics: this replica's registry.
        response_cache_entries: answers kept at the ingress (0 turns the cache off).

    Why the ingress caches whole answers: a version is an immutable artifact, and a request naming a known user
    (or a history) has one answer per version, so `(version, request)` is a key that can never be stale. A
    repeated request (page reloads, pagination, several widgets) then costs no hop to a model replica, which on
    a loaded node is as much CPU as the rest of the request. The version is picked first, so sticky canary
    routing and per-version metrics are unchanged; a new version is a new key.
    """

    def __init__(self, name: str, clients: Mapping[str, VersionClient], weights: Mapping[str, int],
                 metrics: ServingMetrics | None = None, response_cache_entries: int = RESPONSE_CACHE_ENTRIES) -> None:
        self.name = name
        self.clients = dict(clients)
        self.metrics = metrics or ServingMetrics()
        self.responses: LRUCache[dict[str, Any]] = LRUCache(response_cache_entries)
        self._info: dict[str, dict[str, Any]] = {}
        self.split = self._make_split(weights)
        self.metrics.set_weights(self.split.weights)

    def _make_split(self, weights: Mapping[str, int]) -> TrafficSplit:
        if set(weights) != set(self.clients):
            raise ValueError(f"weights name versions {sorted(weights)} but the deployed versions are "
                             f"{sorted(self.clients)}; adding a version changes the application's args")
        return TrafficSplit(weights)

    def set_weights(self, weights: Mapping[str, int]) -> None:
        """Switch traffic at once; requests already routed finish on the version they were sent to."""
        self.split = self._make_split(weights)
        self.metrics.set_weights(self.split.weights)
        log.info("%s: traffic weights now %s", self.name, self.split.weights)

    def pick(self, query: Mapping[str, Any]) -> str:
        return self.split.pick(request_key(query.get("user_id"), query.get("history")))

    async def call(self, version: str, method: str, query: dict[str, Any]) -> dict[str, Any]:
        """Ask `version` (or the response cache); an error answer becomes ApiError, the batch size goes to the
        metrics. Errors are never cached."""
        key = (version, method, json.dumps(query, sort_keys=True, separators=(",", ":"))) \
            if method in CACHEABLE and self.responses.capacity else None
        if key is not None:
            cached = self.responses.get(key)
            self.metrics.observe_response_cache(version, hit=cached is not None)
            if cached is not None:
                return dict(cached)
        result = await self.clients[version].call(method, query)
        error = result.get("error")
        if error is not None:
            raise ApiError(int(error["status"]), error["error"], error.get("field"))
        batch = result.pop("batch", None)
        if batch:
            self.metrics.observe_batch(version, int(batch))
        if result.get("fallback") is None:
            result.pop("fallback", None)
        if key is not None:
            self.responses.put(key, dict(result))
        return result

    async def describe(self) -> dict[str, Any]:
        """Every version's description and weight (`GET /v1/model`)."""
        versions = []
        for version, weight in self.split.weights.items():
            info = await self._version_info(version)
            versions.append({**info, "version": version, "weight": weight})
        return {"name": self.name, "versions": versions}

    async def refresh_info(self) -> None:
        """Describe the versions not described yet, so `fusionrec_model_info` is there before any traffic."""
        for version in self.clients:
            if version not in self._info:
                await self._version_info(version)

    async def _version_info(self, version: str) -> dict[str, Any]:
        try:
            info = await self.clients[version].call("describe", {})
        except BackendUnavailable as exc:
            return {"available": False, "error": str(exc)}
        if version not in self._info:
            self.metrics.set_model(version, info["task"], info["score"])
        self._info[version] = info
        return {"available": True, **info}

    async def ready(self) -> dict[str, bool]:
        """Which versions with traffic answer within READY_TIMEOUT_S (all must, for `/readyz`)."""
        async def probe(version: str) -> bool:
            try:
                answer = await asyncio.wait_for(self.clients[version].call("ready", {}), READY_TIMEOUT_S)
            except (BackendUnavailable, asyncio.TimeoutError):
                return False
            if version not in self._info:
                await self._version_info(version)
            return bool(answer.get("ready"))

        live = self.split.live
        results = await asyncio.gather(*(probe(v) for v in live))
        return dict(zip(live, results))
