"""The steps that build a model version: prepare the data, merge (when the spec asks), train, compile.

Each computes its key from the spec parts it reads and its inputs' hashes (see `fusionrec.runner.cache`)
and goes through `run_step`, which skips it when a record of that key still describes what is on disk.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusionrec.artifact import ANN_INDEX_NAME, SPEC_NAME, write_artifact
from fusionrec.errors import UserError
from fusionrec.runner.cache import STATE_DIR, Record, step_key
from fusionrec.runner.inputs import (
    data_files,
    data_fingerprint,
    source_fingerprint,
    trained_parts,
    with_merged_encoder,
)
from fusionrec.runner.steps import Done, RunContext, files_hash, has_files, run_step
from fusionrec.spec import FusionRecommenderSpec, Manifest
from fusionrec.train.candidates import selects_best, shipped_spec

log = logging.getLogger(__name__)

COMPILED_FILES = ("encoder.onnx", "item_encoder.onnx", "encoder.plan", "item_encoder.plan", "encoder.plan.json",
                  "item_encoder.plan.json", "compile.json", ANN_INDEX_NAME)


@dataclass(frozen=True)
class Trained:
    """The spec the model was trained with (merged encoder in place), its encoders' content hashes, the
    data's key, and the train step's record (artifact path and the hashes of the files it wrote). `shipped` names
    the candidate the artifact holds under `evaluation.select: best` (None: the fused model, no selection)."""

    spec: FusionRecommenderSpec
    sources: dict[str, str]
    data_key: str
    record: Record
    shipped: str | None = None

    @property
    def hash(self) -> str:
        return str(self.record.output["hash"])


def prepare(ctx: RunContext) -> str:
    """Validate the data (a bad row fails here, in seconds) and return the key later steps use for it."""
    from fusionrec.data.prepare import prepare_built_in

    data = ctx.spec.data
    files = data_files(data)
    spec_part = data.model_dump(mode="json", by_alias=True)
    fingerprint = data_fingerprint(files, ctx.hasher) if files is not None else "not prepared yet"
    key = step_key("prepare", spec_part, fingerprint)

    def work() -> Done:
        nonlocal files
        if files is None:
            prepare_built_in(str(data.dataset))  # data_files is None only for a built-in not prepared yet
            files = data_files(data)
            if files is None:
                raise RuntimeError(f"dataset {data.dataset} is still not prepared after preparing it")
        dataset, split = ctx.data()
        detail = f"{dataset.name}: {split.vocab.n_users} users, {split.vocab.n_items} items, " \
                 f"{len(dataset.interactions)} interactions"
        return Done({"data_key": step_key("prepare", spec_part, data_fingerprint(files, ctx.hasher)),
                     "users": split.vocab.n_users, "items": split.vocab.n_items,
                     "interactions": len(dataset.interactions)}, detail)

    # Data that is not prepared yet is never a cache hit: its key could not say what the files will hold.
    # Once prepared, the record is also filed under the key the next run will compute from the files.
    record = run_step(ctx, "prepare", key, work, lambda _: files is not None, announce="reading and checking the data")
    data_key = str(record.output["data_key"])
    if data_key != key:
        ctx.cache.store(Record("prepare", data_key, record.output, record.seconds))
    return data_key


def merge(ctx: RunContext) -> tuple[Path, str] | None:
    """Run `spec.merge` into `<output>/.fusionrec/merged/<key>/`; returns (folder, content hash)."""
    from fusionrec.model.merge.runner import run_merge

    spec = ctx.spec
    if spec.merge is None:
        return None
    by_name = {e.name: e.source for e in spec.encoders}
    referenced = [r for r in [spec.merge.base_source, *(m.source for m in spec.merge.models)] if r]
    inputs = {r: source_fingerprint(by_name.get(r, r), ctx.hasher) for r in referenced}
    key = step_key("merge", spec.merge.model_dump(mode="json", by_alias=True), inputs)
    folder = ctx.root / STATE_DIR / "merged" / key[:16]
    merge_spec = spec.merge  # not None (checked above), for the closure

    def work() -> Done:
        report = run_merge(merge_spec, folder, encoders=by_name, overwrite=True)
        return Done({"folder": str(folder), "hash": ctx.hasher.folder(folder)},
                    f"{report.pretty_name} of {len(merge_spec.models)} models -> {folder}")

    def verify(record: Record) -> bool:
        return folder.is_dir() and ctx.hasher.folder(folder) == record.output["hash"]

    record = run_step(ctx, "merge", key, work, verify, announce=f"{spec.merge.method} merge")
    return folder, str(record.output["hash"])


@dataclass(frozen=True)
class TrainInputs:
    """What the train step is keyed by: the spec it trains (merged encoder in place), its encoders' content
    hashes, and the key they make with the data's."""

    spec: FusionRecommenderSpec
    sources: dict[str, str]
    key: str


