"""Reading Hugging Face checkpoints tensor by tensor, checking they can be merged, and writing the result.

Safetensors files are opened lazily, so shapes are checked from headers before any weight is read and the
merge holds one tensor per model at a time. `pytorch_model.bin` is accepted only through
`torch.load(weights_only=True)`: a pickle that needs arbitrary code is refused, not run.

The output folder is written under a temporary name beside the target and renamed into place at the end,
so a crash or a refused input never leaves a half-written model where a later step would pick it up.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from fusionrec.artifact import save_tensors  # noqa: F401  (part of this API: merges write through it)
from fusionrec.errors import UserError
from fusionrec.files import atomic_directory, sha256_file  # noqa: F401  (sha256_file is part of this API)
from fusionrec.model import sources

MERGED_WEIGHTS = "model.safetensors"
REPORT_FILE = "merge_report.json"
# In the order they are preferred when a folder has more than one.
_WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".ot")
_NOT_COPIED = {REPORT_FILE, "MANIFEST.json", "README.md"}


def resolve_source(source: str, encoders: Mapping[str, str] | None = None) -> Path:
    """Turn a merge source into a local model folder.

    `source` is an encoder name from the manifest (mapped through `encoders` to its source), or any model
    source `fusionrec.model.sources` understands: a local folder, `file://`, `pkg://`, `hf://`, `pvc://`, `s3://`,
    `gs://`.
    """
    if encoders and source in encoders:
        source = encoders[source]
    return sources.resolve_source(source)


class CheckpointReader:
    """One model folder's weights, by tensor name. Use as a context manager to close safetensors handles."""

    def __init__(self, folder: Path, label: str | None = None) -> None:
        self.folder = Path(folder)
        self.label = label or str(folder)
        self._stack = ExitStack()
        self._location: dict[str, Path] = {}  # tensor name -> file holding it
        self._handles: dict[Path, Any] = {}
        self._pickled: dict[Path, dict[str, torch.Tensor]] = {}
        self.files = self._find_files()
        for file in self.files:
            for name in self._names_in(file):
                self._location[name] = file

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()
        self._handles.clear()
        self._pickled.clear()

    def names(self) -> list[str]:
        return list(self._location)

    def __contains__(self, name: object) -> bool:
        return name in self._location

    def shape(self, name: str) -> tuple[int, ...]:
        file = self._location[name]
        if file.suffix == ".safetensors":
            return tuple(self._handle(file).get_slice(name).get_shape())
        return tuple(self._load_pickled(file)[name].shape)

    def is_float(self, name: str) -> bool:
        """Whether the tensor holds floating-point values, read from the header where possible."""
        file = self._location[name]
        if file.suffix == ".safetensors":
            dtype = self._handle(file).get_slice(name).get_dtype()  # "F32", "BF16", "F8_E4M3", "I64", ...
            return dtype.startswith("F") or dtype == "BF16"
        return self._load_pickled(file)[name].is_floating_point()

    def tensor(self, name: str) -> torch.Tensor:
        file = self._location[name]
        if file.suffix == ".safetensors":
            return self._handle(file).get_tensor(name)
        return self._load_pickled(file)[name]

    def config(self) -> dict[str, Any]:
        path = self.folder / "config.json"
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} is not valid JSON: {exc}") from None

    def _find_files(self) -> list[Path]:
        for candidate in _WEIGHT_FILES:
            path = self.folder / candidate
            if not path.is_file():
                continue
            if candidate.endswith(".index.json"):
                return self._shards(path)
            return [path]
        present = sorted(p.name for p in self.folder.iterdir()) if self.folder.is_dir() else []
        raise UserError(f"{self.label}: no weights in {self.folder} (looked for {', '.join(_WEIGHT_FILES)}; "
                        f"found {', '.join(present[:10]) or 'nothing'})",
                        fix="save the model with save_pretrained (safetensors preferred)")

    def _shards(self, index: Path) -> list[Path]:
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{index}: not a sharded-checkpoint index ({exc!r})") from None
        shards = []
        for shard in dict.fromkeys(weight_map.values()):
            path = self.folder / shard
            if not path.is_file():
                raise UserError(f"{index} names shard {shard!r}, which is missing from {self.folder}")
            shards.append(path)
        return shards

    def _names_in(self, file: Path) -> list[str]:
        if file.suffix == ".safetensors":
            return list(self._handle(file).keys())
        return list(self._load_pickled(file))

    def _handle(self, file: Path) -> Any:
        if file not in self._handles:
            try:
                self._handles[file] = self._stack.enter_context(safe_open(str(file), framework="pt", device="cpu"))
            except Exception as exc:  # safetensors raises its own error types for corrupt headers
                raise UserError(f"{self.label}: cannot read {file}: {exc}") from None
        return self._handles[file]

    def _load_pickled(self, file: Path) -> dict[str, torch.Tensor]:
        if file not in self._pickled:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True)
            except Exception as exc:  # UnpicklingError for anything beyond plain tensors, or a corrupt file
                raise UserError(f"{self.label}: {file} cannot be loaded as plain weights ({type(exc).__name__}); "
                                "pickles that need arbitrary code are refused",
                                fix="re-save the model with save_pretrained(safe_serialization=True)") from None
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise UserError(f"{self.label}: {file} is not a state dict of tensors")
            self._pickled[file] = state
        return self._pickled[file]


