"""The ingress's routing logic, without Ray: pick a version for a request, call it, collect its metrics.

The Serve ingress deployment gives the router one `VersionClient` per version over a DeploymentHandle; the
tests give it in-process engines. Weights change through `set_weights` (the ingress's `reconfigure`), so a
canary step never restarts a replica.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from fusionrec.serving.breaker import Breaker
from fusionrec.serving.cache import LRUCache
from fusionrec.serving.config import (
    DEPLOY_WAIT_S,
    MODEL_CALL_DEADLINE_S,
    RESPONSE_CACHE_ENTRIES,
    RETIRED_MEMORY_S,
    RETRY_AFTER_S,
)
from fusionrec.serving.engine import VersionEngine
from fusionrec.serving.errors import ApiError
from fusionrec.serving.metrics import ServingMetrics
from fusionrec.serving.routing import TrafficSplit, request_key

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 2.0
CACHEABLE = frozenset({"recommend", "score"})


class BackendUnavailable(Exception):
    """A version could not answer (no live replica after retries): a 503, not the client's fault."""


class Overloaded(BackendUnavailable):
    """The version's replicas are alive but refuse more work (back-pressure): a 503 that says nothing about
    their health, so it does not trip the breaker."""


class VersionClient(Protocol):
    async def call(self, method: str, query: dict[str, Any]) -> dict[str, Any]:
        """Run `method` ("recommend", "score", "describe", "ready", "popular") on the version; raise
        BackendUnavailable."""
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
        if method == "popular":
            return self.engine.popular(query)
        return await getattr(self.engine, method)(query)


