"""Running one cached step: look its key up, check the recorded output is still there, else do the work and
record it. Every step of `fusionrec run` goes through `run_step`, so "cached" means the same thing everywhere.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fusionrec.artifact import MANIFEST_NAME, Artifact, FileSource, add_files, load_artifact
from fusionrec.errors import UserError
from fusionrec.runner.cache import FolderHasher, Record, StepCache
from fusionrec.spec import FusionRecommenderSpec, Manifest

Status = Literal["ran", "cached", "failed"]


@dataclass
class StepResult:
    """One line of the run's report."""

    name: str
    status: Status
    seconds: float
    key: str | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "seconds": round(self.seconds, 2), "key": self.key,
                "detail": self.detail}


@dataclass
class Done:
    """What a step's work returns: the output to record and a note for the report."""

    output: dict[str, Any]
    detail: str = ""


@dataclass
class RunContext:
    """What every step reads: the manifest, where outputs go, the cache, and how to talk to the user."""

    manifest: Manifest
    root: Path
    cache: StepCache
    hasher: FolderHasher
    embeddings: Path
    say: Callable[[str], None]
    steps: list[StepResult] = field(default_factory=list)
    _artifacts: dict[str, Artifact] = field(default_factory=dict)
    _data: Any = None

    @property
    def spec(self) -> FusionRecommenderSpec:
        return self.manifest.spec

    @property
    def target(self) -> Path:
        """This version's artifact folder."""
        return self.root / self.spec.version

    def data(self) -> tuple[Any, Any]:
        """(dataset, split) of the spec's data and task, loaded once per run."""
        if self._data is None:
            from fusionrec.data import load_dataset
            from fusionrec.protocol import make_split

            dataset = load_dataset(self.spec.data)
            self._data = (dataset, make_split(dataset, self.spec.task.type, self.spec.data.order))
        return self._data

    # --- artifacts ------------------------------------------------------------------------------------------

    def artifact(self, path: Path) -> Artifact | None:
        """The verified artifact at `path` (every file hashed once per run), or None when absent or broken."""
        manifest = path / MANIFEST_NAME
        if not manifest.is_file():
            return None
        token = hashlib.sha256(manifest.read_bytes()).hexdigest()
        if token not in self._artifacts:
            try:
                self._artifacts[token] = load_artifact(path)
            except UserError as exc:
                self.say(f"note: {path} does not verify, it will be rebuilt ({exc.message.splitlines()[0]})")
                return None
        return self._artifacts[token]

    def refresh(self, path: Path) -> Artifact:
        """Re-read an artifact this process has just written (sizes checked; its files were hashed as written)."""
        fresh = load_artifact(path, verify=False)
        self._artifacts[hashlib.sha256((path / MANIFEST_NAME).read_bytes()).hexdigest()] = fresh
        return fresh

    def add_files(self, path: Path, files: Mapping[str, FileSource]) -> dict[str, str]:
        """Add (or replace) files in an artifact; returns their sha256 as now recorded in its manifest."""
        add_files(path, files, replace=True)
        fresh = self.refresh(path)
        return {name: fresh.manifest["files"][name]["sha256"] for name in files}


def has_files(artifact: Artifact | None, files: Mapping[str, str]) -> bool:
    """Whether a verified artifact holds every file with the recorded sha256."""
    if artifact is None:
        return False
    listed = artifact.manifest["files"]
    return all(name in listed and listed[name]["sha256"] == digest for name, digest in files.items())


def files_hash(files: Mapping[str, str]) -> str:
    """One hash for a set of (name, sha256): what later steps take as "the output of this step"."""
    return hashlib.sha256(json.dumps(dict(sorted(files.items())), separators=(",", ":")).encode()).hexdigest()


def run_step(ctx: RunContext, name: str, key: str, work: Callable[[], Done],
             verify: Callable[[Record], bool] = lambda record: True, *, announce: str | None = None,
             cached_detail: str | None = None) -> Record:
    """Skip the step when `key` has a record whose output `verify` accepts; else run `work` and record it."""
    started = time.perf_counter()
    record = ctx.cache.load(name, key)
    if record is not None and verify(record):
        ctx.steps.append(StepResult(name, "cached", time.perf_counter() - started, key,
                                    cached_detail or f"finished {record.finished}"))
        ctx.say(_line(ctx.steps[-1]))
        return record
    if announce:
        ctx.say(f"   ...  {name:<22} {announce}")
    try:
        done = work()
    except BaseException as exc:
        ctx.steps.append(StepResult(name, "failed", time.perf_counter() - started, key, _short(exc)))
        ctx.say(_line(ctx.steps[-1]))
        raise
    seconds = time.perf_counter() - started
    record = Record(step=name, key=key, output=done.output, seconds=seconds)
    ctx.cache.store(record)
    ctx.steps.append(StepResult(name, "ran", seconds, key, done.detail))
    ctx.say(_line(ctx.steps[-1]))
    return record


def record_step(ctx: RunContext, name: str, work: Callable[[], tuple[bool, str]]) -> bool:
    """An uncached step (serving, rolling out), timed and reported like the others; `work` returns (ok,
    detail), where not ok is an outcome rather than an exception (a candidate that was rolled back)."""
    started = time.perf_counter()
    try:
        ok, detail = work()
    except BaseException as exc:
        ctx.steps.append(StepResult(name, "failed", time.perf_counter() - started, None, _short(exc)))
        ctx.say(_line(ctx.steps[-1]))
        raise
    ctx.steps.append(StepResult(name, "ran" if ok else "failed", time.perf_counter() - started, None, detail))
    ctx.say(_line(ctx.steps[-1]))
    return ok


def record_cached(ctx: RunContext, name: str, key: str | None, detail: str) -> None:
    """A step whose result exists elsewhere than in this run's cache (a version already published), reported as
    cached like any other skipped step."""
    ctx.steps.append(StepResult(name, "cached", 0.0, key, detail))
    ctx.say(_line(ctx.steps[-1]))


def _short(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
    return text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__


def _line(step: StepResult) -> str:
    mark = {"ran": "ran", "cached": "cached", "failed": "FAILED"}[step.status]
    return f"{mark:>6}  {step.name:<22} {step.seconds:7.1f}s  {step.detail}".rstrip()
