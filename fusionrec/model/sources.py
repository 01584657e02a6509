"""Model sources: turn an encoder's `source` string into a local Hugging Face folder, and pull it to a
verified copy for machines that cannot reach where the model came from.

A source is one of
- a local folder (`./minilm`, `/models/minilm`, `file:///models/minilm`);
- `pkg://<package>[/subdir]`: a Python package that ships a model (see `fusionrec.model.packaged`);
- `hf://org/name[@revision]`: the Hugging Face Hub, for users who have one;
- `pvc://<claim>/<path>`: a PersistentVolumeClaim mounted at `$FUSIONREC_PVC_ROOT/<claim>` (default
  `/mnt/models/<claim>`), the convention the operator uses when it mounts model claims into pods;
- `s3://<bucket>/<prefix>`, `gs://<bucket>/<prefix>`: an HF folder in object storage, fetched once into
  `<model cache>/.fetched/` by `fusionrec.storage.local_copy` (a published folder checked against its manifest,
  any other folder copied whole and re-fetched when it changes; pickled weights are refused either way), with
  credentials and the endpoint from the environment.
Everything after resolution is offline: transformers only ever sees a local folder. The schemes are
`fusionrec.choices.MODEL_SOURCE_SCHEMES`, which the spec and the CRD check too: any other scheme is refused when
the manifest is read, with the fix.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from fusionrec.choices import MODEL_SOURCE_FIX, model_source_problem
from fusionrec.errors import UserError
from fusionrec.files import atomic_directory, sha256_file
from fusionrec.model.packaged import ORIGIN_FILE, find_package_dir, materialise, model_home

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
MANIFEST_FORMAT = "fusionrec.io/model-manifest/v1"
DEFAULT_PVC_ROOT = "/mnt/models"
_NOT_MODEL_FILES = {MANIFEST, ORIGIN_FILE, "desktop.ini", "Thumbs.db", "__pycache__", "__MACOSX"}


def resolve_source(source: str, cache_dir: Path | None = None) -> Path:
    """Return a local HF folder (one holding config.json) for a model source.

    Args:
        source: a local path, `file://`, `pkg://`, `hf://`, `pvc://`, `s3://` or `gs://` source.
        cache_dir: where converted or downloaded models go (default: `$FUSIONREC_MODEL_HOME`).
    Raises:
        UserError: naming the source and the fix, for an unknown scheme or a missing model.
        StorageError: fetching an s3:// or gs:// source failed (a retry may succeed).
    """
    problem = model_source_problem(source)
    if problem:
        raise UserError(f"source {source!r}: {problem}", field="source", fix=MODEL_SOURCE_FIX)
    scheme, _, rest = source.partition("://") if "://" in source else ("", "", source)
    if scheme == "":
        return _local(Path(source).expanduser(), source, cache_dir)
    if scheme == "file":
        return _local(Path(unquote(urlparse(source).path)), source, cache_dir)
    if scheme == "pkg":
        return _package(rest, source, cache_dir)
    if scheme == "hf":
        return _hub(rest, source, cache_dir)
    if scheme == "pvc":
        return _pvc(rest, source, cache_dir)
    if scheme in ("s3", "gs"):
        return _object_store(source, cache_dir)
    # A "scheme://" that model_source_problem does not take for one (upper case, a digit first): a local path.
    return _local(Path(source).expanduser(), source, cache_dir)


def _local(path: Path, source: str, cache_dir: Path | None) -> Path:
    path = path.absolute()
    if not path.exists():
        raise UserError(f"source {source!r}: {path} does not exist", field="source",
                        fix="give the folder that holds the model's config.json")
    return materialise(path, cache_dir=cache_dir)


def _package(rest: str, source: str, cache_dir: Path | None) -> Path:
    pieces = [p for p in rest.strip("/").split("/") if p]
    if not pieces:
        raise UserError(f"source {source!r}: no package named", field="source", fix="write pkg://<package>[/subdir]")
    # A dotted first piece (pkg://a.b/c) means a subpackage; only the top level is looked up, never imported.
    head, *inner = pieces[0].split(".")
    package_dir = find_package_dir(head)
    target = package_dir.joinpath(*inner, *pieces[1:])
    if not target.exists():
        raise UserError(f"source {source!r}: {target} does not exist inside package {head!r}", field="source",
                        fix=f"list the package's folders (ls {package_dir}) and name the one with config.json")
    return materialise(target, cache_dir=cache_dir, package=head)


def _hub_is_off() -> bool:
    return any(os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub(rest: str, source: str, cache_dir: Path | None) -> Path:
    repo_id, _, revision = rest.strip("/").partition("@")
    if repo_id.count("/") != 1:
        raise UserError(f"source {source!r}: expected hf://<org>/<name>[@revision]", field="source")
    if _hub_is_off():
        raise UserError(
            f"source {source!r} needs the Hugging Face Hub, but the hub is off here (HF_HUB_OFFLINE=1)",
            field="source",
            fix=f"on a machine with hub access run `fusionrec models pull {source} ./{repo_id.split('/')[1]}`, "
            "copy that folder here (or onto a PVC) and use its path (or pvc://<claim>/<path>) as the source",
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(repo_id, revision=revision or None,
                                   cache_dir=str(cache_dir / "hub") if cache_dir else None)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise UserError(f"source {source!r}: download from the hub failed: {exc}", field="source") from exc
    return materialise(Path(folder), cache_dir=cache_dir)


def pvc_root() -> Path:
    """Where claims are mounted: `$FUSIONREC_PVC_ROOT`, default /mnt/models."""
    return Path(os.environ.get("FUSIONREC_PVC_ROOT", DEFAULT_PVC_ROOT))


def _pvc(rest: str, source: str, cache_dir: Path | None) -> Path:
    claim, _, inner = rest.strip("/").partition("/")
    if not claim:
        raise UserError(f"source {source!r}: expected pvc://<claim>/<path>", field="source")
    path = pvc_root() / claim / inner
    if not path.exists():
        raise UserError(
            f"source {source!r}: {path} does not exist (claim {claim!r} is expected at {pvc_root() / claim})",
            field="source",
            fix="mount the claim there, or set FUSIONREC_PVC_ROOT to the folder claims are mounted under",
        )
    return materialise(path, cache_dir=cache_dir)


def _object_store(source: str, cache_dir: Path | None) -> Path:
    """Fetch (or re-use) the local copy of an HF folder in object storage, then treat it as a local folder."""
    from fusionrec.storage import StorageError, local_copy, shown_uri

    try:
        folder = local_copy(source, (cache_dir or model_home()) / ".fetched")  # hidden: never a model name
    except UserError as exc:
        raise UserError(f"source {shown_uri(source)!r}: {exc.message}", field="source",
                        fix=exc.fix or "give the prefix that holds the model's config.json") from None
    except StorageError as exc:
        raise StorageError(f"fetching model source {shown_uri(source)}: {exc}", not_found=exc.not_found) from None
    return materialise(folder, cache_dir=cache_dir)


# --- pull and verify ------------------------------------------------------------------------------------------


def _model_files(folder: Path) -> list[Path]:
    """Files that make up the model, relative to folder; hidden files and OS junk are not part of it."""
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(p in _NOT_MODEL_FILES or p.startswith(".") for p in rel.parts) or not path.is_file():
            continue
        files.append(rel)
    return files


def write_manifest(folder: Path, *, source: str | None = None) -> dict[str, Any]:
    """Write MANIFEST.json with the sha256 and size of every model file in `folder`."""
    files = {
        rel.as_posix(): {"sha256": sha256_file(folder / rel), "size": (folder / rel).stat().st_size}
        for rel in _model_files(folder)
    }
    manifest = {
        "format": MANIFEST_FORMAT,
        "source": source,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": files,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def verify_manifest(folder: Path) -> dict[str, Any]:
    """Check every file against MANIFEST.json; returns the manifest.

    Raises:
        UserError: naming each modified, missing or unexpected file.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder} has no {MANIFEST}",
                        fix=f"pull the model again: fusionrec models pull <source> {folder}")
    try:
        manifest = json.loads(path.read_text())
        expected = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is not a valid manifest: {exc}") from None
    present = {rel.as_posix() for rel in _model_files(folder)}
    problems = []
    for name, entry in sorted(expected.items()):
        file = folder / name
        if name not in present:
            problems.append(f"{name}: missing")
        elif file.stat().st_size != entry.get("size"):
            problems.append(f"{name}: modified (size {file.stat().st_size}, manifest says {entry.get('size')})")
        elif (actual := sha256_file(file)) != entry.get("sha256"):
            recorded = str(entry.get("sha256", ""))[:12]
            problems.append(f"{name}: modified (sha256 {actual[:12]}..., manifest says {recorded}...)")
    problems += [f"{name}: not in the manifest" for name in sorted(present - set(expected))]
    if problems:
        listing = "\n".join(f"  {p}" for p in problems)
        raise UserError(f"{folder} does not match its {MANIFEST}:\n{listing}",
                        fix="do not use this folder; pull the model again from a trusted source")
    return manifest


def pull_model(source: str, dest: Path, *, cache_dir: Path | None = None, force: bool = False) -> Path:
    """Materialise any source into `dest` as a plain HF folder with a MANIFEST.json.

    The copy follows symlinks (a hub snapshot is links into a blob store), so `dest` can be moved to another
    machine or a PVC as is. It is written beside `dest` and renamed, so an interrupted pull leaves nothing.
    """
    dest = Path(dest).expanduser().absolute()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())) and not force:
        raise UserError(f"{dest} already exists and is not empty", fix="choose another folder or pass --force")
    folder = resolve_source(source, cache_dir).resolve()
    if folder == dest.resolve() or folder in dest.resolve().parents:
        raise UserError(f"cannot pull {source!r} into {dest}: it is inside the model folder itself")
    with atomic_directory(dest, replace=True) as staging:
        for rel in _model_files(folder):
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / rel, staging / rel)
        manifest = write_manifest(staging, source=source)
    log.info("pulled %s into %s (%d files)", source, dest, len(manifest["files"]))
    return dest
