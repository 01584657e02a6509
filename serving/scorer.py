"""One model version in memory, without Ray: ids to positions, the user tower, top-k and pointwise scores.

The Serve model deployment wraps this class (batching, caching, metrics) and the tests and benches use it
directly, so the offline answer and the served answer come from the same code path below the HTTP layer.
Items are never encoded per request: the catalogue's vectors come from the artifact's verified
`item_index.npy`, and only the user tower runs, once per batch of distinct histories.

Ranking models search the catalogue with the approximate index `fusionrec compile` stored when the catalogue
is large (`item_index.faiss`, its recall@10 in compile.json), else exactly; both through one search
(`fusionrec.retrieval.InnerProductIndex`), seen items excluded alike.

The model is read from disk once per replica (`VersionScorer.load`). When the artifact is compiled, the torch
model is kept only as long as the load needs it (checking the item index): an ONNX Runtime or TensorRT tower
then holds its own graph, the torch backend runs on the loaded model's own modules, and the scorer keeps the
pointwise head alone (a few small layers) for ctr/rating scores.

With live items (`serving.live.items`, see `fusionrec.serving.live_items`) the catalogue changes while serving:
`apply_items` appends new items, replaces the vectors of items whose text changed and retires items, which
are then never returned by `recommend` or `popular` (a history may still name them: their vectors stay).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fusionrec.artifact import Artifact
from fusionrec.errors import UserError
from fusionrec.model.fused import FusedRecommender
from fusionrec.model.heads.pointwise import PointwiseHead
from fusionrec.model.towers import UNKNOWN_FEEDBACK, TextUserTower, left_pad
from fusionrec.retrieval import load_index
from fusionrec.serving.errors import not_found
from fusionrec.serving.schemas import SCORE_KINDS
from fusionrec.serving.topk import Approximate, InnerProductIndex, Ranked, top_k

log = logging.getLogger(__name__)

_PAIR_CHUNK = 65_536  # items scored at once by a pointwise head (its MLP sees [chunk, 3D] features)
_INDEX_TOLERANCE = 1e-3
WARM_UP_BATCH = 64  # the serving batcher's default max_batch_size
WARM_UP_USERS = 100


class VersionScorer:
    """A loaded artifact, ready to answer.

    Args:
        model: the fused model, in eval mode; kept as `model` while torch runs the user tower (`compiled` None).
        artifact: its verified artifact (spec, metrics, item index).
        items: items.parquet (item_id, title), in catalogue order.
        users: users.parquet (user_id, history of item ids, oldest first), in user-index order.
        use_faiss: exact search: see `InnerProductIndex`.
        use_index: search with the artifact's approximate item index when compile stored one (False: exact).
        compiled: the artifact's compiled user tower (`fusionrec.compile.load_compiled`), run instead of torch
            (see `serve_compiled`).
    Attributes:
        model: the whole torch model while it runs the user tower, None once a compiled tower does.
        head: the model's scoring head (pointwise tasks score user x item pairs through it).
    """

    def __init__(self, model: FusedRecommender, artifact: Artifact, items: pd.DataFrame, users: pd.DataFrame, *,
                 use_faiss: bool | None = None, use_index: bool = True, compiled: Any | None = None) -> None:
        model.eval()
        self.model: FusedRecommender | None = model
        self.head = model.head
        self.compiled: Any | None = None
        self.artifact = artifact
        self.version = artifact.version
        self.task = model.config.task
        self.history_length = model.config.history_length
        self.user_tower = model.config.user_tower
        self.item_ids = items["item_id"].astype(str).to_numpy()
        self.titles = items["title"].astype(str).to_numpy() if "title" in items else self.item_ids.copy()
        self._item_position = {item: i for i, item in enumerate(self.item_ids)}
        self._n_items = len(self.item_ids)  # grows last when live items are added (`apply_items`)
        self.n_trained = len(self.item_ids)  # items of the training catalogue; live items come after them
        self.live_changed = False  # whether live items changed the catalogue (the torch tower then reads ours)
        self._user_position = {str(user): u for u, user in enumerate(users["user_id"])}
        self._histories = [self.positions_of([str(i) for i in h], "users.parquet") for h in users["history"]]
        catalogue = artifact.load_item_index().astype(np.float32)  # [N, D]
        self._check_index(model, catalogue)
        self.index_record = _stored_index_record(artifact) if self.task == "ranking" else None
        approximate = (_load_stored_index(artifact, self.index_record, catalogue.shape)
                       if use_index and self.index_record is not None else None)
        self.index = InnerProductIndex(catalogue, use_faiss, approximate)
        self._catalogue_t = torch.from_numpy(self.index.catalogue)
        counts = Counter(int(i) for h in self._histories for i in set(h.tolist()))
        popularity = np.zeros(len(self.item_ids), dtype=np.float32)
        for item, count in counts.items():
            popularity[item] = count / max(len(self._histories), 1)  # share of users with the item
        self.popularity = popularity
        if compiled is not None:
            self.serve_compiled(compiled)
        self.item_embedder: Any | None = None  # set by `load(live_items=True)` (fusionrec.serving.live_items)

    def serve_compiled(self, compiled: Any) -> None:
        """Run the user tower on `compiled` from now on and let go of the torch model: the scorer keeps its
        head only. A compiled tower computes the history's vector alone, so a model with a per-user part (ID
        embedding, user features) cannot hand its tower over (`_compiled_user_tower` keeps torch for it)."""
        if self.model is not None and self.model.knows_users:
            raise ValueError(f"{self.version}: the model adds a per-user vector; its compiled user graph takes user "
                             "indices and cannot replace the history-only tower")
        self.compiled = compiled
        self.model = None

    @classmethod
    def load(cls, path: str | Path, *, embeddings: Path | None = None, use_faiss: bool | None = None,
             use_index: bool = True, use_compiled: bool = True, live_items: bool = False) -> VersionScorer:
        """Load and verify an artifact (manifest checked, pickles refused) and rebuild its model, once; when the
        artifact was compiled (`fusionrec compile`), its user tower runs on the compiled backend and the torch
        model is dropped once the item index has been checked against it (the torch backend keeps, inside its
        graph, the modules the tower runs). `path` may be a published version in object storage (s3://, gs://):
        it is fetched and verified into the local artifact cache first (`fusionrec.serving.artifacts`), and an
        unpublished one is refused.

        `live_items`: also keep what embeds a new item's text (`scorer.item_embedder`: the compiled item graph
        where it computes the whole item vector, else the model's item tower, which is then kept)."""
        from fusionrec.model.saved import USERS_NAME, load_model
        from fusionrec.serving.artifacts import local_artifact

        model, artifact = load_model(local_artifact(path), embeddings=embeddings)
        items = pd.read_parquet(artifact.items_path)
        users = pd.read_parquet(artifact.path / USERS_NAME)
        scorer = cls(model, artifact, items, users, use_faiss=use_faiss,  # the index checked on the whole model
                     use_index=use_index)
        compiled = _compiled_user_tower(artifact, model) if use_compiled else None
        if live_items:
            from fusionrec.serving.live_items import ItemEmbedder

            scorer.item_embedder = ItemEmbedder.for_artifact(artifact, model, use_compiled=use_compiled)
        del model  # from here on only the scorer's references keep it (none once a compiled tower serves)
        if compiled is not None:
            scorer.serve_compiled(compiled)
        scorer.warm_up()
        return scorer

    def warm_up(self, max_batch: int = WARM_UP_BATCH) -> list[int]:
        """Run the compiled user tower once per batch bucket up to `max_batch` when it replays CUDA graphs,
        so a GPU replica captures them while loading, not on the first request of each size (a capture
        takes a few forward passes). Returns the batch sizes run; none without CUDA graphs."""
        runner = getattr(getattr(self.compiled, "engine", None), "cuda_graphs", None)
        if runner is None or not self._histories:
            return []
        longest = max(self._histories[:WARM_UP_USERS], key=len)  # its text fills the longest token bucket
        sizes = sorted({runner.buckets.batch(n) for n in range(1, max_batch + 1)})
        for size in sizes:
            self.user_vectors([longest] * size)
        log.info("%s: CUDA graphs captured for batches %s (%d graphs)", self.version, sizes, runner.captured)
        return sizes

    def _check_index(self, model: FusedRecommender, catalogue: np.ndarray) -> None:
        """The precomputed index must be the model's own catalogue: an index from other weights would rank
        with vectors the user tower never learned to match."""
        with torch.inference_mode():
            own = model.catalogue().float().cpu().numpy()
        if catalogue.shape != own.shape or len(catalogue) != len(self.item_ids):
            raise UserError(f"artifact {self.artifact.path}: item_index.npy has shape {catalogue.shape}, the model's "
                            f"catalogue {own.shape}, items.parquet {len(self.item_ids)} rows", field="item_index.npy")
        error = float(np.abs(catalogue - own).max()) if own.size else 0.0
        if error > _INDEX_TOLERANCE * max(1.0, float(np.abs(own).max())):
            raise UserError(f"artifact {self.artifact.path}: item_index.npy differs from the model's item vectors "
                            f"by up to {error:.3g}; it was not written from these weights", field="item_index.npy")

    # --- ids ---------------------------------------------------------------------------------------------

    @property
    def n_items(self) -> int:
        """Items a ranking may range over: raised only once every per-item array covers them (`apply_items`)."""
        return self._n_items

    def positions_of(self, item_ids: Sequence[str], field: str) -> np.ndarray:
        """Item ids -> catalogue positions; an unknown id is a 404 naming its place (`history[3]`)."""
        out = np.empty(len(item_ids), dtype=np.int64)
        for n, item in enumerate(item_ids):
            position = self._item_position.get(item)
            if position is None:
                raise not_found(f"unknown item_id {item!r} (model version {self.version} has {self.n_items} items)",
                                f"{field}[{n}]")
            out[n] = position
        return out

    def user_position(self, user_id: str) -> int | None:
        return self._user_position.get(user_id)

    def stored_history(self, user: int) -> np.ndarray:
        """Everything the user did before the test stage, as the artifact stores it (oldest first)."""
        return self._histories[user]

    def history_key(self, history: np.ndarray) -> tuple[int, ...]:
        """What the user tower reads of a history: its last `history_length` items (the cache key)."""
        return tuple(int(i) for i in history[-self.history_length:])

    # --- the model ---------------------------------------------------------------------------------------

    def user_vectors(self, histories: Sequence[Sequence[int] | np.ndarray]) -> np.ndarray:
        """B histories (positions, oldest first, non-empty) -> [B, D] user-tower outputs, in one model call.

        Per-user ID embeddings (pointwise tasks) are not included: they are added in `score`/`recommend`, so
        a vector depends on the history alone and can be cached under it.
        """
        arrays = [np.asarray(h, dtype=np.int64) for h in histories]
        if self.compiled is not None:
            return self.compiled.run(self.compiled.inputs.user_inputs(arrays, self.index.catalogue))
        assert self.model is not None  # dropped only when a compiled tower serves
        with torch.inference_mode():
            catalogue = self._catalogue_t if self.live_changed else None
            return _user_tower(self.model, arrays, catalogue).float().cpu().numpy()

    def recommend(self, vector: np.ndarray, user: int | None, k: int, exclude: np.ndarray | None = None,
                  candidates: np.ndarray | None = None) -> Ranked:
        """The k best items for a user vector [D], `exclude` left out, within `candidates` when given."""
        if candidates is None and self.task == "ranking":
            positions, scores = self.index.search(vector, k, exclude)  # retired items are hidden in the index
            return Ranked(positions, scores.astype(np.float32))
        pool = self._live_pool(candidates)
        scores = self._scores(vector, user, pool)
        excluded = np.flatnonzero(np.isin(pool, exclude)) if exclude is not None and len(exclude) else None
        best = top_k(scores, k, excluded) if len(pool) else np.empty(0, dtype=np.int64)
        return Ranked(pool[best], scores[best])

    def score(self, vector: np.ndarray, user: int | None, items: np.ndarray) -> np.ndarray:
        """[I] scores of the given items: dot products (ranking), click probabilities (ctr) or ratings."""
        return self._scores(vector, user, items)

    def popular(self, k: int, exclude: np.ndarray | None = None, candidates: np.ndarray | None = None) -> Ranked:
        """The fallback for users the model knows nothing about: the most popular items."""
        pool = self._live_pool(candidates)
        scores = self.popularity[pool]
        excluded = np.flatnonzero(np.isin(pool, exclude)) if exclude is not None and len(exclude) else None
        best = top_k(scores, k, excluded) if len(pool) else np.empty(0, dtype=np.int64)
        return Ranked(pool[best], scores[best], fallback="popularity")

    def _live_pool(self, candidates: np.ndarray | None) -> np.ndarray:
        """The positions a ranking may return: the candidates (else every item), retired items left out."""
        pool = np.arange(self.n_items) if candidates is None else np.unique(candidates)
        hidden = self.index.hidden
        return pool[~np.isin(pool, hidden)] if len(hidden) else pool

    def is_retired(self, positions: np.ndarray) -> np.ndarray:
        """[I] bool: which positions are retired items (never recommended, not scored)."""
        hidden = self.index.hidden
        return np.isin(positions, hidden) if len(hidden) else np.zeros(len(positions), dtype=bool)

    # --- live items --------------------------------------------------------------------------------------

    def apply_items(self, item_ids: Sequence[str], titles: Sequence[str], texts: Sequence[str],
                    vectors: np.ndarray, retired: Sequence[str] = (), *,
                    unchanged: dict[str, str] | None = None) -> dict[str, int]:
        """Upsert items with their embedded vectors [M, D] (new ids appended, known ids re-embedded in place, a
        retired one restored) and retire `retired` (unknown ids there are ignored: never served, nothing to
        hide). Runs in the live poll's worker thread while requests are answered (on the loop and in threads),
        so nothing a reader indexes may be shorter than what it is told exists: new items' ids, titles and
        popularity are assigned first (read only for positions a search returned), then the vectors are
        added (the index may return the new positions from here on), then `n_items` and last the id ->
        position map (what lets a request name a new item). `InnerProductIndex` swaps views and locks faiss.
        `unchanged`: known item -> title, PUT again with the text it has (its vector stands): retitled and, when
        retired, restored. Returns counts: added, updated, retired, unchanged."""
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(item_ids), self.index.catalogue.shape[1])
        known = [n for n, item in enumerate(item_ids) if item in self._item_position]
        fresh = [n for n, item in enumerate(item_ids) if item not in self._item_position]
        if known:
            positions = np.array([self._item_position[item_ids[n]] for n in known], dtype=np.int64)
            self.index.replace(positions, vectors[known])
            self.index.show(positions)
            for n, position in zip(known, positions):
                self.titles[position] = titles[n]
            self._set_texts(positions.tolist(), [texts[n] for n in known])
        if fresh:
            n = len(self.index.catalogue)
            assert n == self._n_items  # one applier at a time (the live poll); the index grows only here
            popularity = np.concatenate([self.popularity, np.zeros(len(fresh), dtype=np.float32)])
            item_id_array = np.concatenate([self.item_ids, np.array([item_ids[f] for f in fresh], dtype=object)])
            title_array = np.concatenate([self.titles, np.array([titles[f] for f in fresh], dtype=object)])
            self.popularity, self.titles, self.item_ids = popularity, title_array, item_id_array
            self._set_texts(list(range(n, n + len(fresh))), [texts[f] for f in fresh])
            positions = self.index.add(vectors[fresh])  # searches may return them now: their ids are there
            self._catalogue_t = torch.from_numpy(self.index.catalogue)
            self.live_changed = True
            self._n_items = n + len(fresh)  # pools (`_live_pool`) range over them now: every array covers them
            for f, position in zip(fresh, positions):
                self._item_position[item_ids[f]] = int(position)  # last: a request may name the id once whole
        if unchanged:
            same = np.array([self._item_position[item] for item in unchanged], dtype=np.int64)
            for position, title in zip(same, unchanged.values()):
                self.titles[position] = title
            self.index.show(same)
        gone = np.array([self._item_position[i] for i in retired if i in self._item_position], dtype=np.int64)
        if len(gone):
            self.index.hide(gone)
        if known:
            self.live_changed = True
            self._catalogue_t = torch.from_numpy(self.index.catalogue)
        return {"added": len(fresh), "updated": len(known), "retired": len(gone), "unchanged": len(unchanged or {})}

    def _set_texts(self, positions: list[int], texts: list[str]) -> None:
        """A text user tower reads the texts of a history's items: keep its list in step with the catalogue."""
        owners = [self.compiled.inputs] if self.compiled is not None else []
        if self.model is not None:
            owners.append(self.model.items)
        for owner in owners:
            table = owner.item_texts
            for position, text in zip(positions, texts):
                if position < len(table):
                    table[position] = text
                else:
                    table.append(text)

    def _scores(self, vector: np.ndarray, user: int | None, items: np.ndarray) -> np.ndarray:
        if self.task == "ranking":
            return self.index.catalogue[items] @ vector  # [I, D] @ [D] -> [I]
        head = self.head
        assert isinstance(head, PointwiseHead)  # every task but ranking scores pairs through one
        with torch.inference_mode():
            user_vector = torch.from_numpy(np.ascontiguousarray(vector, dtype=np.float32))  # [D]
            offset = None
            if user is not None and self.model is not None:  # None: a compiled tower serves (no per-user part)
                offset = self.model.user_offset(torch.tensor([user]))
            if offset is not None:
                user_vector = user_vector + offset[0]
            out = [_pointwise(head, user_vector, self._catalogue_t[torch.from_numpy(items[s:s + _PAIR_CHUNK])],
                              user) for s in range(0, len(items), _PAIR_CHUNK)]
        return np.concatenate(out) if out else np.empty(0, dtype=np.float32)

    # --- reports -----------------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What `GET /v1/model` shows for this version."""
        spec, metrics = self.artifact.spec, self.artifact.metrics
        return {
            "version": self.version,
            "task": self.task,
            "score": SCORE_KINDS[self.task],
            "encoders": [{"name": e.name, "source": e.source, "pooling": e.pooling, "max_length": e.max_length}
                         for e in spec.encoders],
            "fusion": {"method": spec.fusion.method, "dim": spec.fusion.dim,
                       "weights": metrics.get("fusion_weights")},
            "user_tower": self.user_tower,
            "user_tower_backend": (f"{self.compiled.backend} {self.compiled.precision}" if self.compiled is not None
                                   else "torch"),
            "items": self.n_items,
            "users": len(self._histories),
            "metrics": metrics.get("test"),
            "topk_backend": self.index.backend,
            "topk_recall@10": (self.index_record or {}).get("recall@10") if self.index.approximate else 1.0,
        }


