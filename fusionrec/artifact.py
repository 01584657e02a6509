"""Versioned model artifacts: one directory per model version, written atomically and verified on every load.

Layout (design.md section 5) of `<out_root>/<version>/`:

    spec.yaml              the full FusionRecommenderSpec that produced the model (required)
    model.safetensors      the weights; safetensors only, never pickles (required)
    tokenizers/<encoder>/  each encoder's tokenizer files
    item_index.npy         precomputed item embeddings [n_items, D], rows in items.parquet order
    items.parquet          item ids and titles
    metrics.json           evaluation results
    encoder.onnx, encoder.plan   compiled encoders (ONNX / TensorRT), often added later with `add_files`
    MANIFEST.json          sha256 and size of every other file, format and fusionrec versions, times

Why the ceremony: an artifact travels from a training job to serving replicas through shared storage, and
a replica must never serve a half-written or altered model. A version is therefore built in a hidden temp
directory next to its final place and renamed in (a crash leaves only a `.tmp-*` directory, which is never
listed as a version), every load checks each file against the manifest, and pickled weights are refused
because unpickling runs arbitrary code. One writer per version at a time is assumed (the operator runs one
job per version); replacing an existing version renames the old one aside first, so readers see the old
version or the new one, or for the instant between two renames no version, but never a mixture.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import yaml
from pydantic import BaseModel, ValidationError

from fusionrec import __version__
from fusionrec.errors import UserError, format_validation_error
from fusionrec.files import sha256_file
from fusionrec.spec import FusionRecommenderSpec

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
MANIFEST_NAME = "MANIFEST.json"
SPEC_NAME = "spec.yaml"
WEIGHTS_NAME = "model.safetensors"
METRICS_NAME = "metrics.json"
ITEM_INDEX_NAME = "item_index.npy"
ITEMS_NAME = "items.parquet"
ONNX_NAME = "encoder.onnx"
PLAN_NAME = "encoder.plan"
REQUIRED = (SPEC_NAME, WEIGHTS_NAME)
# Formats that unpickle on load (torch.save, pickle, joblib, Lightning checkpoints).
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"})
_VERSION_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")  # the spec's own version pattern
_CHUNK = 1 << 20

# bytes to write, a file or folder to copy, or a writer called with the destination path (for a folder
# entry such as tokenizers/<encoder>, e.g. `tokenizer.save_pretrained`).
FileSource = Union[bytes, Path, Callable[[Path], None]]


@dataclass(frozen=True)
class Artifact:
    """A verified artifact directory: its parsed spec, metrics and manifest, and paths to its files."""

    path: Path
    version: str
    spec: FusionRecommenderSpec
    metrics: dict[str, Any]
    manifest: dict[str, Any]

    @property
    def files(self) -> list[str]:
        """Every file in the manifest, as POSIX paths relative to `path`."""
        return sorted(self.manifest["files"])

    def file(self, name: str) -> Path | None:
        """Path of a manifest file, or None when the artifact does not have it (e.g. no encoder.plan)."""
        return self.path / name if name in self.manifest["files"] else None

    @property
    def model_path(self) -> Path:
        return self.path / WEIGHTS_NAME

    @property
    def item_index_path(self) -> Path | None:
        return self.file(ITEM_INDEX_NAME)

    @property
    def items_path(self) -> Path | None:
        return self.file(ITEMS_NAME)

    @property
    def onnx_path(self) -> Path | None:
        return self.file(ONNX_NAME)

    @property
    def plan_path(self) -> Path | None:
        return self.file(PLAN_NAME)

    def tokenizer_dir(self, encoder: str) -> Path:
        prefix = f"tokenizers/{encoder}/"
        if not any(name.startswith(prefix) for name in self.manifest["files"]):
            have = sorted({n.split("/")[1] for n in self.manifest["files"] if n.startswith("tokenizers/")})
            raise UserError(f"artifact {self.path} has no tokenizer for encoder {encoder!r}; it has {have}")
        return self.path / "tokenizers" / encoder

    def load_state_dict(self, device: str = "cpu") -> dict[str, torch.Tensor]:
        """The model's weights, read with safetensors (no code runs on load)."""
        from safetensors.torch import load_file

        return load_file(self.model_path, device=device)

    def load_item_index(self) -> np.ndarray:
        """[n_items, D] precomputed item embeddings (numpy, with pickled objects refused)."""
        if self.item_index_path is None:
            raise UserError(f"artifact {self.path} has no {ITEM_INDEX_NAME}")
        return np.load(self.item_index_path, allow_pickle=False)