def train_inputs(ctx: RunContext, data_key: str, merged: tuple[Path, str] | None) -> TrainInputs:
    """The train step's key without training: a version published earlier is checked against it."""
    spec = with_merged_encoder(ctx.spec, merged[0]) if merged else ctx.spec
    sources = {e.name: (merged[1] if merged and ctx.spec.merge and e.name == ctx.spec.merge.name else
                        source_fingerprint(e.source, ctx.hasher)) for e in spec.encoders}
    return TrainInputs(spec, sources, step_key("train", train_parts(spec, sources), {"data": data_key}))


def train(ctx: RunContext, data_key: str, merged: tuple[Path, str] | None) -> Trained:
    """Fine-tune under Ray Train into `<output>/<version>/` (or reuse the same training of another version)."""
    from fusionrec.train.distributed import train_distributed

    inputs = train_inputs(ctx, data_key, merged)
    spec, sources, key = inputs.spec, inputs.sources, inputs.key
    target = ctx.target

    def verify(record: Record) -> bool:
        return has_files(ctx.artifact(target), record.output["files"])

    reused = _reuse_other_version(ctx, key, spec, verify)

    def work() -> Done:
        if target.exists():
            ctx.say(f"        replacing {target}: it was not trained from this spec")
        started = time.perf_counter()
        manifest = Manifest(metadata=ctx.manifest.metadata, spec=spec)
        result = train_distributed(manifest, ctx.root, overwrite=target.exists(), embeddings=ctx.embeddings)
        seconds = time.perf_counter() - started
        _drop_checkpoints(ctx, result.best_checkpoint)
        artifact = ctx.refresh(target)
        files = {name: entry["sha256"] for name, entry in artifact.manifest["files"].items() if name != SPEC_NAME}
        test = ", ".join(f"{k} {v:.4f}" for k, v in result.test.items() if k.endswith("@10") or "@" not in k)
        selection = artifact.metrics.get("selection") or {}
        shipped = f"shipped {selection['shipped']} (select: best); " if selection.get("shipped") else ""
        return Done({"artifact": str(target), "version": spec.version, "files": files, "hash": files_hash(files),
                     "train_seconds": round(seconds, 2), "shipped": selection.get("shipped"),
                     "shipped_group": selection.get("shipped_group", "fused")},
                    f"{shipped}best epoch {result.best_epoch}; test {test}")

    workers = spec.training.workers
    record = run_step(ctx, "train", key, work, verify,
                      announce=f"Ray Train, {workers} worker{'s' if workers > 1 else ''}, "
                               f"{spec.training.epochs} epochs max"
                               + (", then each encoder alone (select: best)" if selects_best(spec) else ""),
                      cached_detail=f"same training as {reused}: its weights are reused" if reused else None)
    shipped = record.output.get("shipped")
    _sync_spec(ctx, target, shipped_spec(spec, shipped, record.output.get("shipped_group")))
    return Trained(spec=spec, sources=sources, data_key=data_key, record=record, shipped=shipped)


def train_parts(spec: FusionRecommenderSpec, sources: dict[str, str]) -> dict[str, Any]:
    """The train step's key: what the model depends on and, when the job selects among candidates, that it
    does (`select: best` may ship a single encoder). `select: fused` adds nothing. (The new data and task fields,
    data.order, task.userTower auto, a null itemTextTemplate, are in the dumped sections, so every key made before
    them misses once and that run retrains: a key may change more often than needed, never less.)"""
    parts = trained_parts(spec, sources)
    if selects_best(spec):
        parts["select"] = "best"
    return parts


