"""The step cache of `fusionrec run`: one record per finished step, found by a content hash of its inputs.

A step's key is the sha256 of the spec sections it reads plus the hashes of its inputs (data files, model
folders, an earlier step's output), so a key names exactly one result. A record stores that result (small
JSON: metrics, or the sha256 of the files a step wrote) with a checksum; a step is skipped only when its key
has a record *and* the output the record describes is still there, unchanged. Deleting or editing an output
therefore makes the step run again, and no explicit invalidation exists to get wrong.

Records live in `<output>/.fusionrec/steps/<step>/<key>.json` (hidden: never listed as a model version).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fusionrec import __version__
from fusionrec.artifact import content_hash
from fusionrec.files import atomic_write_json, sha256_file

STATE_DIR = ".fusionrec"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def step_key(step: str, spec_parts: Any, inputs: Any) -> str:
    """sha256 of a step's name, the spec parts it depends on and its inputs' hashes (and fusionrec's version:
    a new release may compute something else from the same inputs)."""
    return content_hash({"step": step, "fusionrec": __version__, "spec": spec_parts}, {"inputs": inputs})


def _checksum(output: Any) -> str:
    return hashlib.sha256(json.dumps(output, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


@dataclass
class Record:
    """A finished step: its key, what it produced, and how long it took when it ran."""

    step: str
    key: str
    output: dict[str, Any]
    seconds: float
    finished: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


class StepCache:
    """Records of finished steps under `<root>/.fusionrec/steps/`; `enabled=False` finds nothing (a forced
    re-run) but still records, so the next run can skip again."""

    def __init__(self, root: Path, *, enabled: bool = True) -> None:
        self.folder = Path(root) / STATE_DIR / "steps"
        self.enabled = enabled

    def path(self, step: str, key: str) -> Path:
        return self.folder / _SAFE.sub("_", step) / f"{key}.json"

    def load(self, step: str, key: str) -> Record | None:
        """The record of (step, key), or None when there is none or it is unreadable or altered."""
        if not self.enabled:
            return None
        file = self.path(step, key)
        try:
            document = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if (not isinstance(document, dict) or document.get("key") != key
                or document.get("checksum") != _checksum(document.get("output"))):
            return None
        return Record(step=step, key=key, output=document["output"], seconds=float(document.get("seconds", 0.0)),
                      finished=str(document.get("finished", "")))

    def store(self, record: Record) -> None:
        atomic_write_json(self.path(record.step, record.key),
                          {"step": record.step, "key": record.key, "finished": record.finished,
                           "seconds": round(record.seconds, 3), "output": record.output,
                           "checksum": _checksum(record.output)})


# --- fingerprints of inputs -----------------------------------------------------------------------------


class FolderHasher:
    """Content hashes of files and folders, remembered by (path, size, mtime) so a 500 MB model folder is
    read once, not on every run. A file rewritten in place changes its mtime, so the memo never goes stale
    in practice; `fusionrec run --no-cache` re-reads everything."""

    def __init__(self, memo: Path | None, *, trust_stat: bool = True) -> None:
        self.memo_path = memo
        self.trust_stat = trust_stat
        self._memo: dict[str, str] = {}
        if memo is not None and memo.is_file():
            try:
                self._memo = json.loads(memo.read_text(encoding="utf-8"))
            except ValueError:
                self._memo = {}
        self._dirty = False

    def file(self, path: Path) -> str:
        stat = path.stat()
        token = f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
        if self.trust_stat and token in self._memo:
            return self._memo[token]
        digest = sha256_file(path)
        self._memo[token] = digest
        self._dirty = True
        return digest

    def files(self, paths: Iterable[Path], root: Path | None = None) -> str:
        """sha256 over (relative name, content hash) of every file; moving the folder keeps it unchanged."""
        digest = hashlib.sha256()
        for path in sorted(Path(p) for p in paths):
            name = path.relative_to(root).as_posix() if root is not None else path.name
            digest.update(f"{name}\0{self.file(path)}\n".encode())
        return digest.hexdigest()

    def folder(self, folder: Path) -> str:
        files = [Path(dirpath, name) for dirpath, _, names in os.walk(folder) for name in names
                 if "__pycache__" not in dirpath and not name.endswith(".pyc")]
        return self.files(files, root=folder)

    def path(self, path: Path) -> str:
        return self.folder(path) if path.is_dir() else self.file(path)

    def save(self) -> None:
        if self.memo_path is not None and self._dirty:
            atomic_write_json(self.memo_path, self._memo)
            self._dirty = False
