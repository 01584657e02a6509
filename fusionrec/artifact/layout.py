"""What an artifact folder may hold: its file names, and the checks that both writing and reading apply
(names stay inside the folder, no pickles, no symlinks, a readable spec and safetensors header)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import yaml
from pydantic import ValidationError

from fusionrec.errors import UserError, format_validation_error
from fusionrec.spec import FusionRecommenderSpec, upgrade_artifact_spec

FORMAT_VERSION = 1
MANIFEST_NAME = "MANIFEST.json"
SPEC_NAME = "spec.yaml"
WEIGHTS_NAME = "model.safetensors"
METRICS_NAME = "metrics.json"
ITEM_INDEX_NAME = "item_index.npy"
ITEMS_NAME = "items.parquet"
ONNX_NAME = "encoder.onnx"
PLAN_NAME = "encoder.plan"
ANN_INDEX_NAME = "item_index.faiss"  # faiss's own format (faiss.write_index), never a pickle
REQUIRED = (SPEC_NAME, WEIGHTS_NAME)
# Formats that unpickle on load (torch.save, pickle, joblib, Lightning checkpoints).
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"})

# bytes to write, a file or folder to copy, or a writer called with the destination path (for a folder
# entry such as tokenizers/<encoder>, e.g. `tokenizer.save_pretrained`).
FileSource = bytes | Path | Callable[[Path], None]


def check_name(name: str) -> None:
    """Artifact-relative POSIX paths only: a name must never reach outside the version's folder."""
    parts = PurePosixPath(name).parts if isinstance(name, str) else ()
    if (not parts or name.startswith("/") or "\\" in name or any(p in ("..", ".") for p in name.split("/"))
            or PurePosixPath(name).as_posix() == MANIFEST_NAME):
        raise UserError(f"artifact file name {name!r} is not allowed: use a relative path such as "
                        f"'encoder.onnx' or 'tokenizers/minilm' (no '..' and not {MANIFEST_NAME})")
    if PurePosixPath(name).suffix in PICKLE_SUFFIXES:
        raise UserError(f"artifact file {name!r}: pickled files are refused; save weights with safetensors")


def walk(root: Path) -> list[str]:
    """Every regular file under root, as sorted relative POSIX paths; symlinks are refused."""
    names = []
    for folder, dirs, files in os.walk(root):
        for entry in [*dirs, *files]:
            if os.path.islink(os.path.join(folder, entry)):
                link = Path(folder, entry).relative_to(root).as_posix()
                raise UserError(f"artifact {root}: {link} is a symlink; artifacts hold regular files only")
        names += [Path(folder, f).relative_to(root).as_posix() for f in files]
    return sorted(names)


def parse_spec(path: Path) -> FusionRecommenderSpec:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid YAML: {exc}") from None
    if isinstance(document, dict) and "kind" in document and "spec" in document:
        document = document["spec"]  # a whole manifest (apiVersion/kind/metadata/spec) is accepted too
    try:
        return FusionRecommenderSpec.model_validate(upgrade_artifact_spec(document))
    except ValidationError as exc:
        lines = "\n".join(f"  {field}: {msg}" for field, msg in format_validation_error(exc, prefix="spec"))
        raise UserError(f"{path} is not a valid FusionRecommender spec:\n{lines}") from None


def check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            handle.keys()
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise UserError(f"{WEIGHTS_NAME} is not a readable safetensors file: {exc}", field=WEIGHTS_NAME,
                        fix="save the weights with safetensors.torch.save_file") from None
