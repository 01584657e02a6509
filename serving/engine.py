"""What a model replica does with one request: resolve the user, reuse or compute the user vector, rank.

Requests and answers are plain dicts (already validated by the API layer), so the same engine runs inside a
Serve replica, where `embed` is a `@serve.batch` method, and in-process in the tests and benches. Client
mistakes found here (an unknown item id) come back as `{"error": {status, error, field}}` rather than as
exceptions, because exceptions lose their fields when Ray pickles them across processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from fusionrec.serving.cache import LRUCache
from fusionrec.serving.config import USER_CACHE_ENTRIES
from fusionrec.serving.errors import ApiError
from fusionrec.serving.schemas import SCORE_KINDS
from fusionrec.serving.topk import Ranked

if TYPE_CHECKING:  # the ingress imports this module too, and must not pay for torch
    from fusionrec.serving.live_items import LiveItems
    from fusionrec.serving.scorer import VersionScorer

HistoryKey = tuple[int, ...]
# An embedded history: (user vector [D], size of the batch it was computed in, first of that batch?).
Embedded = tuple[np.ndarray, int, bool]
Embed = Callable[[HistoryKey], Awaitable[Embedded]]

OFFLOAD_ITEMS = 50_000  # catalogues at least this large are scored in a worker thread, not on the event loop


class VersionEngine:
    """Answers recommend/score queries for one model version.

    Args:
        scorer: the loaded version.
        embed: computes one history's user vector, batched by the caller (default: alone, in a thread).
        cache_entries: user vectors kept (LRU).
        live: the replica's live catalogue (`serving.live.items`), which `prepare_items` checks writes against.
    """

    def __init__(self, scorer: VersionScorer, embed: Embed | None = None,
                 cache_entries: int = USER_CACHE_ENTRIES, live: LiveItems | None = None) -> None:
        self.scorer = scorer
        self.version = scorer.version
        self.embed = embed or self._embed_alone
        self.cache: LRUCache[np.ndarray] = LRUCache(cache_entries)
        self.live = live
        if live is not None:
            live.on_applied.append(self._forget_stale_vectors)
        # Pointwise heads run an MLP over every candidate; big catalogues are a matrix product that long.
        self._offload = scorer.task != "ranking" or scorer.n_items >= OFFLOAD_ITEMS

    async def _embed_alone(self, key: HistoryKey) -> Embedded:
        vectors = await asyncio.to_thread(self.scorer.user_vectors, [key])
        return vectors[0], 1, True

    def embed_batch(self, keys: list[HistoryKey]) -> list[Embedded]:
        """Run the user tower once over a batch of histories (distinct ones computed once); blocking."""
        unique = list(dict.fromkeys(keys))
        vectors = self.scorer.user_vectors(unique)  # [U, D]
        row = {key: n for n, key in enumerate(unique)}
        return [(vectors[row[key]], len(keys), n == 0) for n, key in enumerate(keys)]

    async def _vector(self, history: np.ndarray) -> tuple[np.ndarray, int | None]:
        """The user vector of a history, from the cache or the (batched) user tower, and the batch size when
        it was computed now (None on a cache hit)."""
        key = self.scorer.history_key(history)
        cached = self.cache.get((self.version, key))
        if cached is not None:
            return cached, None
        vector, size, first = await self.embed(key)
        self.cache.put((self.version, key), vector)
        return vector, size if first else None

    def _resolve(self, query: dict[str, Any]) -> tuple[int | None, np.ndarray]:
        """(user position or None, history positions) of a query: the given history, else the stored one."""
        user_id = query.get("user_id")
        user = self.scorer.user_position(user_id) if user_id is not None else None
        if query.get("history") is not None:
            return user, self.scorer.positions_of(query["history"], "history")
        if user is not None:
            return user, self.scorer.stored_history(user)
        return None, np.empty(0, dtype=np.int64)

    async def recommend(self, query: dict[str, Any]) -> dict[str, Any]:
        """`{user_id?, history?, k, exclude_seen, candidates?}` -> `{items, model_version, fallback, batch}`."""
        try:
            user, history = self._resolve(query)
            candidates = (self.scorer.positions_of(query["candidates"], "candidates")
                          if query.get("candidates") is not None else None)
        except ApiError as exc:
            return {"error": {"status": exc.status, **exc.as_json()}}
        k = int(query.get("k", 10))
        exclude = history if query.get("exclude_seen", True) and len(history) else None
        batch = None
        if not len(history):
            ranked = self.scorer.popular(k, exclude, candidates)
        else:
            vector, batch = await self._vector(history)
            ranked = await self._run(self.scorer.recommend, vector, user, k, exclude, candidates)
        items = [{"item_id": str(self.scorer.item_ids[p]), "score": float(s), "title": str(self.scorer.titles[p])}
                 for p, s in zip(ranked.positions, ranked.scores)]
        return {"items": items, "model_version": self.version, "fallback": ranked.fallback, "batch": batch}

    async def score(self, query: dict[str, Any]) -> dict[str, Any]:
        """`{user_id?, history?, item_ids}` -> `{scores: [{item_id, score}], score, model_version, fallback, batch}`."""
        try:
            user, history = self._resolve(query)
            items = self.scorer.positions_of(query["item_ids"], "item_ids")
        except ApiError as exc:
            return {"error": {"status": exc.status, **exc.as_json()}}
        kept = ~self.scorer.is_retired(items)  # a retired item is not scored: it is left out of `scores`
        if not kept.all():
            items = items[kept]
            query = {**query, "item_ids": [item for item, keep in zip(query["item_ids"], kept) if keep]}
        batch = None
        if not len(history):
            ranked = Ranked(items, self.scorer.popularity[items], fallback="popularity")
        else:
            vector, batch = await self._vector(history)
            ranked = Ranked(items, await self._run(self.scorer.score, vector, user, items))
        scores = [{"item_id": item, "score": float(s)} for item, s in zip(query["item_ids"], ranked.scores)]
        kind = "popularity" if ranked.fallback else SCORE_KINDS[self.scorer.task]
        return {"scores": scores, "score": kind, "model_version": self.version, "fallback": ranked.fallback,
                "batch": batch}

    def popular(self, query: dict[str, Any]) -> dict[str, Any]:
        """`{k}` -> `{items}`: the k most popular items, which the ingress keeps to answer with while this
        version has no live replica."""
        ranked = self.scorer.popular(min(int(query["k"]), self.scorer.n_items))
        return {"items": [{"item_id": str(self.scorer.item_ids[p]), "score": float(s),
                           "title": str(self.scorer.titles[p])} for p, s in zip(ranked.positions, ranked.scores)]}

    async def prepare_items(self, query: dict[str, Any]) -> dict[str, Any]:
        """`{items: [{item_id, fields}], paths: [field path of each item's fields]}` -> `{version, items}`, or an
        error answer: 422 naming the field that does not render with this version's template, 409 when this
        version cannot embed text. Checked by the ingress on every served version before a write is stored."""
        if self.live is None:
            return {"error": {"status": 409, "error": f"model version {self.version} does not follow live items "
                                                      "(serving.live.items is off for its replicas)",
                              "field": "serving.live.items"}}
        return self.live.prepare(query["items"], query["paths"])

    def _forget_stale_vectors(self, counts: dict[str, int]) -> None:
        """A cached user vector was computed from the item vectors of its history: when a text changed, any of
        them may be stale (new items and retirements leave every cached vector as it was)."""
        if counts.get("updated"):
            self.cache = LRUCache(self.cache.capacity)

    async def _run(self, function: Callable[..., Any], *args: Any) -> Any:
        if self._offload:
            return await asyncio.to_thread(function, *args)
        return function(*args)  # a few microseconds of BLAS: a thread hop would cost more than it saves

    def describe(self) -> dict[str, Any]:
        live = {"live_items": self.live.describe()} if self.live is not None else {}
        return {**self.scorer.describe(), "cache": self.cache.stats(), **live}
