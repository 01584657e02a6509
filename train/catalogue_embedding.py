"""Catalogue embedding on Ray Data: every item's text through every frozen LM of a spec, as one resumable job.

Why a job of its own: a frozen encoder embeds the catalogue once (`TextEncoder.pooled_texts`), in the process
that builds the model, on that process's threads; on a cluster every Ray Train rank did the same work again, and
a long run killed half-way had nothing to show for it. Here the catalogue is split into shards and each LM gets
a pool of Ray Data actors (`map_batches` with an `ActorPoolStrategy`), each loading its LM once: one GPU per
actor where the cluster has GPUs, else CPU actors whose torch threads add up to the cluster's cores.

Same vectors as the in-process path: the shards are cut along the order that path batches in (longest text
first, `fusionrec.model.encoders.longest_first`) at multiples of its batch size (`TEXT_BATCH_SIZE`), so every
actor runs exactly the LM batches `pooled_texts` would have run, with the same padding.

Resumable: a finished shard is published through `fusionrec.storage.publish_folder` (local path, s3:// or
gs://: vectors.npy and rows.npy, a sha256 MANIFEST.json, the PUBLISHED marker written last), so a shard either
exists whole or not at all. A run lists what is published and embeds only the rest: a killed job loses only the
shards that were in flight. Shards live under the embedding cache's own key (weights, pooling, max_length and
every text), so a changed model or catalogue never reuses another's shards:

    <output>/<encoder>-<key>/items-<start>-<stop>/{vectors.npy, rows.npy, MANIFEST.json, PUBLISHED}

(start and stop count positions in the longest-first order; rows.npy holds the catalogue index of each row.)

Same cache: the shards are then read back (each checked against its manifest), put in catalogue order and
written as the .npy file `pooled_texts` reads (`TextEncoder.cache_path`, `encoders.write_pooled`). Training, Ray
Train's ranks and `load_model` (serving, compile) then find the catalogue there: there is no other way to read it.

Used by `fusionrec embed manifest.yaml` and, for catalogues of `RAY_DATA_MIN_ITEMS` items or more, by the Ray
Train job (`fusionrec.train.distributed`) before its workers start, so its ranks do not each embed it again.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusionrec.errors import UserError
from fusionrec.model.encoders import TextEncoder, longest_first, write_pooled
from fusionrec.model.towers import TEXT_BATCH_SIZE
from fusionrec.progress import progress
from fusionrec.spec import EncoderSpec, FusionRecommenderSpec
from fusionrec.storage import fetch_folder, is_published, list_published, publish_folder, resolve

log = logging.getLogger(__name__)

SHARD_BATCHES = 8  # LM batches per shard: 512 items, about 20 s for a 135M-parameter LM on two CPU cores
DEFAULT_SHARD_SIZE = SHARD_BATCHES * TEXT_BATCH_SIZE
# Below this many items the training job leaves the catalogue to the in-process path: starting actors and
# loading the LM in each costs more than it saves.
RAY_DATA_MIN_ITEMS = 1000
VECTORS_NAME = "vectors.npy"
ROWS_NAME = "rows.npy"
CPU_THREADS_PER_WORKER = 1  # torch threads per CPU actor by default (bench/results/embed-ray-data.md)
SHARDS_FOLDER = "shards"  # under the embedding cache: the default output when none is given
# The projection is not part of a pooled row; the encoders built here only pool, so any output dim will do.
_POOL_ONLY_DIM = 1


@dataclass(frozen=True)
class Shard:
    """A fixed slice of the longest-first order: its published name and the catalogue index of each row."""

    name: str
    rows: np.ndarray  # [n] int64 catalogue indices, longest text first


@dataclass
class EncoderRun:
    """What the job did for one LM: shards embedded now (`computed`), shards found published (`reused`), or
    nothing at all when the embedding cache already held the catalogue (`cached`)."""

    encoder: str
    items: int
    shards: int
    cache_file: str
    shards_uri: str
    cached: bool = False
    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    items_computed: int = 0
    seconds: float = 0.0  # embedding (actors started, shards embedded and published), then assembling
    workers: int = 0
    threads: int = 0
    gpus_per_worker: int = 0

    @property
    def items_per_s(self) -> float:
        return self.items_computed / self.seconds if self.seconds > 0 else 0.0


@dataclass
class CatalogueEmbedding:
    """One run of the job: a row per frozen encoder; `skipped` names the fine-tuned ones (nothing to cache)."""

    items: int
    output: str
    cache_dir: str
    encoders: list[EncoderRun] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Workers:
    """The actor pool of one LM: how many actors, each with how many torch threads, CPUs and GPUs."""

    count: int
    threads: int
    cpus: float
    gpus: int


# --- the plan ----------------------------------------------------------------------------------------------------


def shard_plan(texts: Sequence[str], shard_size: int = DEFAULT_SHARD_SIZE) -> list[Shard]:
    """The catalogue's shards: consecutive `shard_size` rows of the longest-first order."""
    check_shard_size(shard_size)
    order = np.asarray(longest_first(list(texts)), dtype=np.int64)
    return [Shard(f"items-{start:07d}-{min(start + shard_size, len(order)):07d}", order[start:start + shard_size])
            for start in range(0, len(order), shard_size)]