def _stored_index_record(artifact: Artifact) -> dict[str, Any] | None:
    """compile.json's entry for an approximate item index, or None (not compiled, or exact search)."""
    from fusionrec.compile.runtime import COMPILE_RECORD, read_record

    if artifact.file(COMPILE_RECORD) is None:
        return None
    entry = read_record(artifact).get("index")
    return entry if isinstance(entry, dict) and entry.get("kind") not in (None, "exact") else None


def _load_stored_index(artifact: Artifact, entry: dict[str, Any], shape: tuple[int, ...]) -> Approximate:
    """The approximate index compile.json names, from the verified artifact (its sha256 checked on load), which
    must hold this catalogue's [N, D] vectors."""
    path = artifact.file(str(entry.get("file")))
    if path is None:
        raise UserError(f"artifact {artifact.path}: compile.json names a {entry['kind']} item index "
                        f"{entry.get('file')!r} that the artifact does not hold", field="compile.json.index.file",
                        fix=f"compile the artifact again (fusionrec compile {artifact.path})")
    approximate = load_index(path, entry["kind"], entry.get("params", {}))
    if (approximate.index.ntotal, approximate.index.d) != tuple(shape):
        raise UserError(f"artifact {artifact.path}: {path.name} holds {approximate.index.ntotal} vectors of "
                        f"{approximate.index.d} dims, item_index.npy {tuple(shape)}: it was built for another "
                        "catalogue", field=path.name,
                        fix=f"compile the artifact again (fusionrec compile {artifact.path})")
    log.info("%s: top-k on a %s index (recall@10 %s against exact)", artifact.version, entry["kind"],
             entry.get("recall@10"))
    return approximate


