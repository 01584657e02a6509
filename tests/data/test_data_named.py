"""`data.dataset: NAME` and `data.path` as first-class sources: any prepared name loads, an unknown one says how
to prepare it, a prepared folder loads under its real name, and the runner's data key reads the same files."""

from __future__ import annotations

import shutil

import pytest

from fusionrec.data import files_name, load_dataset
from fusionrec.data.prepare import FILES, prepare_files, prepared_dir
from fusionrec.errors import UserError
from fusionrec.runner.inputs import data_files
from fusionrec.spec import DataSpec


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONREC_DATA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def shop(atomic_dir):
    """The tiny atomic dataset prepared as `shop` in the data home."""
    prepare_files(atomic_dir / "tiny.inter", atomic_dir / "tiny.item", atomic_dir / "tiny.user", name="shop")
    return prepared_dir("shop")


def test_any_prepared_name_loads(shop):
    dataset = load_dataset(DataSpec(dataset="shop"))
    assert dataset.name == "shop" and len(dataset.interactions) == 4 and dataset.n_items == 4
    assert data_files(DataSpec(dataset="shop")) == [shop / name for name in FILES.values()]


def test_unknown_unprepared_name_says_how_to_prepare_it(home):
    for call in (load_dataset, data_files):
        with pytest.raises(UserError) as info:
            call(DataSpec(dataset="shop"))
        assert info.value.field == "spec.data.dataset"
        assert info.value.fix == "fusionrec data prepare shop --interactions FILE --items FILE"
        assert "'shop' is not prepared" in info.value.message and "ml-1m" in info.value.message


def test_built_in_not_prepared_yet_has_no_files_to_key(home):
    assert data_files(DataSpec(dataset="ml-1m")) is None and data_files(DataSpec()) is None


def test_prepared_folder_as_path_loads_under_its_real_name(shop, tmp_path):
    copy = tmp_path / "exports" / "v2"  # the folder's own name is not the dataset's
    shutil.copytree(shop, copy)
    dataset = load_dataset(DataSpec(path=str(copy)))
    assert dataset.name == "shop" and len(dataset.interactions) == 4 and dataset.users is not None
    assert data_files(DataSpec(path=str(copy))) == [copy / name for name in FILES.values()]
    # its Parquet files named explicitly: still "shop", never the file's stem "interactions"
    spec = DataSpec(path=str(copy), interactions="interactions.parquet", items="items.parquet")
    assert load_dataset(spec).name == "shop" and files_name(spec) == "shop"


def test_files_name(tmp_path, write):
    folder = tmp_path / "acme"
    folder.mkdir()
    write(folder / "interactions.csv", "user_id,item_id,timestamp\nu,i,1\n")
    write(folder / "orders.csv", "user_id,item_id,timestamp\nu,i,1\n")
    assert files_name(DataSpec(path=str(folder), interactions="interactions.csv")) == "acme"
    assert files_name(DataSpec(path=str(folder), interactions="orders.csv")) == "orders"
    assert files_name(DataSpec(dataset="books", path=str(folder), interactions="orders.csv")) == "books"
    assert load_dataset(DataSpec(path=str(folder), interactions="interactions.csv")).name == "acme"


def test_path_that_is_neither_prepared_nor_a_built_ins_files(tmp_path):
    folder = tmp_path / "loose"
    folder.mkdir()
    for call in (load_dataset, data_files):
        with pytest.raises(UserError) as info:
            call(DataSpec(dataset="shop", path=str(folder)))
        assert info.value.field == "spec.data.path" and "not a prepared dataset" in info.value.message


def test_prepared_text_template_is_kept_unless_the_spec_sets_one(tmp_path, write):
    inter = write(tmp_path / "orders.csv", "user_id,item_id,timestamp\nu,A,1\nu,B,2\n")
    items = write(tmp_path / "products.csv", "item_id,title,brand\nA,Apple,Acme\nB,Bread,Bakery\n")
    prepare_files(inter, items, name="shop", template="{title} by {brand}")
    assert load_dataset(DataSpec(dataset="shop")).items["text"].tolist() == ["Apple by Acme", "Bread by Bakery"]
    chosen = load_dataset(DataSpec(dataset="shop", item_text_template="{brand}"))
    assert chosen.items["text"].tolist() == ["Acme", "Bakery"]