def compile_version(ctx: RunContext, trained: Trained) -> Record:
    """Export the towers for serving, behind the compiler's parity gate (settings from this run's spec)."""
    from fusionrec.compile import compile_artifact

    settings = ctx.spec.compile
    key = compile_key(ctx.spec, trained.hash)
    target = ctx.target

    def verify(record: Record) -> bool:
        return has_files(ctx.artifact(target), record.output["files"])

    def work() -> Done:
        result = compile_artifact(target, backend=settings.backend, precision=settings.precision,
                                  threads=settings.threads, opset=settings.opset, index=settings.index,
                                  embeddings=ctx.embeddings, report=lambda line: ctx.say(f"        parity {line}"))
        listed = ctx.refresh(target).manifest["files"]
        files = {name: listed[name]["sha256"] for name in COMPILED_FILES if name in listed}
        return Done({"files": files, "backend": result["backend"], "precision": result["precision"]},
                    f"{result['backend']} {result['precision']}: {', '.join(sorted(files))}")

    return run_step(ctx, "compile", key, work, verify, announce=f"{settings.backend} {settings.precision}")


def compile_key(spec: FusionRecommenderSpec, train_hash: str) -> str:
    """The compile step's key: this version's compile settings over the trained files' hash."""
    return step_key("compile", {"version": spec.version, "compile": spec.compile.model_dump(mode="json")},
                    {"train": train_hash})


def _reuse_other_version(ctx: RunContext, key: str, spec: FusionRecommenderSpec,
                         verify: Callable[[Record], bool]) -> str | None:
    """A new version whose training equals another version's (same key) gets that version's files instead
    of a second identical training; returns the version reused, or None."""
    earlier = ctx.cache.load("train", key)
    if earlier is None or verify(earlier):
        return None
    source = Path(earlier.output["artifact"])
    if source == ctx.target or not has_files(ctx.artifact(source), earlier.output["files"]):
        return None
    _copy_version(source, ctx.target, earlier.output["files"], spec)
    ctx.refresh(ctx.target)
    return source.name


def _copy_version(source: Path, target: Path, files: dict[str, str], spec: FusionRecommenderSpec) -> None:
    """A new version whose training equals an existing one's: its files, hard-linked where possible, under
    the new version's name and spec (written atomically like any artifact)."""
    def linker(src: Path) -> Callable[[Path], None]:
        def write(dest: Path) -> None:
            try:
                os.link(src, dest)
            except OSError:
                shutil.copyfile(src, dest)
        return write

    write_artifact(target.parent, spec.version, {name: linker(source / name) for name in files}, spec=spec,
                   overwrite=target.exists())


def _sync_spec(ctx: RunContext, target: Path, spec: FusionRecommenderSpec) -> None:
    """Keep spec.yaml equal to the spec this version last ran with (serving or compile settings may have
    changed since it was trained, without retraining)."""
    artifact = ctx.artifact(target)
    if artifact is not None and artifact.spec != spec:
        import yaml

        text = yaml.safe_dump(spec.model_dump(mode="json", by_alias=True), sort_keys=False)
        ctx.add_files(target, {SPEC_NAME: text.encode("utf-8")})


def _drop_checkpoints(ctx: RunContext, best_checkpoint: str | None) -> None:
    """Ray Train's checkpoints of a finished local run are in the artifact now; keep the disk from filling up
    run after run. Only the default storage (`<output>/_training`) is cleaned; a configured one is the user's."""
    from fusionrec.train.distributed import TRAINING_FOLDER

    if ctx.spec.training.storage_path or not best_checkpoint:
        return
    storage = (ctx.root / TRAINING_FOLDER).resolve()
    run_folder = Path(best_checkpoint).resolve().parent
    if run_folder.parent == storage and run_folder.is_dir():
        shutil.rmtree(run_folder, ignore_errors=True)
    elif not str(run_folder).startswith(str(storage)):
        log.debug("checkpoints at %s are outside %s; left in place", run_folder, storage)


def check_local_output(root: str) -> Path:
    """A local output folder (a path or file:///path): the runner writes artifacts and its cache there. Object
    storage goes through `fusionrec.runner.publishing`, which hands the runner a local work folder instead."""
    if root.startswith("file://"):
        root = root.removeprefix("file://")
    if "://" in root:
        raise UserError(f"output {root!r} is not a local folder", field="spec.storage.uri",
                        fix="use a local folder, s3://bucket/prefix or gs://bucket/prefix")
    return Path(root).expanduser().resolve()
