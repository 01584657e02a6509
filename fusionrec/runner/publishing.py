"""`fusionrec run` with spec.storage.uri in object storage (s3://bucket/prefix, gs://bucket/prefix): the run builds
in a local work folder exactly as it does for a local output, publishes the finished version there after compile
(`fusionrec.storage.publish_folder`: verified, PUBLISHED marker last), and serves it from its published URI, which
the driver and each Serve replica fetch and verify into the artifact cache as a cluster replica does.

Why a local work folder: training, the step cache and Ray Train's checkpoints need a filesystem, and an object
store has no rename to make half a version invisible. The folder is keyed by the URI (`$FUSIONREC_CACHE/runs/...`,
default ~/.cache/fusionrec/runs/...; `--work-dir` picks another), so re-running a manifest finds its cached steps,
and every version published under one URI shares it: a new version can reuse an earlier training and rolls out
against the version this machine served last.

A published version is immutable and is the result: when `<uri>/<version>` is already published, nothing is
trained, evaluated or compiled again, whatever the local cache holds. Its build.json (the train and compile keys
it was built from, added to the artifact just before publishing) is read back verified and checked against this
run's keys, so a manifest whose training inputs changed under the same version is refused (bump spec.version)
rather than answered with the old model. A version without its PUBLISHED marker (an upload that never finished)
counts as unpublished: it is built (from the cache) and published again, and is never served.

Storage problems (no credentials, an unknown scheme, a missing bucket, an unreachable endpoint) are refused before
any work with a UserError naming spec.storage.uri (or --output) and the fix. Credentials come from the environment
only; no message here carries them (fusionrec.storage scrubs its errors).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusionrec import __version__, storage
from fusionrec.errors import UserError
from fusionrec.runner.build import Trained, TrainInputs, compile_key
from fusionrec.runner.cache import Record
from fusionrec.runner.compare import COMPARISON_NAME
from fusionrec.runner.steps import RunContext, record_cached, record_step
from fusionrec.serving.artifacts import CACHE_ENV, is_remote, local_artifact

BUILD_NAME = "build.json"
STORAGE_FIX = ("check the endpoint (AWS_ENDPOINT_URL_S3, or STORAGE_EMULATOR_HOST for gs://), the credentials in "
               "the environment and that the bucket exists")


@dataclass(frozen=True)
class Destination:
    """Where a run publishes: the storage URI, the field that named it (for messages), the local work folder,
    and whether this run's version was already published when the run started."""

    uri: str
    version: str
    field: str
    work_root: Path
    published: bool

    @property
    def version_uri(self) -> str:
        return f"{self.uri}/{self.version}"


def destination(output: str, version: str, *, field: str, work_dir: str | None = None,
                rebuild: bool = False) -> Destination | None:
    """The run's object-storage destination, checked before any work (None for a local folder or file:// path).

    Raises:
        UserError: an unknown scheme, credentials missing, the bucket missing or unreachable, or `rebuild`
            (--no-cache) asked of a version that is already published.
    """
    if not is_remote(output):
        return None
    uri = output.rstrip("/")
    try:
        root = storage.resolve(uri)
        storage.check_bucket(root)
        published = storage.is_published(root.child(version))
    except UserError as exc:
        said = exc.message.removeprefix(f"{uri.partition('://')[0]}://: ")  # "s3://: no S3 credentials..."
        raise UserError(said if uri in said else f"{uri}: {said}", field=field, fix=exc.fix or STORAGE_FIX) from None
    except storage.StorageError as exc:
        raise UserError(f"{uri}: cannot reach the storage ({exc})", field=field, fix=STORAGE_FIX) from None
    if published and rebuild:
        raise UserError(f"version {version!r} is already published at {uri}/{version} and published versions are "
                        "immutable, so --no-cache cannot rebuild it", field="--no-cache",
                        fix="bump spec.version to build a new one, or drop --no-cache to serve the published one")
    return Destination(uri, version, field, work_root(uri, work_dir), published)


