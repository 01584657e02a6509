"""Crash-safe file writes and content hashes, shared by every module that stores something.

Anything the project stores (prepared data, model folders, merged checkpoints, artifacts, reports) is written
to a temp path beside its destination and renamed into place, so a crash never leaves a half-written result
where a reader would find it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_CHUNK = 8 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def make_readable(folder: Path) -> None:
    """Some writers (mkdtemp, safetensors) create private files; stored folders are shared with other readers."""
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, 0o755 if path.is_dir() else 0o644)


@contextmanager
def atomic_directory(dest: Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temp folder beside `dest` that becomes `dest` in one rename, only if the block finishes.

    With replace=False an existing `dest` (another worker got there first) wins and the temp folder is
    discarded; with replace=True the old folder is moved aside, then deleted once the new one is in place.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield staging
        make_readable(staging)
        if dest.exists() and not replace:
            return
        retired = None
        if dest.exists():
            retired = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(dest, retired)
        os.rename(staging, dest)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def entry_lock(dest: Path) -> Iterator[None]:
    """One writer per cache entry `dest` on this machine (a lock file beside it): Ray workers and concurrent runs
    that need the same entry wait, then find it finished instead of each writing a copy. Without fcntl (Windows)
    no lock: each writes a whole copy and the last rename wins, which is still never half an entry."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(dest.parent / f".{dest.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write `path` so readers see the old content or the new, never a torn file (`mode`: 0o600 for secrets;
    the temporary file is private from its creation, so a secret is never readable by others on the way)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, payload: Any, *, sort_keys: bool = False) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=sort_keys, default=str) + "\n")