# --- writing ------------------------------------------------------------------------------------------------


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
    for name, value in ((SPEC_NAME, spec), (METRICS_NAME, metrics)):
        if value is not None:
            if name in sources:
                raise UserError(f"{name} was given twice: as a keyword argument and in files")
            sources[name] = _dump_spec(value) if name == SPEC_NAME else _dump_json(value)
    for name in sources:
        _check_name(name)
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


def add_files(artifact_path: str | Path, files: Mapping[str, FileSource], *, replace: bool = False) -> Path:
    """Add files (e.g. a compiled encoder.onnx) to a verified artifact and rewrite its manifest, atomically.

    A new copy of the version is assembled next to it (existing files hard-linked, not copied, where the
    filesystem allows) and swapped in, so on any failure the artifact stays exactly as it was. Existing
    names are refused unless `replace=True`; replacing a folder entry (tokenizers/x) replaces all of it.
    """
    current = load_artifact(artifact_path)
    path = current.path
    for name in files:
        _check_name(name)
    old = set(current.manifest["files"])
    replaced = {f for name in files for f in old if f == name or f.startswith(name.rstrip("/") + "/")}
    if replaced and not replace:
        raise UserError(f"artifact {path} already has {sorted(replaced)}",
                        fix="pass replace=True to replace them")
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


def list_versions(out_root: str | Path) -> list[str]:
    """The finished versions under `out_root` (temp and set-aside directories are hidden), sorted by name."""
    out_root = Path(out_root)
    if not out_root.is_dir():
        return []
    return sorted(p.name for p in out_root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST_NAME).is_file())


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
    names = _walk(staging)
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
    _check_safetensors(staging / WEIGHTS_NAME)
    spec = _parse_spec(staging / SPEC_NAME)
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


# --- loading ------------------------------------------------------------------------------------------------


