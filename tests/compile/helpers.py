"""Small helpers shared by the compile tests."""

from __future__ import annotations

import hashlib
from pathlib import Path


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under an artifact folder, MANIFEST.json included."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def siblings(folder: Path) -> list[str]:
    """Entries next to the artifact folder: a failed compile must leave no temp directory behind."""
    return sorted(p.name for p in folder.parent.iterdir())
