"""Items, live: a model replica's side of `PUT/DELETE /v1/items` (`serving.live.items`).

A replica replays the item log (`fusionrec.data.item_log`) before it answers, then polls it every
`serving.live.pollSeconds`: each new or changed item's fields are rendered with the version's own
`data.itemTextTemplate` (`fusionrec.data.text`, the renderer training used), embedded in batches by the
version's item tower, and applied to the scorer (`VersionScorer.apply_items`): new items are appended to the
catalogue (exact search and the compiled faiss index alike), changed texts re-embedded, retired items hidden.
A failed poll is logged and retried at the next tick; it never stops the replica.

What a new item's vector is: the fused TEXT vector, `fusion(stack(project(pool(LM(text)))))`, i.e. what the
item tower computes without an item-ID embedding. A hybrid model (task.useItemIds) learned an ID vector only
for its training items, so a new item gets none: that is the honest cold-start vector, and exactly why a
language-model recommender can rank an item nobody has interacted with. A training item whose text changes
keeps its learned ID vector on top of its new text vector.

Which graph embeds: the artifact's compiled item graph (`item_encoder.onnx`, or its TensorRT plan) where it
computes the whole item vector (no ID embedding; backend onnxruntime or tensorrt): the torch model is then
not kept. Otherwise the model's item tower in torch (uncompiled artifacts, the hybrid, the torch backend, whose
graph runs on the model's own modules anyway). Only with live items on: without them a replica keeps no
item tower at all (`VersionScorer.load`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fusionrec.data.item_log import ItemChange, ItemLog, ItemState
from fusionrec.data.text import DEFAULT_TEMPLATE, ItemTextTemplate
from fusionrec.errors import UserError
from fusionrec.serving.errors import ApiError, invalid

if TYPE_CHECKING:
    from fusionrec.artifact import Artifact
    from fusionrec.model.fused import FusedRecommender
    from fusionrec.serving.scorer import VersionScorer

log = logging.getLogger(__name__)

EMBED_BATCH = 64  # texts per item-tower call (the catalogue embedding's batch)


class ItemEmbedder:
    """Texts -> item vectors [B, D] with a version's item tower (see the module docstring for which one).

    Args:
        backend: what runs ("onnxruntime", "tensorrt", "torch").
        runtime: a compiled item graph (`fusionrec.compile.load_compiled(..., "item")`), or None for torch.
        items: the model's item tower (torch), or None when the compiled graph runs.
    """

    def __init__(self, backend: str, runtime: Any | None = None, items: Any | None = None) -> None:
        if (runtime is None) == (items is None):
            raise ValueError("an ItemEmbedder runs either a compiled graph or the torch item tower")
        self.backend = backend
        self.runtime = runtime
        self.items = items

    @classmethod
    def for_artifact(cls, artifact: Artifact, model: FusedRecommender, *, use_compiled: bool = True) -> ItemEmbedder:
        from fusionrec.compile.runtime import COMPILE_RECORD, load_compiled, read_record

        if use_compiled and artifact.file(COMPILE_RECORD) is not None and model.items.id_embedding is None:
            record = read_record(artifact)
            if record.get("backend") in ("onnxruntime", "tensorrt") and "item" in record.get("graphs", {}):
                runtime = load_compiled(artifact, "item", threads=int(record.get("threads") or 0) or None)
                log.info("%s: live items embedded by the compiled item graph (%s)", artifact.version,
                         runtime.backend)
                return cls(runtime.backend, runtime=runtime)
        log.info("%s: live items embedded by the torch item tower", artifact.version)
        return cls("torch", items=model.items)

    def embed(self, texts: Sequence[str], trained: Sequence[int | None]) -> np.ndarray:
        """[B] texts -> [B, D] float32. `trained[b]`: the training position of an item whose text changed (a
        hybrid adds its learned ID vector), None for a new item."""
        chunks = [self._embed(list(texts[s:s + EMBED_BATCH])) for s in range(0, len(texts), EMBED_BATCH)]
        vectors = np.concatenate(chunks) if chunks else np.empty((0, 0), dtype=np.float32)
        ids = getattr(self.items, "id_embedding", None)
        if ids is not None:
            import torch

            with torch.inference_mode():
                for b, position in enumerate(trained):
                    if position is not None:
                        vectors[b] += ids.weight[position].float().cpu().numpy()
        return vectors

    def _embed(self, texts: list[str]) -> np.ndarray:
        if self.runtime is not None:
            return np.asarray(self.runtime.run(self.runtime.inputs.tokens(texts)), dtype=np.float32)
        import torch

        items = self.items
        assert items is not None  # one of the two is set (__init__)
        with torch.inference_mode():
            # The item graph's computation (compile.graphs.TextTowerGraph) without its ID embedding; tokens go
            # straight through the LM, not through the encoders' embedding caches, which would keep every
            # live text on disk.
            projected = []
            for m in range(len(items.encoders)):
                encoder = items._encoder(m)
                projected.append(items._project(m, encoder.pool_tokens(**encoder.tokenize(texts))))
            return items.fusion(torch.stack(projected, dim=1)).float().cpu().numpy()  # [B, M, D] -> [B, D]


def item_template(artifact: Artifact) -> ItemTextTemplate:
    """The template the version's catalogue was rendered with: its spec's `data.itemTextTemplate`, else the one
    training recorded (the prepared dataset's, metrics.json `item_text_template`), else the default."""
    template = artifact.spec.data.item_text_template or artifact.metrics.get("item_text_template")
    if template is None:
        log.warning("%s: neither its spec nor its training recorded an item text template (an artifact from "
                    "before it was recorded); live items are rendered with the default %r", artifact.version,
                    DEFAULT_TEMPLATE)
    return ItemTextTemplate(template or DEFAULT_TEMPLATE)


def render_fields(template: ItemTextTemplate, fields: dict[str, Any], path: str) -> str:
    """An item's text, or ApiError 422 naming the field: `<path>.<field>` when a value cannot be formatted
    (`{rating:.1f}` given text), `<path>` when the text is empty (none of the template's fields present)."""
    try:
        text = template.render_one(fields)
    except UserError:
        raise invalid(f"field {_failing_field(template, fields)!r} cannot be formatted by the item text template "
                      f"{template.template!r}", f"{path}.{_failing_field(template, fields)}") from None
    if not text.strip():
        raise invalid(f"the fields render to no text with the item text template {template.template!r}: give at "
                      f"least one of {', '.join(template.fields)}", path)
    return text


def _failing_field(template: ItemTextTemplate, fields: dict[str, Any]) -> str:
    """The template field whose value fails to format: each present field rendered alone through the clauses
    that name it."""
    for name in template.fields:
        if name not in fields:
            continue
        try:
            template.render_one({name: fields[name]})
        except UserError:
            return name
    return next((name for name in template.fields if name in fields), "fields")


@dataclass
class Prepared:
    """Item changes rendered and embedded, ready to apply (built off the event loop)."""

    item_ids: list[str]
    titles: list[str]
    texts: list[str]
    vectors: np.ndarray
    retired: list[str]
    unrenderable: list[str]
    state: ItemState | None = None  # the log's state and the files read, committed when applied
    seen: set[str] | None = None
    unchanged: dict[str, str] = field(default_factory=dict)  # item -> title: a PUT whose text is the current one

    def __len__(self) -> int:
        return len(self.item_ids) + len(self.retired) + len(self.unchanged)


class LiveItems:
    """One replica's live catalogue: replays and follows the item log, rendering and embedding changes.

    Args:
        scorer: the loaded version (`VersionScorer.load(..., live_items=True)`: it has an `item_embedder`).
        item_log: the log under `serving.live.uri`.
        template: the version's item text template (default: `item_template(scorer.artifact)`).
    """

    def __init__(self, scorer: VersionScorer, item_log: ItemLog, template: ItemTextTemplate | None = None) -> None:
        self.scorer = scorer
        self.item_log = item_log
        self.template = template or item_template(scorer.artifact)
        self.state = ItemState()
        self._seen: set[str] = set()
        self._texts = _catalogue_texts(scorer)  # item -> the text its served vector was embedded from
        self.applied = 0  # item changes applied since the start
        self.last_poll: float | None = None
        self.on_applied: list[Any] = []  # callbacks(counts): the engine drops user vectors of changed items

    @property
    def can_embed(self) -> bool:
        return self.scorer.item_embedder is not None

    def render(self, fields: dict[str, Any], path: str) -> str:
        return render_fields(self.template, fields, path)

    def prepare(self, items: Sequence[dict[str, Any]], paths: Sequence[str]) -> dict[str, Any]:
        """The ingress's check before a write is stored (`prepare_items`): every item renders to a text with
        this version's template, and this version can embed text. An error answer names the field."""
        if not self.can_embed:
            return {"error": {"status": 409, "error": f"model version {self.scorer.version} cannot embed item text, "
                                                      "so it cannot take new items", "field": "model_version"}}
        try:
            for item, path in zip(items, paths):
                self.render(item["fields"], path)
        except ApiError as exc:
            return {"error": {"status": exc.status, **exc.as_json()}}
        return {"version": self.scorer.version, "items": len(items)}

    # --- following the log ---------------------------------------------------------------------------------

    def fetch(self) -> Prepared:
        """Read the log's new files and render and embed the changes that win; blocking (a worker thread)."""
        seen = set(self._seen)
        changes = self.item_log.read_new(seen)
        state = ItemState(dict(self.state.items)) if changes else self.state
        winners: dict[str, ItemChange] = {}
        for change in changes:
            if state.apply(change):
                winners[change.item_id] = change
        prepared = self._prepare(list(winners.values()))
        prepared.state, prepared.seen = state, seen  # committed by `apply`: a failure here re-reads them
        return prepared

    def _prepare(self, changes: list[ItemChange]) -> Prepared:
        upserts, retired, unrenderable = [], [], []
        unchanged: dict[str, str] = {}
        for change in changes:
            if change.fields is None:
                retired.append(change.item_id)
                continue
            try:
                text = self.render(change.fields, "fields")
            except ApiError as exc:  # validated by every version served when it was stored, not by this one
                log.warning("%s: item %r cannot be rendered by this version (%s): not served by it",
                            self.scorer.version, change.item_id, exc.message)
                unrenderable.append(change.item_id)
                continue
            if self._texts.get(change.item_id) == text:  # same text, same vector: no embedding, no new index row
                unchanged[change.item_id] = _title(change)
            else:
                upserts.append((change, text))
        texts = [text for _, text in upserts]
        trained = [self._trained_position(change.item_id) for change, _ in upserts]
        embedder = self.scorer.item_embedder
        assert embedder is not None  # a LiveItems is built for a scorer loaded with live_items=True
        vectors = embedder.embed(texts, trained) if upserts else np.empty((0, self.scorer.index.catalogue.shape[1]),
                                                                           dtype=np.float32)
        titles = [_title(change) for change, _ in upserts]
        return Prepared([change.item_id for change, _ in upserts], titles, texts, vectors, retired + unrenderable,
                        unrenderable, unchanged=unchanged)

    def _trained_position(self, item_id: str) -> int | None:
        position = self.scorer._item_position.get(item_id)
        return position if position is not None and position < self.scorer.n_trained else None

    def apply(self, prepared: Prepared) -> dict[str, int]:
        """Apply prepared changes to the scorer (array writes and a faiss add, a faiss rebuild now and then); off
        the event loop, in the poll's worker thread: `apply_items` orders its writes for concurrent readers."""
        counts = {"added": 0, "updated": 0, "retired": 0, "unchanged": 0}
        if len(prepared):
            counts = self.scorer.apply_items(prepared.item_ids, prepared.titles, prepared.texts, prepared.vectors,
                                             prepared.retired, unchanged=prepared.unchanged)
            self._texts.update(zip(prepared.item_ids, prepared.texts))
        if prepared.state is not None and prepared.seen is not None:
            self.state, self._seen = prepared.state, prepared.seen
        if not len(prepared):
            return counts
        self.applied += len(prepared)
        for callback in self.on_applied:
            callback(counts)
        log.info("%s: live items applied: %s", self.scorer.version, counts)
        return counts

    def replay(self) -> dict[str, int]:
        """Everything the log holds, before the replica answers; blocking. A storage failure here fails the
        replica's start (Serve retries it): serving without the live catalogue would answer with retired items."""
        started = time.monotonic()
        for attempt in range(3):
            counts = self.apply(self.fetch())
            if not self.item_log.vanished:
                break
            log.info("%s: %d item log files were compacted while read; reading again (%d)", self.scorer.version,
                     self.item_log.vanished, attempt + 1)
        log.info("%s: item log replayed in %.2f s: %d items named (%s)", self.scorer.version,
                 time.monotonic() - started, len(self.state.items), counts)
        self.last_poll = time.time()
        return counts

    async def poll_once(self) -> dict[str, int]:
        """Read, embed and apply new changes in a worker thread: the replica's event loop keeps answering."""
        counts = await asyncio.to_thread(lambda: self.apply(self.fetch()))
        self.last_poll = time.time()
        return counts

    async def follow(self, poll_seconds: float) -> None:
        """Poll forever; a failed poll is logged and retried at the next tick (never ends the replica)."""
        while True:
            await asyncio.sleep(poll_seconds)
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  (storage down, a bad file: the next poll tries again)
                log.warning("%s: reading the item log failed (retrying in %.1f s): %s", self.scorer.version,
                            poll_seconds, exc)

    def describe(self) -> dict[str, Any]:
        return {"items_named": len(self.state.items), "applied": self.applied, "last_poll": self.last_poll,
                "embedder": getattr(self.scorer.item_embedder, "backend", None)}


def _title(change: ItemChange) -> str:
    return str((change.fields or {}).get("title") or change.item_id)


def _catalogue_texts(scorer: VersionScorer) -> dict[str, str]:
    """The training catalogue's item texts (items.parquet's `text`, what item_index.npy was embedded from), so
    a PUT that renders an item's current text is not embedded again."""
    import pandas as pd

    items = pd.read_parquet(scorer.artifact.items_path)
    if "text" not in items:
        return {}
    return dict(zip(items["item_id"].astype(str), items["text"].astype(str)))


def start_live_items(scorer: VersionScorer, live_uri: str | None) -> LiveItems:
    """A replica's live catalogue, with the whole log replayed (blocking: before the replica answers)."""
    if not live_uri:  # the deployers resolve it (serving.config.with_live_uri); args written by hand may not
        raise UserError("serving.live.items is true but serving.live.uri is not set", field="serving.live.uri",
                        fix="set serving.live.uri to a local folder, s3:// or gs:// prefix")
    live = LiveItems(scorer, ItemLog(live_uri))
    live.replay()
    return live


def follow_in_background(live: LiveItems, poll_seconds: float) -> Any:
    """Poll the log from the running event loop (a Serve replica's constructor runs on its loop; each poll's
    reading, embedding and applying run in a worker thread); without a running loop, on a thread of its own."""
    try:
        return asyncio.get_running_loop().create_task(live.follow(poll_seconds))
    except RuntimeError:
        import threading

        thread = threading.Thread(target=asyncio.run, args=(live.follow(poll_seconds),), daemon=True,
                                  name=f"live-items-{live.scorer.version}")
        thread.start()
        return thread
