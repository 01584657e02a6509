"""Writing an artifact atomically: a version is assembled in a hidden temp folder next to its place, checked,
described by a manifest, flushed and renamed in (`write_artifact`); files are added the same way to a copy
(`add_files`). Also the one way weights are saved (`save_tensors`) and the cache key of a finished step
(`content_hash`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel

from fusionrec import __version__
from fusionrec.artifact.layout import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    METRICS_NAME,
    PICKLE_SUFFIXES,
    REQUIRED,
    SPEC_NAME,
    WEIGHTS_NAME,
    FileSource,
    check_name,
    check_safetensors,
    parse_spec,
    walk,
)
from fusionrec.artifact.reading import load_artifact
from fusionrec.errors import UserError
from fusionrec.files import sha256_file
from fusionrec.spec import FusionRecommenderSpec

if TYPE_CHECKING:
    import torch

_VERSION_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")  # the spec's own version pattern


def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Write weights as safetensors, the one format the project stores (never a pickle).

    safetensors refuses tensors that share storage (tied weights), so each is written as its own copy; the
    `format: pt` metadata is what transformers expects of a checkpoint it loads.
    """
    from safetensors.torch import save_file

    save_file({key: value.detach().cpu().contiguous().clone() for key, value in tensors.items()}, str(path),
              metadata={"format": "pt"})