def check_compatible(readers: Sequence[CheckpointReader]) -> None:
    """Refuse checkpoints that cannot be merged element-wise: other architecture, tensor set or shapes.

    The first reader is the reference. Non-float tensors (buffers such as `embeddings.position_ids`) are
    copied from the reference, so they may be absent elsewhere: older checkpoints saved them, newer ones
    do not. Raises UserError naming the tensor and both shapes (or both model types).
    """
    reference, others = readers[0], readers[1:]
    ref_type = reference.config().get("model_type")
    for other in others:
        other_type = other.config().get("model_type")
        if ref_type and other_type and ref_type != other_type:
            raise UserError(f"cannot merge a {other_type!r} model ({other.label}) into a {ref_type!r} model "
                            f"({reference.label}): parameter merging needs one architecture")
        missing = [n for n in reference.names() if n not in other and reference.is_float(n)]
        if missing:
            raise UserError(f"tensor {missing[0]!r} is in {reference.label} but missing from {other.label}"
                            f"{_and_more(missing)}", fix="merge checkpoints of the same architecture and size")
        extra = [n for n in other.names() if n not in reference and other.is_float(n)]
        if extra:
            raise UserError(f"tensor {extra[0]!r} is in {other.label} but missing from {reference.label}"
                            f"{_and_more(extra)}", fix="merge checkpoints of the same architecture and size")
        for name in reference.names():
            if name not in other:
                continue
            ref_shape, other_shape = reference.shape(name), other.shape(name)
            if ref_shape != other_shape:
                raise UserError(f"tensor {name!r} has shape {list(other_shape)} in {other.label} but "
                                f"{list(ref_shape)} in {reference.label}",
                                fix="merge checkpoints of the same architecture and size")


def _and_more(names: list[str]) -> str:
    return f" (and {len(names) - 1} more)" if len(names) > 1 else ""


def check_out_dir(out_dir: Path, *, overwrite: bool) -> None:
    """Refuse to replace a non-empty folder unless asked; called before the (slow) merge starts."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(f"--out {out_dir} exists and is not empty", fix="choose a new folder or pass --overwrite")


@contextmanager
def atomic_dir(out_dir: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside `out_dir`; on success it replaces `out_dir`, on error it is removed."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite=overwrite)
    with atomic_directory(out_dir, replace=True) as staging:
        yield staging


def copy_side_files(reference: Path, dest: Path) -> list[str]:
    """Copy config, tokenizer and other non-weight files of the reference model; returns what was copied.

    Subfolders are copied only when they hold no weights (sentence-transformers' `1_Pooling/` is config;
    an `onnx/` folder holds the reference's own weights, which would not match the merged ones).
    """
    copied = []
    for entry in sorted(reference.iterdir()):
        if entry.name.startswith(".") or entry.name in _NOT_COPIED or _is_weights(entry):
            continue
        if entry.is_dir():
            if any(_is_weights(p) for p in entry.rglob("*")):
                continue
            shutil.copytree(entry, dest / entry.name)
        elif entry.is_file():
            shutil.copy2(entry, dest / entry.name)
        else:
            continue
        copied.append(entry.name)
    return copied


def _is_weights(path: Path) -> bool:
    return path.is_file() and (path.name.endswith(_WEIGHT_SUFFIXES) or path.name.endswith(".index.json"))


def write_json(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n", encoding="utf-8")
