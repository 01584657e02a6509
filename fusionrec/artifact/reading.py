"""Opening an artifact: the manifest checked against every file (sha256 and size), pickles refused, the spec
parsed; `Artifact` is what a verified folder offers its readers (training's evaluation, compile, serving)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from fusionrec import __version__
from fusionrec.artifact.layout import (
    ANN_INDEX_NAME,
    FORMAT_VERSION,
    ITEM_INDEX_NAME,
    ITEMS_NAME,
    MANIFEST_NAME,
    METRICS_NAME,
    ONNX_NAME,
    PICKLE_SUFFIXES,
    PLAN_NAME,
    REQUIRED,
    SPEC_NAME,
    WEIGHTS_NAME,
    check_name,
    parse_spec,
    walk,
)
from fusionrec.errors import UserError
from fusionrec.files import sha256_file
from fusionrec.spec import FusionRecommenderSpec

if TYPE_CHECKING:
    import torch


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

    @property
    def ann_index_path(self) -> Path | None:
        """The approximate item index `fusionrec compile` stored, if it built one (compile.json says how)."""
        return self.file(ANN_INDEX_NAME)

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


def load_artifact(path: str | Path, *, verify: bool = True) -> Artifact:
    """Open an artifact, refusing it with a UserError naming the file if anything is off.

    Refused: pickled weight files; files missing from, added to, or changed since the manifest (sha256 and
    size; `verify=False` skips only the hashing, for callers that just verified); an unreadable spec.
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"artifact {path} does not exist or is not a directory")
    manifest = _read_manifest(path)
    on_disk = set(walk(path)) - {MANIFEST_NAME}
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
    spec = parse_spec(path / SPEC_NAME)
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
        check_name(name)
        if not isinstance(entry, dict) or not {"sha256", "size"} <= set(entry):
            raise UserError(f"{file}: entry {name!r} needs sha256 and size, got {entry!r}")
    if not isinstance(manifest.get("version"), str):
        raise UserError(f"{file} has no version")
    return manifest


def list_versions(out_root: str | Path) -> list[str]:
    """The finished versions under `out_root` (temp and set-aside directories are hidden), sorted by name."""
    out_root = Path(out_root)
    if not out_root.is_dir():
        return []
    return sorted(p.name for p in out_root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST_NAME).is_file())