def write_artifact(out_root: str | Path, version: str, files: Mapping[str, FileSource], *,
                   spec: FusionRecommenderSpec | None = None, metrics: Mapping[str, Any] | None = None,
                   overwrite: bool = False) -> Path:
    """Write `<out_root>/<version>/` with a manifest, atomically; return its path.

    Args:
        out_root: folder holding one directory per version (created if missing).
        version: the version name; must equal the spec's `version`.
        files: artifact-relative name -> source (see `FileSource`). Must provide model.safetensors, and
            spec.yaml unless `spec` is given.
        spec: written as spec.yaml when given.
        metrics: written as metrics.json when given.
        overwrite: replace an existing version (renamed aside, then removed) instead of refusing.
    """
    out_root = Path(out_root)
    _check_version(version)
    target = out_root / version
    if target.exists() and not overwrite:
        raise UserError(f"version {version!r} already exists at {target}",
                        fix="pick a new spec.version, or pass overwrite=True to replace it")
    sources = dict(files)
    for name, given in ((SPEC_NAME, spec is not None), (METRICS_NAME, metrics is not None)):
        if given and name in sources:
            raise UserError(f"{name} was given twice: as a keyword argument and in files")
    if spec is not None:
        sources[SPEC_NAME] = _dump_spec(spec)
    if metrics is not None:
        sources[METRICS_NAME] = _dump_json(metrics)
    for name in sources:
        check_name(name)
    out_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=out_root))
    try:
        for name, source in sources.items():
            _materialise(staging, name, source)
        _write_manifest(staging, _build_manifest(staging, version))
        _install(staging, target, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def add_files(artifact_path: str | Path, files: Mapping[str, FileSource], *, replace: bool = False,
              remove: Collection[str] = ()) -> Path:
    """Add files (e.g. a compiled encoder.onnx) to a verified artifact and rewrite its manifest, atomically.

    A new copy of the version is assembled next to it (existing files hard-linked, not copied, where the
    filesystem allows) and swapped in, so on any failure the artifact stays exactly as it was. Existing
    names are refused unless `replace=True`; replacing a folder entry (tokenizers/x) replaces all of it.
    `remove` names files (or folder entries) to leave out of the new copy where present, in the same swap: a
    recompile that no longer produces a file must not leave the old one behind.
    """
    current = load_artifact(artifact_path)
    path = current.path
    for name in [*files, *remove]:
        check_name(name)
    if set(files) & set(remove):
        raise ValueError(f"files both added and removed: {sorted(set(files) & set(remove))}")
    for name in remove:
        if name in REQUIRED:
            raise UserError(f"artifact {path}: {name} is required and cannot be removed", field=name)
    old = set(current.manifest["files"])
    replaced = {f for name in files for f in old if f == name or f.startswith(name.rstrip("/") + "/")}
    if replaced and not replace:
        raise UserError(f"artifact {path} already has {sorted(replaced)}",
                        fix="pass replace=True to replace them")
    replaced |= {f for name in remove for f in old if f == name or f.startswith(name.rstrip("/") + "/")}
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    try:
        for name in sorted(old - replaced):
            _link_or_copy(path / name, staging / name)
        for name, source in files.items():
            _materialise(staging, name, source)
        manifest = _build_manifest(staging, current.version)
        manifest["created"] = current.manifest.get("created", manifest["created"])
        manifest["updated"] = _now()
        _write_manifest(staging, manifest)
        _install(staging, path, overwrite=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _materialise(staging: Path, name: str, source: FileSource) -> None:
    dest = staging / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(source, (bytes, bytearray, memoryview)):
        dest.write_bytes(bytes(source))
    elif isinstance(source, Path):
        if source.is_dir():
            shutil.copytree(source, dest)
        elif source.is_file():
            shutil.copyfile(source, dest)
        else:
            raise UserError(f"artifact file {name!r}: source {source} does not exist")
    elif callable(source):
        source(dest)
        if not dest.exists():
            raise ValueError(f"artifact file {name!r}: its writer returned without creating {dest}")
    else:
        raise ValueError(f"artifact file {name!r}: expected bytes, a Path or a writer callable, "
                         f"got {type(source).__name__}")


def _install(staging: Path, target: Path, *, overwrite: bool) -> None:
    """Rename the finished staging directory into place, setting an existing version aside first.

    A failure between the two renames puts the old version back; only a hard kill in that instant leaves
    it in `.old-<version>-*/<version>`, from where it can be moved back by hand.
    """
    _fsync_tree(staging)
    if target.exists():
        if not overwrite:
            raise UserError(f"version {target.name!r} already exists at {target}",
                            fix="pick a new spec.version, or pass overwrite=True to replace it")
        aside = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-", dir=target.parent))
        os.rename(target, aside / target.name)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(aside / target.name, target)  # if this fails too, the old version waits in `aside`
            os.rmdir(aside)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    else:
        try:
            os.rename(staging, target)
        except OSError as exc:  # another writer finished the same version first
            if target.exists():
                raise UserError(f"version {target.name!r} was written concurrently at {target}") from exc
            raise
    _fsync(target.parent)


def _build_manifest(staging: Path, version: str) -> dict[str, Any]:
    """Check the staged files, then describe them: the manifest is written only for a valid artifact."""
    names = walk(staging)
    if MANIFEST_NAME in names:
        raise UserError(f"a writer created {MANIFEST_NAME}; the manifest is written by fusionrec only")
    for name in REQUIRED:
        if name not in names:
            raise UserError(f"artifact {version!r} lacks {name}", field=name,
                            fix=f"pass {name} in files" + (" or spec=..." if name == SPEC_NAME else ""))
    pickled = [n for n in names if PurePosixPath(n).suffix in PICKLE_SUFFIXES]
    if pickled:
        raise UserError(f"artifact {version!r}: pickled files are refused: {pickled}",
                        fix="save weights with safetensors.torch.save_file")
    check_safetensors(staging / WEIGHTS_NAME)
    spec = parse_spec(staging / SPEC_NAME)
    if spec.version != version:
        raise UserError(f"spec.yaml has version {spec.version!r} but the artifact is written as {version!r}",
                        field="spec.version")
    return {
        "format_version": FORMAT_VERSION,
        "fusionrec_version": __version__,
        "version": version,
        "created": _now(),
        "files": {n: {"sha256": sha256_file(staging / n), "size": (staging / n).stat().st_size} for n in names},
    }


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def content_hash(spec: BaseModel | Mapping[str, Any], data_fingerprint: str | Mapping[str, Any] | None = None
                 ) -> str:
    """sha256 of a spec (or a section of one) and a data fingerprint: the cache key of a finished step.

    The spec is hashed in its canonical JSON form (aliases, sorted keys), so the same settings written in a
    different key order or with defaults spelt out give the same key. Pass the section a step depends on
    (e.g. `spec.training`) to keep unrelated edits, such as serving settings, from invalidating it.
    """
    body = spec.model_dump(mode="json", by_alias=True) if isinstance(spec, BaseModel) else dict(spec)
    payload = json.dumps({"spec": body, "data": data_fingerprint}, sort_keys=True, separators=(",", ":"),
                         default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _check_version(version: str) -> None:
    if not isinstance(version, str) or not _VERSION_RE.match(version) or len(version) > 40:
        raise UserError(f"artifact version {version!r} must look like a spec version: lowercase letters, "
                        f"digits, '-' and '.', at most 40 characters (e.g. v3)", field="version")


def _dump_spec(spec: FusionRecommenderSpec) -> bytes:
    return yaml.safe_dump(spec.model_dump(mode="json", by_alias=True), sort_keys=False).encode("utf-8")


def _dump_json(value: Mapping[str, Any]) -> bytes:
    return (json.dumps(dict(value), indent=2, sort_keys=True) + "\n").encode("utf-8")


def _link_or_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)  # the old version's file, shared read-only: nothing rewrites files in place
    except OSError:
        shutil.copy2(src, dest)


def _fsync_tree(root: Path) -> None:
    """Flush every staged file and folder so the rename never publishes data still only in page cache."""
    for folder, _, files in os.walk(root):
        for path in [folder, *(os.path.join(folder, f) for f in files)]:
            _fsync(path)


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # Linux opens folders read-only too, which their fsync needs
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