def load_artifact(path: str | Path, *, verify: bool = True) -> Artifact:
    """Open an artifact, refusing it with a UserError naming the file if anything is off.

    Refused: pickled weight files; files missing from, added to, or changed since the manifest (sha256 and
    size; `verify=False` skips only the hashing, for callers that just verified); an unreadable spec.
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"artifact {path} does not exist or is not a directory")
    manifest = _read_manifest(path)
    on_disk = set(_walk(path)) - {MANIFEST_NAME}
    listed = set(manifest["files"])
    pickled = sorted(n for n in on_disk | listed if PurePosixPath(n).suffix in PICKLE_SUFFIXES)
    if pickled:
        raise UserError(
            f"artifact {path}: {pickled[0]} holds pickled weights, which are refused: unpickling runs code",
            field=pickled[0], fix="convert the weights to safetensors (safetensors.torch.save_file) and "
                                  "write the artifact again")
    problems = [(n, "missing (listed in MANIFEST.json)") for n in sorted(listed - on_disk)]
    problems += [(n, "unexpected file, not in MANIFEST.json") for n in sorted(on_disk - listed)]
    for name in sorted(listed & on_disk):
        entry, file = manifest["files"][name], path / name
        if file.stat().st_size != entry["size"]:
            problems.append((name, f"size {file.stat().st_size} != {entry['size']} in MANIFEST.json (tampered)"))
        elif verify and sha256_file(file) != entry["sha256"]:
            problems.append((name, "sha256 does not match MANIFEST.json (tampered)"))
    problems += [(n, "required file not in MANIFEST.json") for n in REQUIRED if n not in listed]
    if problems:
        lines = "\n".join(f"  {name}: {what}" for name, what in problems)
        raise UserError(f"artifact {path} failed verification:\n{lines}", field=problems[0][0],
                        fix="rewrite the artifact; add new files with fusionrec.artifact.add_files")
    spec = _parse_spec(path / SPEC_NAME)
    if spec.version != manifest["version"]:
        raise UserError(f"artifact {path}: spec.yaml version {spec.version!r} != manifest version "
                        f"{manifest['version']!r}", field="spec.version")
    metrics: dict[str, Any] = {}
    if METRICS_NAME in listed:
        try:
            metrics = json.loads((path / METRICS_NAME).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"artifact {path}: {METRICS_NAME} is not valid JSON: {exc}") from None
    return Artifact(path=path, version=manifest["version"], spec=spec, metrics=metrics, manifest=manifest)


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST_NAME
    if not file.is_file():
        raise UserError(f"artifact {path} has no {MANIFEST_NAME}: not a fusionrec artifact, or unfinished")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{file} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise UserError(f"{file} has no 'files' mapping")
    fmt = manifest.get("format_version")
    if not isinstance(fmt, int) or not 1 <= fmt <= FORMAT_VERSION:
        raise UserError(f"{file}: format_version {fmt!r} is not readable by fusionrec {__version__} "
                        f"(reads 1..{FORMAT_VERSION})", fix="upgrade fusionrec")
    for name, entry in manifest["files"].items():
        _check_name(name)
        if not isinstance(entry, dict) or not {"sha256", "size"} <= set(entry):
            raise UserError(f"{file}: entry {name!r} needs sha256 and size, got {entry!r}")
    if not isinstance(manifest.get("version"), str):
        raise UserError(f"{file} has no version")
    return manifest


# --- caching ------------------------------------------------------------------------------------------------


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


def file_fingerprint(paths: Iterable[str | Path]) -> str:
    """sha256 over the names, sizes and contents of data files; moving the folder keeps it unchanged."""
    digest = hashlib.sha256()
    for file in sorted(Path(p) for p in paths):
        digest.update(f"{file.name}\0{file.stat().st_size}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


# --- helpers ------------------------------------------------------------------------------------------------


def _check_version(version: str) -> None:
    if not isinstance(version, str) or not _VERSION_RE.match(version) or len(version) > 40:
        raise UserError(f"artifact version {version!r} must look like a spec version: lowercase letters, "
                        f"digits, '-' and '.', at most 40 characters (e.g. v3)", field="version")


def _check_name(name: str) -> None:
    """Artifact-relative POSIX paths only: a name must never reach outside the version's folder."""
    parts = PurePosixPath(name).parts if isinstance(name, str) else ()
    if (not parts or name.startswith("/") or "\\" in name or any(p in ("..", ".") for p in name.split("/"))
            or PurePosixPath(name).as_posix() == MANIFEST_NAME):
        raise UserError(f"artifact file name {name!r} is not allowed: use a relative path such as "
                        f"'encoder.onnx' or 'tokenizers/minilm' (no '..' and not {MANIFEST_NAME})")
    if PurePosixPath(name).suffix in PICKLE_SUFFIXES:
        raise UserError(f"artifact file {name!r}: pickled files are refused; save weights with safetensors")


def _walk(root: Path) -> list[str]:
    """Every regular file under root, as sorted relative POSIX paths; symlinks are refused."""
    names = []
    for folder, dirs, files in os.walk(root):
        for entry in [*dirs, *files]:
            if os.path.islink(os.path.join(folder, entry)):
                link = Path(folder, entry).relative_to(root).as_posix()
                raise UserError(f"artifact {root}: {link} is a symlink; artifacts hold regular files only")
        names += [Path(folder, f).relative_to(root).as_posix() for f in files]
    return sorted(names)


def _parse_spec(path: Path) -> FusionRecommenderSpec:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid YAML: {exc}") from None
    if isinstance(document, dict) and "kind" in document and "spec" in document:
        document = document["spec"]  # a whole manifest (apiVersion/kind/metadata/spec) is accepted too
    try:
        return FusionRecommenderSpec.model_validate(document)
    except ValidationError as exc:
        lines = "\n".join(f"  {field}: {msg}" for field, msg in format_validation_error(exc, prefix="spec"))
        raise UserError(f"{path} is not a valid FusionRecommender spec:\n{lines}") from None


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            handle.keys()
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise UserError(f"{WEIGHTS_NAME} is not a readable safetensors file: {exc}", field=WEIGHTS_NAME,
                        fix="save the weights with safetensors.torch.save_file") from None


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
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