def _compiled_user_tower(artifact: Artifact, model: FusedRecommender) -> Any | None:
    """The compiled user graph when the artifact has one that computes what `user_vectors` promises (the
    history alone: a graph that also takes a user index folds the ID embedding in, so torch runs instead).
    The torch backend builds its graph on `model`'s own modules rather than loading the weights again."""
    from fusionrec.compile.runtime import COMPILE_RECORD, load_compiled, read_record

    if artifact.file(COMPILE_RECORD) is None:
        return None
    if model.knows_users:  # checked before loading: the torch backend would prune and cast `model` in place
        log.info("%s: the compiled user graph includes user IDs; serving its torch user tower", artifact.version)
        return None
    # compile.threads 0 means "all cores"; a replica owns only the CPUs Ray gave it, which torch already knows.
    threads = int(read_record(artifact).get("threads") or 0) or torch.get_num_threads()
    runtime = load_compiled(artifact, "user", threads=threads, model=model)
    log.info("%s: user tower on %s %s", artifact.version, runtime.backend, runtime.precision)
    return runtime


# --- adapters over FusedRecommender ---------------------------------------------------------------------------


def _user_tower(model: FusedRecommender, histories: list[np.ndarray],
                catalogue: torch.Tensor | None = None) -> torch.Tensor:
    """[B] histories -> [B, D]: the user tower alone, over the model's cached catalogue table, or over
    `catalogue` [N', D] once live items changed it (new items past the model's own N, new texts). The
    sequence and pooled towers then read rows of it as the compiled graph does (`SequenceTowerGraph`); the
    text tower reads the item texts, which `apply_items` keeps current."""
    if catalogue is None:
        return model.user_vectors(histories)
    recent = [np.asarray(h, dtype=np.int64)[-model.config.history_length:] for h in histories]
    if isinstance(model.user_tower, TextUserTower):
        return model.user_tower(model.items, [r.tolist() for r in recent])
    pad = len(catalogue)
    history = left_pad(recent, pad)  # [B, L]
    vectors = torch.cat([catalogue, catalogue.new_zeros(1, catalogue.shape[1])])[history]  # [B, L, D]
    if model.feedback is not None:  # serving knows no past labels: the "unknown" one, as user_vectors adds it
        vectors = vectors + model.feedback.weight[UNKNOWN_FEEDBACK]
    return model.user_tower(vectors, history != pad)


def _pointwise(head: PointwiseHead, user: torch.Tensor, items: torch.Tensor, user_index: int | None) -> np.ndarray:
    """A pointwise head's output for one user [D] against items [I, D]; an unknown user gets no user bias."""
    users = user.unsqueeze(0).expand(len(items), -1)  # [D] -> [I, D]
    index = torch.full((len(items),), 0 if user_index is None else user_index, dtype=torch.long)
    raw = head.score(users, items, index)  # [I]
    if user_index is None:
        raw = raw - head.user_bias.weight[0, 0]  # take user 0's bias back out: unknown users have none
    return head.link(raw).float().numpy()