class Router:
    """Routes queries to versions by weight, sticky per user.

    Args:
        name: the application's name (the FusionRecommender's).
        clients: version -> client, for every deployed version (weight 0 included).
        weights: version -> percent of traffic.
        metrics: this replica's registry.
        response_cache_entries: answers kept at the ingress (0 turns the cache off).
        call_deadline_s: a model call that takes longer is answered 503 or with the popularity fallback.
        popular_k: popular items kept per version for that fallback (0: no fallback; the ingress keeps
            maxK + maxHistory, so that excluding a history still leaves maxK).

    Why the ingress caches whole answers: a version is an immutable artifact, and a request naming a known user
    (or a history) has one answer per version, so `(version, request)` is a key that can never be stale. A
    repeated request (page reloads, pagination, several widgets) then costs no hop to a model replica, which on
    a loaded node is as much CPU as the rest of the request. The version is picked first, so sticky canary
    routing and per-version metrics are unchanged; a new version is a new key.
    """

    def __init__(self, name: str, clients: Mapping[str, VersionClient], weights: Mapping[str, int],
                 metrics: ServingMetrics | None = None, response_cache_entries: int = RESPONSE_CACHE_ENTRIES, *,
                 call_deadline_s: float = MODEL_CALL_DEADLINE_S, popular_k: int = 0,
                 live_catalogue: bool = False) -> None:
        self.name = name
        self.clients = dict(clients)
        self.metrics = metrics or ServingMetrics()
        # Live items change a version's answers while it serves: (version, request) is no longer a key that
        # cannot go stale, so no answer is cached, and the popular items are fetched again at every refresh.
        self.live_catalogue = live_catalogue
        self.responses: LRUCache[dict[str, Any]] = LRUCache(0 if live_catalogue else response_cache_entries)
        self.call_deadline_s = call_deadline_s
        self.popular_k = popular_k
        self.breakers = {version: Breaker(RETRY_AFTER_S) for version in self.clients}
        self.deploying: frozenset[str] = frozenset()  # versions Serve is deploying: wait for them, not the deadline
        self._popular: dict[str, list[dict[str, Any]]] = {}
        self._retired: dict[str, float] = {}  # item -> monotonic time until which it is kept out of _popular
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

    def set_deploying(self, versions: set[str] | frozenset[str]) -> None:
        """Versions whose Serve deployment is being updated (replicas replaced or starting): their calls wait up
        to DEPLOY_WAIT_S for the new replicas, as a planned deploy must not fail requests."""
        self.deploying = frozenset(versions)

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
        try:
            result = await self._ask(version, method, query)
        except BackendUnavailable:
            fallback = self._fallback(version, method, query)
            self.metrics.observe_unavailable(version, fallback=fallback is not None)
            if fallback is None:
                raise
            return fallback
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

    async def _ask(self, version: str, method: str, query: dict[str, Any]) -> dict[str, Any]:
        """One model call, bounded by the deadline (DEPLOY_WAIT_S while the version is being deployed), and
        failing fast while the version's breaker is open."""
        breaker = self.breakers[version]
        if breaker.is_open and version not in self.deploying:
            raise BackendUnavailable(f"model version {version} has no live replica; retry in {RETRY_AFTER_S} s")
        call = asyncio.ensure_future(self.clients[version].call(method, query))
        start = asyncio.get_running_loop().time()
        try:
            while not call.done():
                await asyncio.wait({call}, timeout=self.call_deadline_s)
                waited = asyncio.get_running_loop().time() - start
                if not call.done() and (version not in self.deploying or waited >= DEPLOY_WAIT_S):
                    breaker.trip()
                    raise BackendUnavailable(f"model version {version} did not answer within {waited:.1f} s "
                                             "(no live replica)")
        finally:
            if not call.done():
                call.cancel()  # the deadline passed, or the client hung up: the model's answer is not wanted
        try:
            result = call.result()
        except Overloaded:
            raise
        except BackendUnavailable:
            breaker.trip()
            raise
        breaker.reset()
        return result

    def _fallback(self, version: str, method: str, query: dict[str, Any]) -> dict[str, Any] | None:
        """The popularity answer for a recommend request that allows it while `version` cannot answer: no
        candidates (they may be outside the kept list), and either exclude_seen false or a history given (the
        stored history lives with the model, so it cannot be excluded here). None when it does not apply."""
        popular = self._popular.get(version)
        exclude = bool(query.get("exclude_seen", True))
        history = query.get("history")
        if method != "recommend" or popular is None or query.get("candidates") is not None \
                or (exclude and history is None):
            return None
        seen = set(history or ()) if exclude else set()
        items = [item for item in popular if item["item_id"] not in seen][:int(query.get("k", 10))]
        return {"items": [dict(item) for item in items], "model_version": version, "fallback": "popularity"}

    def forget_items(self, item_ids: Iterable[str]) -> None:
        """Items this ingress just retired: out of every kept popular list now (the fallback answers from them
        while a version has no replica, which could take a refresh or longer), and out of the lists fetched
        for RETIRED_MEMORY_S (a replica answers with its catalogue as of its last item-log poll)."""
        retired = set(item_ids)
        until = time.monotonic() + RETIRED_MEMORY_S
        self._retired.update(dict.fromkeys(retired, until))
        self._popular = {version: [item for item in items if item["item_id"] not in retired]
                         for version, items in self._popular.items()}

    def remember_items(self, item_ids: Iterable[str]) -> None:
        """Items this ingress just stored again (a PUT): the next refresh may list them."""
        for item in item_ids:
            self._retired.pop(item, None)

    def _without_retired(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        now = time.monotonic()
        self._retired = {item: until for item, until in self._retired.items() if until > now}
        return [item for item in items if item["item_id"] not in self._retired] if self._retired else items

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
            if self.popular_k and (version not in self._popular or self.live_catalogue):
                try:  # a version is immutable: its popular items are fetched once (live items: again)
                    answer = await self._ask(version, "popular", {"k": self.popular_k})
                except BackendUnavailable:
                    continue
                self._popular[version] = self._without_retired(answer["items"])

    async def _version_info(self, version: str) -> dict[str, Any]:
        try:
            info = await self._ask(version, "describe", {})
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
            except (TimeoutError, BackendUnavailable):
                return False
            self.breakers[version].reset()  # a replica answers again: stop failing fast at once
            if version not in self._info:
                await self._version_info(version)
            return bool(answer.get("ready"))

        live = self.split.live
        results = await asyncio.gather(*(probe(v) for v in live))
        return dict(zip(live, results))
