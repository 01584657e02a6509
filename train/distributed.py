"""Fine-tuning under Ray Train: the pipeline's one fit loop, run by `TorchTrainer` on N workers.

Each worker builds the same model from the same seed and runs `fusionrec.train.loop.fit` with three hooks:
the loss module is wrapped by `ray.train.torch.prepare_model` (DDP; gloo on CPU, nccl on GPU), each epoch's
batches are sharded so every rank trains on its own share, and every epoch's metrics and checkpoint go to
`ray.train.report`. A restarted worker group (a lost worker, `FailureConfig.max_failures`) resumes from the
last reported checkpoint, which also carries the best epoch's weights.

The driver then downloads that checkpoint and lets `fusionrec.train.job.train_and_evaluate` resume from it:
no epoch is left, so it restores the best epoch's weights (the best checkpoint's), evaluates on test and
writes the versioned artifact with the full history. The artifact is written where the driver runs, so on
a multi-node cluster workers never need the output folder, only the data and `storage_path`. That call is also
where `evaluation.select: best` fits each encoder alone and picks what ships: once, in the driver, after the
worker group is gone, so no rank ever fits a single or writes, and DDP only ever sees the fused model.

Ctrl-C stops training: Ray Train's own SIGINT handler is kept out (`fusionrec.ray_compat.train_controllers`),
the controller (and with it every worker) is killed, the Ray this run started is shut down, and the
KeyboardInterrupt goes on to the caller before anything is written to the output folder.

An `--output` in object storage (s3://bucket/prefix, gs://bucket/prefix) is published, not written: the run
trains into a local staging folder (a temp folder under `work_dir`), writes the artifact there as for a local
output, then `fusionrec.storage.publish_folder` uploads it to `<output>/<version>/`, verifies it and writes the
PUBLISHED marker last, so a reader never sees half a version. Published versions are immutable: an existing one
is refused up front, --overwrite included.

A `training.storagePath` in object storage (s3://bucket/prefix, gs://...) is given to Ray Train with the pyarrow
filesystem `fusionrec.storage` resolves it to (`RunConfig.storage_filesystem`): checkpoints are written there with
the credentials and endpoint of the environment, like every other object, and a restarted worker group and the
driver restore from there, so on a multi-node cluster no node needs another's disk.

Everything that can be checked before training (spec, output and storage folders, GPUs, the cluster
address, credentials and bucket of an object-storage output) is checked first, so bad input fails in seconds
with a `UserError`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
from ray.train.torch import TorchConfig, TorchTrainer

from fusionrec.artifact import load_artifact
from fusionrec.data import load_dataset
from fusionrec.errors import UserError
from fusionrec.metrics import parse_metric
from fusionrec.model.fused import FusedRecommender
from fusionrec.model.saved import embedding_cache_dir
from fusionrec.model.sources import resolve_source
from fusionrec.protocol import make_split, seed_everything
from fusionrec.ray_compat import stop_actors, train_controllers
from fusionrec.spec import FusionRecommenderSpec, Manifest, TrainingSpec, load_manifest
from fusionrec.storage import MANIFEST_NAME, Location, StorageError, is_published, is_remote, publish_folder, resolve
from fusionrec.train.candidates import NEEDS
from fusionrec.train.catalogue_embedding import embed_before_training
from fusionrec.train.checkpoint import LATEST
from fusionrec.train.job import train_and_evaluate
from fusionrec.train.local_ray import check_reachable, ray_session, requested_address
from fusionrec.train.loop import EpochReport, FitHooks, fit, selection_metric

log = logging.getLogger(__name__)

TRAINING_FOLDER = "_training"  # under the output root; not a version (no MANIFEST.json), so never listed


# Called on each worker before each batch it trains on, with (rank, epoch, samples it has taken this epoch): the
# seam for chaos drills (a test kills one rank once) and per-batch probes, so none of them lives in this module.
# It travels to the workers pickled by value with the rest of the trainer's config.
BatchHook = Callable[[int, int, int], None]


@dataclass(frozen=True)
class RunPlan:
    """What preflight settled: where checkpoints go, this run's name and its local folder. With an object-storage
    output, `output_root` is the local staging folder the artifact is written to, `publish_to` the URI it is
    published under, and `staging` whether that folder is a temporary one of this run (deleted once published)."""

    spec: FusionRecommenderSpec
    name: str
    output_root: Path
    storage_path: str
    run_dir: Path
    publish_to: str | None = None
    staging: bool = False


@dataclass
class DistributedResult:
    """The written artifact (its local folder; with an object-storage output, the published version's URI, also
    in `published`, once the local staging copy is gone), its test metrics and history (from metrics.json), the
    Ray checkpoint that was selected, and the last epoch's reported metrics (throughput, world size,
    `resumed_after`...). When `evaluation.select: best` shipped an encoder alone, `shipped` names it and there is
    no Ray checkpoint of it (the checkpoints are the fused model's): everything else describes the shipped model."""

    artifact: Path | str
    test: dict[str, float]
    history: list[dict[str, float]]
    best_epoch: int
    best_checkpoint: str | None
    last_metrics: dict[str, Any] = field(default_factory=dict)
    shipped: str | None = None
    published: str | None = None


# --- preflight --------------------------------------------------------------------------------------------


def _check_writable(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise UserError(f"{what} {str(folder)!r} is not writable: {exc}", field=what,
                        fix="choose a folder this user can create and write") from None


def storage_location(training: TrainingSpec, output_root: Path) -> str:
    """`training.storagePath` as the plan records it: a URI in object storage (s3://, gs://) must resolve
    (credentials in the environment) and its bucket exist; a local path (or file://) must be writable; unset,
    `<output>/_training`."""
    configured = training.storage_path
    if configured and is_remote(configured):
        _reachable_bucket(configured, "spec.training.storagePath")
        return configured.rstrip("/")
    local = Path(configured.removeprefix("file://")) if configured else output_root / TRAINING_FOLDER
    local = local.expanduser().resolve()
    _check_writable(local, "training.storagePath")
    return str(local)


def ray_storage(storage_path: str) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for Ray Train's RunConfig. A URI becomes its path on the pyarrow
    filesystem `fusionrec.storage` resolves it to, so checkpoints are written and restored with the same
    credentials and endpoint (AWS_ENDPOINT_URL_S3...) as every other object, read from the environment; Ray's own
    resolution would miss the endpoint. A local folder passes as it is, with no filesystem (Ray's default)."""
    if not is_remote(storage_path):
        return storage_path, None
    location = resolve(storage_path)
    return location.path, location.filesystem


def _reachable_bucket(uri: str, field: str) -> Location:
    """`uri` resolved, once its bucket is known to exist: a UserError naming `field` otherwise."""
    from pyarrow import fs as pafs

    try:
        root = resolve(uri)
    except UserError as exc:  # the URI is not repeated: resolve refuses one holding a secret
        raise UserError(exc.message, field=field, fix=exc.fix) from None
    bucket = root.path.split("/", 1)[0]
    try:
        missing = root.filesystem.get_file_info(bucket).type == pafs.FileType.NotFound
    except OSError as exc:  # get_file_info outside storage's own error wrapping
        raise UserError(f"{field} {uri}: cannot reach bucket {bucket!r}: {type(exc).__name__}", field=field,
                        fix="check the endpoint (AWS_ENDPOINT_URL_S3), credentials and bucket") from None
    if missing:
        raise UserError(f"{field} {uri}: bucket {bucket!r} does not exist (or these credentials cannot see it)",
                        field=field, fix="create the bucket first, or correct the URI")
    return root


def check_gpus(training: TrainingSpec, *, remote: bool) -> None:
    """GPUs asked of a machine without them fail here, not as a trainer pending forever."""
    needed = math.ceil(training.workers * training.gpus_per_worker)
    if needed == 0 or remote:
        return

    available = torch.cuda.device_count()
    if available < needed:
        raise UserError(f"{training.workers} workers x {training.gpus_per_worker} GPUs need {needed} GPUs but this "
                        f"machine has {available}", field="training.gpusPerWorker",
                        fix="set training.gpusPerWorker: 0 to train on CPUs, or pass --address of a GPU cluster")


def object_storage_output(output_root: str | Path) -> str | None:
    """The output as a URI when it is in object storage (any `scheme://` but file://: `fusionrec.storage`
    refuses the schemes it does not know), else None: a local folder, written in place."""
    text = os.fspath(output_root)
    return text.rstrip("/") if "://" in text and not text.startswith("file://") else None


def local_output(output_root: str | Path) -> Path:
    """A local output folder (a path or file:///path) as an absolute path."""
    text = os.fspath(output_root)
    return Path(text.removeprefix("file://") if text.startswith("file://") else text).expanduser().resolve()


def check_publishable(uri: str, version: str) -> None:
    """Before training: the URI resolves (scheme, credentials in the environment), its bucket exists and the
    version is not published yet (published versions are immutable, so --overwrite cannot replace one)."""
    root = _reachable_bucket(uri, "--output")
    try:
        published = is_published(root.child(version))
    except StorageError as exc:
        raise UserError(f"--output {uri}: {exc}", field="--output",
                        fix="check the endpoint (AWS_ENDPOINT_URL_S3), credentials and bucket") from None
    if published:
        raise UserError(f"version {version!r} is already published at {uri}/{version}; published versions are "
                        "immutable", field="spec.version", fix="bump spec.version")


def preflight(manifest: Manifest | str | Path, output_root: str | Path, *, address: str | None = None,
              overwrite: bool = False, work_dir: str | Path | None = None) -> RunPlan:
    """Every check that needs no cluster: spec, output folder, existing version, storage, GPUs, address.

    An object-storage output (s3://, gs://) is checked for credentials, bucket and an already published version,
    and the run's local staging folder is made: a temp folder under `work_dir` (default: the system's temp
    folder)."""

    document = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    spec = document.spec
    publish_to = object_storage_output(output_root)
    if publish_to is not None:
        check_publishable(publish_to, spec.version)
        parent = local_output(work_dir) if work_dir is not None else None
        if parent is not None:
            _check_writable(parent, "--work-dir")
        root = Path(tempfile.mkdtemp(prefix=f"fusionrec-stage-{spec.version}-", dir=parent)).resolve()
        try:
            return _plan(document, root, address=address, overwrite=overwrite, publish_to=publish_to)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
    return _plan(document, local_output(output_root), address=address, overwrite=overwrite, publish_to=None)


def _plan(document: Manifest, root: Path, *, address: str | None, overwrite: bool,
          publish_to: str | None) -> RunPlan:
    spec = document.spec
    _check_writable(root, "--output")
    if (root / spec.version).exists() and not overwrite:
        raise UserError(f"version {spec.version!r} already exists at {root / spec.version}", field="spec.version",
                        fix="bump spec.version, or pass --overwrite")
    storage = storage_location(spec.training, root)
    target = requested_address(address)
    check_gpus(spec.training, remote=target is not None)
    if target is not None:
        check_reachable(target)
    # Unique per invocation: Ray Train V2 resumes a run whose name it finds in storage.
    name = f"{document.metadata.name}-{spec.version}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run_dir = root / TRAINING_FOLDER / name
    _check_writable(run_dir, "--output")
    if publish_to is not None and target is not None and "://" not in storage:
        log.warning("checkpoints go to %s on the driver; on a multi-node cluster set training.storagePath to "
                    "shared storage (s3://...)", storage)
    return RunPlan(spec, name, root, storage, run_dir, publish_to=publish_to, staging=publish_to is not None)


def check_inputs(spec: FusionRecommenderSpec, *, remote: bool) -> None:
    """Read the data (a bad row is a DataError now, not on every worker after Ray started) and, for a local
    run, resolve every encoder's source once, so workers do not race to unpack the same packaged model.
    On a cluster the sources are left to the workers: a pvc:// claim may be mounted only there."""

    make_split(load_dataset(spec.data), spec.task.type, spec.data.order)
    if not remote:

        for encoder in spec.encoders:
            resolve_source(encoder.source)


# --- the trainer ------------------------------------------------------------------------------------------


def selection(spec: FusionRecommenderSpec) -> tuple[str, str]:
    """(reported metric key, "max" | "min") by which the best checkpoint is kept."""

    metric = selection_metric(spec.training, NEEDS[spec.task.type])
    return f"valid_{metric}", "max" if parse_metric(metric)[0].higher_is_better else "min"


def build_trainer(plan: RunPlan, worker_config: dict[str, Any]) -> Any:
    """TorchTrainer from the spec: one worker per DDP rank, GPUs when asked, best + latest checkpoints kept."""

    training = plan.spec.training
    use_gpu = training.gpus_per_worker > 0
    resources = {"CPU": training.cpus_per_worker, **({"GPU": training.gpus_per_worker} if use_gpu else {})}
    metric, order = selection(plan.spec)
    storage_path, filesystem = ray_storage(plan.storage_path)
    return TorchTrainer(
        train_worker, train_loop_config=worker_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=training.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=plan.name, storage_path=storage_path, storage_filesystem=filesystem,
            # The latest checkpoint is always kept besides the best one: restarts resume from it.
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=metric,
                                               checkpoint_score_order=order),
            failure_config=FailureConfig(max_failures=training.max_failures)))


def _cluster_fits(training: TrainingSpec, resources: dict[str, float]) -> None:
    need = {"CPU": training.workers * training.cpus_per_worker, "GPU": training.workers * training.gpus_per_worker}
    for kind, amount in need.items():
        if amount > resources.get(kind, 0.0) + 1e-9:
            log.warning("the run needs %g %s but the cluster has %g now; it waits for the autoscaler", amount,
                        kind, resources.get(kind, 0.0))


def _worker_failure(exc: BaseException) -> UserError | None:
    """The UserError a worker raised (bad data, a diverging loss), if that is why training failed."""
    failures = getattr(exc, "worker_failures", None) or {}
    for failure in failures.values():
        seen: BaseException | None = failure
        while seen is not None:
            if isinstance(seen, UserError):
                return seen
            # Ray Train V2 wraps it (UserExceptionWithTraceback._base_exc); Ray core uses .cause
            seen = getattr(seen, "_base_exc", None) or getattr(seen, "cause", None) or seen.__cause__
    return None


def train_distributed(manifest: Manifest | str | Path, output_root: str | Path, *, address: str | None = None,
                      overwrite: bool = False, embeddings: Path | None = None, dashboard: bool = False,
                      verify_sync: bool = False, before_batch: BatchHook | None = None,
                      work_dir: str | Path | None = None) -> DistributedResult:
    """Fine-tune the manifest's model under Ray Train and write `<output_root>/<spec.version>/`; an
    `output_root` in object storage (s3://, gs://) gets the version published there instead (see the module).

    Args:
        address: a Ray cluster (host:port, ray://..., auto); None uses `RAY_ADDRESS`, else a local Ray.
        embeddings: frozen encoders' embedding cache (default: `fusionrec.model.saved.embedding_cache_dir`).
        verify_sync: every epoch, compare a digest of each rank's weights (reported as `ranks_in_sync`).
        before_batch: run on every worker before each of its batches (see `BatchHook`).
        work_dir: with an object-storage output, where the local staging folder is made (default: the system's
            temp folder); that folder is deleted once the version is published, or when the run fails.
    """

    plan = preflight(manifest, output_root, address=address, overwrite=overwrite, work_dir=work_dir)
    keep = False
    try:
        return _train_planned(plan, address=address, overwrite=overwrite, embeddings=embeddings,
                              dashboard=dashboard, verify_sync=verify_sync, before_batch=before_batch)
    except StorageError:
        # Trained and written, but the upload failed: the local copy is all there is of this training.
        artifact = plan.output_root / plan.spec.version
        keep = plan.staging and (artifact / MANIFEST_NAME).is_file()
        if keep:
            log.error("publishing failed; the trained version stays at %s (publish it with "
                      "fusionrec.storage.publish_folder, or delete it)", artifact)
        raise
    finally:
        if plan.staging and not keep:
            shutil.rmtree(plan.output_root, ignore_errors=True)


def _train_planned(plan: RunPlan, *, address: str | None, overwrite: bool, embeddings: Path | None,
                   dashboard: bool, verify_sync: bool, before_batch: BatchHook | None) -> DistributedResult:
    check_inputs(plan.spec, remote=requested_address(address) is not None)
    training = plan.spec.training
    cache = Path(embeddings or embedding_cache_dir()).expanduser().resolve()
    config = {"spec": plan.spec.model_dump(mode="json", by_alias=True), "embeddings": str(cache),
              "verify_sync": verify_sync, "before_batch": before_batch}
    local_cpus = max(os.cpu_count() or 1, math.ceil(training.workers * training.cpus_per_worker))
    with ray_session(address, plan.run_dir, num_cpus=local_cpus, dashboard=dashboard) as connection:
        _cluster_fits(training, connection.resources)
        # a big catalogue once on Ray Data, not once per rank (fusionrec.train.catalogue_embedding)
        embed_before_training(plan.spec, cache, remote=requested_address(address) is not None)
        log.info("training %s on %d worker(s), checkpoints in %s/%s", plan.spec.version, training.workers,
                 plan.storage_path, plan.name)
        with train_controllers() as controllers:
            try:
                result = build_trainer(plan, config).fit()
            except KeyboardInterrupt:
                log.info("interrupted: stopping the training of %s", plan.spec.version)
                stop_actors(controllers)
                raise
            except TrainingFailedError as exc:
                cause = _worker_failure(exc)
                if cause is not None:
                    raise cause from None
                raise RuntimeError(f"training failed after {training.max_failures} restart(s): {exc}") from exc
    if result.checkpoint is None:
        raise RuntimeError(f"training of {plan.spec.version} reported no checkpoint")
    final = plan.run_dir / "final"
    shutil.rmtree(final, ignore_errors=True)
    result.checkpoint.to_directory(str(final / LATEST))
    artifact = train_and_evaluate(plan.spec, plan.output_root, overwrite=overwrite, checkpoint_dir=final,
                                  resume=True, embeddings=cache)
    metrics = load_artifact(artifact).metrics
    metric, order = selection(plan.spec)
    ranked = sorted(result.best_checkpoints, key=lambda pair: pair[1].get(metric, math.nan),
                    reverse=order == "max")
    chosen = metrics.get("selection") or {}
    single = chosen.get("shipped_group") == "single"
    published = None
    if plan.publish_to is not None:
        log.info("publishing %s to %s", plan.spec.version, plan.publish_to)
        try:
            published = publish_folder(artifact, plan.publish_to, name=plan.spec.version)
        except StorageError as exc:
            raise StorageError(f"publishing {plan.spec.version} to {plan.publish_to} failed: {exc}",
                               not_found=exc.not_found) from None
    return DistributedResult(artifact=published or artifact, test=metrics["test"], history=metrics["history"],
                             best_epoch=metrics["best_epoch"],
                             best_checkpoint=_kept(plan, ranked[0][0].path) if ranked and not single else None,
                             last_metrics=dict(result.metrics or {}), shipped=chosen.get("shipped"),
                             published=published)


def _kept(plan: RunPlan, checkpoint: str) -> str | None:
    """A checkpoint's path (its URI in object storage: Ray reports the path on the filesystem), unless it is
    inside the staging folder that is deleted once the run is published."""
    if is_remote(plan.storage_path):
        return f"{plan.storage_path.split('://', 1)[0]}://{checkpoint.lstrip('/')}"
    inside = plan.staging and "://" not in checkpoint and Path(checkpoint).resolve().is_relative_to(plan.output_root)
    return None if inside else checkpoint


# --- on each worker ---------------------------------------------------------------------------------------


class _Shard:
    """Every `world`-th batch from `rank` on; the last round is completed with the epoch's first batches (as
    torch's DistributedSampler pads), so every rank takes the same number of steps: a rank with one step
    fewer would leave the others waiting in DDP's all-reduce for ever. Counts samples and training time."""

    def __init__(self, rank: int, world: int, before_batch: BatchHook | None = None) -> None:
        self.rank, self.world, self.before_batch = rank, world, before_batch
        self.samples, self.seconds = 0, 0.0

    def __call__(self, batches: Iterable[Any], epoch: int) -> Iterator[Any]:
        started = time.perf_counter()
        self.samples = 0
        head: list[Any] = []
        count = 0
        for index, batch in enumerate(batches):
            count = index + 1
            if index < self.world:
                head.append(batch)
            if index % self.world == self.rank:
                yield self._counted(batch, epoch)
        for position in range(count, count + (-count) % self.world):  # pad the last round
            if position % self.world == self.rank:
                yield self._counted(head[(position - count) % len(head)], epoch)
        self.seconds = time.perf_counter() - started

    def _counted(self, batch: Any, epoch: int) -> Any:
        if self.before_batch is not None:
            self.before_batch(self.rank, epoch, self.samples)
        self.samples += len(next(iter(batch.values())))
        return batch


def _weights_digest(model: Any) -> str:

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _restore(checkpoint: Any, root: Path) -> int:
    """Download Ray's checkpoint into the loop's `<root>/latest`; returns the epoch it was taken after."""

    if checkpoint is None:
        return 0
    checkpoint.to_directory(str(root / LATEST))
    name = Path(checkpoint.path).name  # epoch-0003
    return int(name.rsplit("-", 1)[-1]) if name.rsplit("-", 1)[-1].isdigit() else -1


def train_worker(config: dict[str, Any]) -> None:
    """One rank: build, restore, fit with DDP and sharded batches, report every epoch."""


    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    # Ray Train routes print() and logging to its own handlers; rank 0 speaks for the group.
    logging.getLogger("fusionrec").setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logging.getLogger("fusionrec.train.loop").setLevel(logging.WARNING)  # the epoch line is printed below
    spec = FusionRecommenderSpec.model_validate(config["spec"])
    seed_everything(spec.training.seed)  # every rank starts from the same weights (DDP also broadcasts rank 0's)
    dataset = load_dataset(spec.data)
    split = make_split(dataset, spec.task.type, spec.data.order)
    model = FusedRecommender.from_spec(spec, dataset, split, embedding_cache_dir=Path(config["embeddings"]))
    device = ray.train.torch.get_device()
    root = Path(tempfile.mkdtemp(prefix=f"fusionrec-rank{rank}-"))
    resumed_after = _restore(ray.train.get_checkpoint(), root)
    if rank == 0 and resumed_after:
        print(f"resuming from the checkpoint of epoch {resumed_after}", flush=True)
    shard = _Shard(rank, world, config.get("before_batch"))
    metric, _ = selection(spec)

    def reduce(values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def on_epoch_end(report: EpochReport) -> None:
        loss_sum, samples = reduce([report.metrics["loss"] * shard.samples, float(shard.samples)])
        seconds = max(reduce([shard.seconds])[0] / world, 1e-9)
        metrics = {**report.metrics, "loss": loss_sum / max(samples, 1.0), "samples": int(samples),
                   "samples_per_s": samples / seconds, "train_seconds": seconds, "world_size": world,
                   "resumed_after": resumed_after, "improved": int(report.improved),
                   "threads": torch.get_num_threads()}
        if config["verify_sync"]:
            digests: list[str | None] = [None] * world
            dist.all_gather_object(digests, _weights_digest(model))
            metrics["ranks_in_sync"] = int(len(set(digests)) == 1)
        checkpoint = None
        if rank == 0 and report.checkpoint_dir is not None:
            checkpoint = ray.train.Checkpoint.from_directory(str(report.checkpoint_dir))
            print(f"epoch {report.epoch}/{spec.training.epochs} loss {metrics['loss']:.4f} "
                  f"{metric.removeprefix('valid_')} "
                  f"{metrics.get(metric, math.nan):.4f}{' *' if report.improved else ''} "
                  f"{metrics['samples_per_s']:.0f} samples/s x{world} {seconds:.1f}s", flush=True)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"epoch-{report.epoch:04d}")

    hooks = FitHooks(on_epoch_end=on_epoch_end, wrap_model=ray.train.torch.prepare_model, wrap_batches=shard)
    try:
        fit(model, split, spec.training, device=device, hooks=hooks, checkpoint_dir=root, resume=resumed_after != 0)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- the summary ------------------------------------------------------------------------------------------


def summary_table(result: DistributedResult) -> str:
    """Per-epoch loss and validation metrics, then the test metrics of the selected epoch."""
    valid_keys = sorted({key for row in result.history for key in row if key.startswith("valid_")})
    header = ["epoch", "loss", *[key.removeprefix("valid_") for key in valid_keys], "elapsed_s"]
    rows = [[f"{int(row['epoch'])}{'*' if int(row['epoch']) == result.best_epoch else ''}", f"{row['loss']:.4f}",
             *[f"{row[key]:.4f}" if key in row else "-" for key in valid_keys], f"{row.get('seconds', 0.0):.1f}"]
            for row in result.history]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    test = ", ".join(f"{key} {value:.4f}" for key, value in result.test.items())
    lines += [f"* best epoch {result.best_epoch} (validation); test: {test}",
              f"{'published' if result.published else 'artifact'}: {result.artifact}"]
    if result.shipped:
        lines.append(f"shipped: {result.shipped} (evaluation.select: best)")
    return "\n".join(lines)