def check_shard_size(shard_size: int) -> None:
    if shard_size < 1 or shard_size % TEXT_BATCH_SIZE:
        raise UserError(f"shard size {shard_size} is not a positive multiple of the LM batch size "
                        f"{TEXT_BATCH_SIZE}; other sizes would batch the texts differently than training does",
                        field="--shard-size", fix=f"use e.g. {DEFAULT_SHARD_SIZE}")


def plan_workers(resources: dict[str, float], requested: int | None = None,
                 node_cpus: Sequence[float] = ()) -> Workers:
    """One GPU per actor where the cluster has GPUs (as many actors as GPUs by default); else CPU actors whose
    torch threads together use every core (by default one actor per `CPU_THREADS_PER_WORKER` cores), as many
    threads each as still lets every actor fit on the nodes (`node_cpus`: each node's cores)."""
    if requested is not None and requested < 1:
        raise UserError(f"--workers must be at least 1, got {requested}", field="--workers")
    cpus = max(1, int(resources.get("CPU", 1)))
    gpus = int(resources.get("GPU", 0))
    if gpus:
        count = requested or gpus
        return Workers(count, threads=max(1, min(cpus // count, 4)), cpus=1, gpus=1)
    count = requested or max(1, cpus // CPU_THREADS_PER_WORKER)
    nodes = [int(n) for n in node_cpus if n >= 1] or [cpus]
    threads = max(1, cpus // count)
    while threads > 1 and sum(n // threads for n in nodes) < count:
        threads -= 1
    return Workers(count, threads=threads, cpus=threads, gpus=0)


# --- on each actor -----------------------------------------------------------------------------------------------


class ShardEmbedder:
    """A Ray Data actor: loads one LM once, then embeds and publishes whole shards (one row per shard)."""

    def __init__(self, spec: dict[str, Any], *, shards_uri: str, settings_key: str, threads: int, device: str,
                 model_cache_dir: str | None) -> None:
        os.environ["FUSIONREC_QUIET"] = "1"  # the driver reports progress per shard; no bar per actor
        torch.set_num_threads(threads)
        encoder_spec = EncoderSpec.model_validate(spec)
        self.encoder = TextEncoder(encoder_spec, _POOL_ONLY_DIM,
                                   model_cache_dir=Path(model_cache_dir) if model_cache_dir else None).eval()
        self.encoder.to(device)
        # Raised on the first shard, not here: Ray reports an error in an actor's constructor only as text.
        self.mismatch = None if self.encoder.catalogue_key([]) == settings_key else UserError(
            f"encoder {encoder_spec.name!r}: the model a Ray worker loaded from {encoder_spec.source!r} differs "
            "from the driver's (other weights or tokenizer); its rows would be cached under the driver's key",
            field=f"encoders[{encoder_spec.name}].source",
            fix="give every node the same model files (FUSIONREC_MODEL_HOME), or pin the source")
        self.root = resolve(shards_uri)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.mismatch is not None:
            raise self.mismatch
        names, items, seconds, computed = [], [], [], []
        for name, rows, texts in zip(batch["shard"], batch["rows"], batch["texts"], strict=True):
            started = time.perf_counter()
            name = str(name)
            done = is_published(self.root.child(name))
            if not done:
                self._embed_and_publish(name, np.asarray(rows, dtype=np.int64), [str(t) for t in texts])
            names.append(name)
            items.append(len(rows))
            seconds.append(time.perf_counter() - started)
            computed.append(not done)
        return {"shard": np.array(names), "items": np.array(items, dtype=np.int64),
                "seconds": np.array(seconds), "computed": np.array(computed)}

    def _embed_and_publish(self, name: str, rows: np.ndarray, texts: list[str]) -> None:
        pooled = self.encoder.pooled_texts(texts, TEXT_BATCH_SIZE).float().cpu().numpy()  # [n, H], as training
        with tempfile.TemporaryDirectory(prefix="fusionrec-shard-") as folder:
            np.save(Path(folder) / VECTORS_NAME, pooled, allow_pickle=False)
            np.save(Path(folder) / ROWS_NAME, rows, allow_pickle=False)
            try:
                publish_folder(folder, self.root.uri, name=name)
            except UserError:
                if not is_published(self.root.child(name)):  # a concurrent run got there first: same rows
                    raise


# --- the driver --------------------------------------------------------------------------------------------------


def catalogue_texts(spec: FusionRecommenderSpec) -> list[str]:
    """The item texts the spec's model encodes, in the order it encodes them (its split's item vocabulary)."""
    from fusionrec.data import load_dataset
    from fusionrec.model.fused_data import item_texts_in_order
    from fusionrec.protocol import make_split

    dataset = load_dataset(spec.data)
    split = make_split(dataset, spec.task.type, spec.data.order)
    return item_texts_in_order(dataset, split.vocab.item_ids)


def embed_spec(spec: FusionRecommenderSpec, *, cache_dir: str | Path, output: str | None = None,
               workers: int | None = None, shard_size: int = DEFAULT_SHARD_SIZE, address: str | None = None,
               model_cache_dir: Path | None = None) -> CatalogueEmbedding:
    """Embed the catalogue of a spec's data with each of its frozen encoders (see `embed_catalogue`)."""
    return embed_catalogue(spec.encoders, catalogue_texts(spec), cache_dir=cache_dir, output=output,
                           workers=workers, shard_size=shard_size, address=address, model_cache_dir=model_cache_dir)


def embed_before_training(spec: FusionRecommenderSpec, cache_dir: str | Path, *,
                          remote: bool) -> CatalogueEmbedding | None:
    """Each Ray Train rank builds the model and would embed the catalogue with every frozen encoder again, on
    its own threads; a catalogue of `RAY_DATA_MIN_ITEMS` items or more is embedded once here instead, on the
    whole local Ray, into the cache the ranks read. On a remote cluster the ranks' cache folder is not this
    machine's, so they are left to embed it themselves (run `fusionrec embed` there)."""
    if remote or not any(encoder.freeze for encoder in spec.encoders):
        return None
    texts = catalogue_texts(spec)
    if len(texts) < RAY_DATA_MIN_ITEMS:
        return None
    return embed_catalogue(spec.encoders, texts, cache_dir=cache_dir)


def embed_catalogue(encoders: Sequence[EncoderSpec], texts: Sequence[str], *, cache_dir: str | Path,
                    output: str | None = None, workers: int | None = None, shard_size: int = DEFAULT_SHARD_SIZE,
                    address: str | None = None, model_cache_dir: Path | None = None) -> CatalogueEmbedding:
    """Embed `texts` with every frozen encoder on Ray Data and store the rows in the embedding cache `cache_dir`.

    Ray is started (or joined) only when some LM has shards left to embed: a catalogue already cached, or whose
    shards are all published (by a run on another machine), is assembled here without it.

    Args:
        output: where shards are published (a folder, s3://bucket/prefix or gs://bucket/prefix); default
            `<cache_dir>/shards`. Another machine given the same output assembles the rows without embedding.
        workers: actors per LM (default: one per GPU, else one per core, see `plan_workers`).
        shard_size: items per shard, a multiple of the LM batch size.
        address: the Ray cluster (default: the Ray already initialised in this process, else `RAY_ADDRESS`,
            else a local Ray over this machine's cores).
    """
    texts = list(texts)
    if not texts:
        raise UserError("the catalogue has no items to embed", field="data")
    check_shard_size(shard_size)
    cache = Path(cache_dir).expanduser().absolute()
    root = output or str(cache / SHARDS_FOLDER)
    resolve(root)  # a bad URI or missing credentials fail here, before any model loads
    result = CatalogueEmbedding(items=len(texts), output=root, cache_dir=str(cache))
    result.skipped = [spec.name for spec in encoders if not spec.freeze]
    if result.skipped:
        log.info("not embedding %s: fine-tuned encoders have no catalogue cache", ", ".join(result.skipped))
    shards = shard_plan(texts, shard_size)
    todo: list[tuple[EncoderRun, _Keyed, list[Shard]]] = []
    for spec in encoders:
        if not spec.freeze:
            continue
        keyed = _keyed(spec, texts, cache, root, model_cache_dir)
        run = EncoderRun(spec.name, len(texts), len(shards), str(keyed.target), keyed.shards_uri)
        result.encoders.append(run)
        if _cached(keyed.target, len(texts), keyed.hidden):
            log.info("%s: the catalogue is already in the embedding cache (%s)", spec.name, keyed.target)
            run.cached = True
            continue
        published = set(list_published(keyed.shards_uri))
        run.reused = [shard.name for shard in shards if shard.name in published]
        todo.append((run, keyed, [shard for shard in shards if shard.name not in published]))
    if any(missing for _, _, missing in todo):
        _embed_on_ray([(run, keyed, missing) for run, keyed, missing in todo if missing], texts, workers, address,
                      model_cache_dir)
    for run, keyed, _ in todo:
        started = time.perf_counter()
        write_pooled(keyed.target, _assemble(shards, keyed.shards_uri, len(texts), keyed.hidden))
        run.seconds += time.perf_counter() - started
        log.info("%s: %d items in %s (%d shards embedded, %d reused, %.1f s)", run.encoder, len(texts),
                 keyed.target, len(run.computed), len(run.reused), run.seconds)
    return result


@dataclass(frozen=True)
class _Keyed:
    """What the driver needs of an LM, read off it once: its cache key and file, the key of its settings alone
    (which each actor checks its own load against), its hidden size and its shards' folder."""

    spec: EncoderSpec
    target: Path
    settings_key: str
    hidden: int
    shards_uri: str


def _keyed(spec: EncoderSpec, texts: list[str], cache: Path, root: str, model_cache_dir: Path | None) -> _Keyed:
    """Load the LM in the driver only to key its catalogue (the key hashes the weights), then let it go."""
    encoder = TextEncoder(spec, _POOL_ONLY_DIM, model_cache_dir=model_cache_dir, embedding_cache_dir=cache)
    target = encoder.cache_path(encoder.catalogue_key(texts))
    assert target is not None  # an embedding cache folder was given
    return _Keyed(spec, target, encoder.catalogue_key([]), encoder.hidden_size, resolve(root).child(target.stem).uri)


def _embed_on_ray(todo: list[tuple[EncoderRun, _Keyed, list[Shard]]], texts: list[str], workers: int | None,
                  address: str | None, model_cache_dir: Path | None) -> None:
    """Each LM's missing shards on its own actor pool, one LM after the other (each pool takes every core)."""
    from fusionrec.train.local_ray import ray_session

    with tempfile.TemporaryDirectory(prefix="fr-embed-") as run_dir, ray_session(address, run_dir) as connection:
        import ray

        node_cpus = [float(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node.get("Alive")]
        pool = plan_workers(connection.resources, workers, node_cpus)
        for run, keyed, missing in todo:
            run.workers, run.threads, run.gpus_per_worker = pool.count, pool.threads, pool.gpus
            log.info("%s: embedding %d of %d shards on %d worker(s) x %d thread(s)%s; %d already published in %s",
                     run.encoder, len(missing), run.shards, pool.count, pool.threads,
                     " + 1 GPU" if pool.gpus else "", len(run.reused), keyed.shards_uri)
            started = time.perf_counter()
            for row in _run_pool(keyed, texts, missing, pool, model_cache_dir):
                (run.computed if row["computed"] else run.reused).append(str(row["shard"]))
                run.items_computed += int(row["items"]) if row["computed"] else 0
            run.seconds += time.perf_counter() - started


def _cached(path: Path, rows: int, hidden: int) -> bool:
    """The cache file exists with the catalogue's shape (what `pooled_texts` would accept)."""
    if not path.is_file():
        return False
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    return bool(array.shape == (rows, hidden))


def _run_pool(keyed: _Keyed, texts: list[str], missing: list[Shard], pool: Workers,
              model_cache_dir: Path | None) -> list[dict[str, Any]]:
    """Embed and publish `missing` on an actor pool of `pool.count` actors; one result row per shard."""
    import ray.data

    items = [{"shard": shard.name, "rows": shard.rows.tolist(), "texts": [texts[i] for i in shard.rows]}
             for shard in missing]
    total = sum(len(shard.rows) for shard in missing)
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.print_on_execution_start, context.raise_original_map_exception
    # Ours counts items, in plain lines when there is no terminal; Ray's would draw per operator. An actor's
    # UserError reaches the driver as itself, not as Ray Data's UserCodeException.
    context.enable_progress_bars = context.print_on_execution_start = False
    context.raise_original_map_exception = True
    try:
        # One block per shard, so that the pool can hand each actor its own shard.
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            ShardEmbedder, batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(pool.count, len(items)), max_tasks_in_flight_per_actor=1),
            fn_constructor_kwargs={"spec": keyed.spec.model_dump(mode="json", by_alias=True),
                                   "shards_uri": keyed.shards_uri, "settings_key": keyed.settings_key,
                                   "threads": pool.threads,
                                   "device": "cuda" if pool.gpus else "cpu",
                                   "model_cache_dir": str(model_cache_dir) if model_cache_dir else None},
            num_cpus=pool.cpus, num_gpus=pool.gpus)
        rows: list[dict[str, Any]] = []
        desc = f"embedding items ({keyed.spec.name}, Ray Data)"
        with progress(desc=desc, total=total, unit="item", lines=True) as bar:
            for row in dataset.iter_rows():
                rows.append(row)
                bar.update(int(row["items"]))
    except Exception as exc:
        cause = _user_error(exc)
        if cause is None:
            raise
        raise cause from None
    finally:
        context.enable_progress_bars, context.print_on_execution_start, context.raise_original_map_exception = saved
    return rows


def _user_error(exc: BaseException) -> UserError | None:
    """The UserError an actor raised, if that is what failed: Ray hands it over wrapped (a RayTaskError that is
    also a UserError, holding the original as `cause`), whose text would repeat the worker's traceback."""
    seen: BaseException | None = exc
    while seen is not None:
        inner = getattr(seen, "cause", None)
        if isinstance(seen, UserError) and not isinstance(inner, UserError):
            return seen
        seen = inner if isinstance(inner, BaseException) else seen.__cause__
    return None


def _assemble(shards: list[Shard], shards_uri: str, n_items: int, hidden: int) -> np.ndarray:
    """[N, H] float32 in catalogue order, from every published shard (each checked against its manifest)."""
    pooled = np.empty((n_items, hidden), dtype=np.float32)
    seen = np.zeros(n_items, dtype=bool)
    with tempfile.TemporaryDirectory(prefix="fusionrec-shards-") as local:
        for shard in shards:
            folder = fetch_folder(f"{shards_uri}/{shard.name}", local)
            vectors = np.load(folder / VECTORS_NAME, allow_pickle=False)
            rows = np.load(folder / ROWS_NAME, allow_pickle=False)
            if not np.array_equal(rows, shard.rows) or vectors.shape != (len(rows), hidden):
                raise UserError(f"{shards_uri}/{shard.name} holds rows {vectors.shape} that are not this shard's "
                                f"{(len(shard.rows), hidden)}", field="--output",
                                fix=f"delete {shards_uri} and embed again")
            pooled[rows] = vectors
            seen[rows] = True
    if not seen.all():
        raise RuntimeError(f"{int((~seen).sum())} of {n_items} items are in no shard")  # the plan covers all
    return pooled


def describe(result: CatalogueEmbedding) -> str:
    """A few lines per LM for the terminal."""
    lines = [f"{result.items:,} items; shards in {result.output}; cache {result.cache_dir}"]
    for run in result.encoders:
        if run.cached:
            lines.append(f"{run.encoder}: already cached ({Path(run.cache_file).name})")
            continue
        rate = f", {run.items_per_s:.1f} items/s" if run.items_computed else ""
        lines.append(f"{run.encoder}: {len(run.computed)} shard(s) embedded, {len(run.reused)} reused, "
                     f"{run.seconds:.1f} s{rate} ({run.workers} worker(s) x {run.threads} thread(s)"
                     f"{', 1 GPU each' if run.gpus_per_worker else ''}) -> {Path(run.cache_file).name}")
    if result.skipped:
        lines.append(f"fine-tuned, not cached: {', '.join(result.skipped)}")
    return "\n".join(lines)