def work_root(uri: str, work_dir: str | None = None) -> Path:
    """The local folder a run publishing to `uri` builds in: `work_dir`, else one per URI under the cache."""
    if work_dir:
        folder, what = Path(work_dir).expanduser().resolve(), "--work-dir"
    else:
        base = Path(os.environ[CACHE_ENV]).expanduser() if os.environ.get(CACHE_ENV) else \
            Path.home() / ".cache" / "fusionrec"
        scheme, _, rest = uri.partition("://")
        bucket = "".join(c if c.isalnum() or c in "-_." else "-" for c in rest.split("/", 1)[0])[:40]
        folder = base / "runs" / f"{scheme}-{bucket}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"
        what = CACHE_ENV
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the local work folder {folder}: {exc.strerror or exc}", field=what,
                        fix="pass --work-dir with a folder this user can write") from None
    return folder.resolve()


def build_record(ctx: RunContext, trained: Trained, compiled: Record) -> dict[str, Any]:
    """What build.json holds: the keys a later run compares its own with before reusing the version."""
    return {"version": ctx.spec.version, "fusionrec": __version__, "train": trained.record.key,
            "train_hash": trained.hash, "compile": compiled.key, "shipped": trained.shipped}


def publish(ctx: RunContext, dest: Destination, trained: Trained, compiled: Record) -> str:
    """Add build.json to the finished artifact and publish it as `<uri>/<version>`; returns that URI."""
    published: list[str] = []

    def work() -> tuple[bool, str]:
        record = json.dumps(build_record(ctx, trained, compiled), indent=2, sort_keys=True) + "\n"
        ctx.add_files(ctx.target, {BUILD_NAME: record.encode()})
        files = ctx.refresh(ctx.target).manifest["files"]
        published.append(storage.publish_folder(ctx.target, dest.uri))
        size = sum(int(entry["size"]) for entry in files.values())
        return True, f"{published[0]}  ({len(files)} files, {size / 1e6:.1f} MB, read back and verified)"

    record_step(ctx, "publish", work)
    return published[0]


def adopt(ctx: RunContext, dest: Destination, inputs: TrainInputs) -> dict[str, Any] | None:
    """The version is already published: check it was built from this run's inputs and report its steps as
    cached; returns its comparison.json (None when it has none).

    Raises:
        UserError: it was published by something else than `fusionrec run`, or from other training inputs or
            compile settings (published versions are immutable: the fix is a new spec.version).
    """
    uri = dest.version_uri
    fix = "bump spec.version to build and publish a new version"
    try:
        record = json.loads(storage.read_published_file(uri, BUILD_NAME))
    except UserError as exc:
        if exc.field != BUILD_NAME:
            raise
        raise UserError(f"version {dest.version!r} is already published at {uri}, but not by `fusionrec run` (it "
                        f"has no {BUILD_NAME}), so nothing says it was built from this manifest",
                        field="spec.version", fix=fix) from None
    if record.get("train") != inputs.key:
        raise UserError(f"version {dest.version!r} is already published at {uri} from other training inputs (the "
                        "encoders, their weights, fusion, task, data or training sections, or the fusionrec "
                        "version differ); published versions are immutable", field="spec.version", fix=fix)
    if record.get("compile") != compile_key(ctx.spec, str(record.get("train_hash"))):
        raise UserError(f"version {dest.version!r} is already published at {uri}, compiled with other settings "
                        "(spec.compile); published versions are immutable", field="spec.compile", fix=fix)
    detail = f"published at {uri}"
    record_cached(ctx, "train", inputs.key, f"{detail}: not trained again")
    record_cached(ctx, "evaluate", None, detail)
    record_cached(ctx, "compile", record["compile"], detail)
    record_cached(ctx, "publish", None, f"{uri} (PUBLISHED marker present)")
    try:
        comparison: dict[str, Any] = json.loads(storage.read_published_file(uri, COMPARISON_NAME))
    except UserError as exc:
        if exc.field != COMPARISON_NAME:
            raise
        return None
    return comparison


def fetch(ctx: RunContext, dest: Destination) -> Path:
    """Fetch the published version into the artifact cache the Serve replicas read (every file checked against
    the published manifest; a current copy is re-hashed, not downloaded): the local copy the run's own requests
    are built from."""
    fetched: list[Path] = []

    def work() -> tuple[bool, str]:
        started = time.perf_counter()
        path = local_artifact(dest.version_uri)
        fetched.append(path)
        files = [p for p in path.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        return True, (f"{len(files)} files, {size / 1e6:.1f} MB checked against the published manifest in "
                      f"{time.perf_counter() - started:.1f}s -> {path}")

    record_step(ctx, "fetch", work)
    return fetched[0]
