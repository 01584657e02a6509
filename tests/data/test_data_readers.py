"""Each reader on tiny files: the contract's columns and dtypes, RecBole's names mapped, file order kept."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fusionrec.data import load_dataset, read_files
from fusionrec.data.readers import AtomicFiles, detect_format, read_atomic, read_movielens, read_table
from fusionrec.data.schema import ITEM, RATING, TIME, USER
from fusionrec.spec import ColumnMapping, DataSpec


def _check_contract(dataset):
    inter = dataset.interactions
    assert inter[USER].map(type).eq(str).all() and inter[ITEM].map(type).eq(str).all()
    assert inter[TIME].dtype == np.int64
    if RATING in inter:
        assert inter[RATING].dtype == np.float64
    assert inter[ITEM].isin(dataset.items[ITEM]).all()


def test_atomic_folder_maps_recbole_names_and_joins_genres(atomic_dir):
    dataset = read_atomic(atomic_dir, "tiny")
    _check_contract(dataset)
    assert dataset.name == "tiny"
    assert list(dataset.interactions[ITEM]) == ["10", "11", "10", "12"]  # file order
    assert list(dataset.interactions[TIME]) == [100, 200, 150, 300]
    assert list(dataset.interactions[RATING]) == [4.0, 3.0, 5.0, 2.0]
    items = dataset.items.set_index(ITEM)
    assert list(dataset.items.columns) == [ITEM, "title", "year", "genres"]
    assert items.loc["10", "title"] == "Toy Story"  # token_seq text keeps its spaces
    assert items.loc["10", "genres"] == "Animation, Children's, Comedy"
    assert pd.isna(items.loc["11", "year"]) and pd.isna(items.loc["12", "genres"])
    assert len(dataset.items) == 4  # the never-interacted item 13 stays in the catalogue
    assert list(dataset.users.columns) == [USER, "age", "gender"]


def test_atomic_explicit_paths_and_guessed_name(atomic_dir):
    by_paths = read_atomic(inter=atomic_dir / "tiny.inter", item=atomic_dir / "tiny.item")
    assert by_paths.users is None and len(by_paths.interactions) == 4
    files = AtomicFiles.in_folder(atomic_dir)
    assert files.inter.name == "tiny.inter" and files.user is not None


def test_atomic_float_and_float_seq_features(tmp_path, write):
    write(tmp_path / "x.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\ti\t5\n")
    write(tmp_path / "x.item", "item_id:token\tprice:float\temb:float_seq\ti\t2.5\t0.1 0.2\n".replace("\ti\t", "\ni\t"))
    dataset = read_atomic(tmp_path, "x")
    assert dataset.items.loc[0, "price"] == 2.5
    assert list(dataset.items.loc[0, "emb"]) == [0.1, 0.2]
    assert RATING not in dataset.interactions  # no rating column: none invented


def test_movielens_raw_latin1_title_year_and_genre_flags(movielens_dir):
    dataset = read_movielens(movielens_dir)
    _check_contract(dataset)
    items = dataset.items.set_index(ITEM)
    assert items.loc["1", "title"] == "Toy Story" and items.loc["1", "year"] == "1995"
    assert items.loc["1", "genres"] == "Animation, Children's, Comedy"
    assert items.loc["2", "title"] == "Misérables, Les"  # decoded as latin-1
    assert pd.isna(items.loc["2", "genres"])  # only the "unknown" flag: no genre text
    assert pd.isna(items.loc["3", "title"]) and pd.isna(items.loc["3", "year"])  # placeholder item
    assert list(dataset.users.columns) == [USER, "age", "gender", "occupation", "zip_code"]
    assert list(dataset.interactions[TIME]) == [874965758, 876893171, 888550871]


def test_csv_with_mapping_delimiter_encoding_and_iso_dates(tmp_path, write):
    inter = write(tmp_path / "orders.csv",
                  "customer;sku;when;stars;extra\n"
                  "c1;A;2024-01-01T00:00:00Z;5;x\n"
                  "c2;B;2024-01-01T00:01:00Z;3;y\n", encoding="latin-1")
    items = write(tmp_path / "products.csv", "sku;name;descr\nA;Café;Strong\nB;Tea;\n", encoding="latin-1")
    mapping = ColumnMapping(user_id="customer", item_id="sku", timestamp="when", rating="stars")
    dataset = read_table(inter, items, delimiter=";", encoding="latin-1", columns=mapping)
    _check_contract(dataset)
    assert list(dataset.interactions.columns) == [USER, ITEM, TIME, RATING]
    assert list(dataset.interactions[TIME]) == [1704067200, 1704067260]
    assert dataset.items.loc[0, "name"] == "Café" and pd.isna(dataset.items.loc[1, "descr"])


def test_parquet_round_trip_with_integer_ids_and_datetimes(tmp_path):
    pd.DataFrame({"user_id": [7, 8], "item_id": [1, 2], "timestamp": pd.to_datetime(["2020-01-01", "2020-01-02"]),
                  "label": [1, 0]}).to_parquet(tmp_path / "inter.parquet")
    pd.DataFrame({"item_id": [1, 2, 3], "title": ["a", "b", None]}).to_parquet(tmp_path / "items.parquet")
    dataset = read_table(tmp_path / "inter.parquet", tmp_path / "items.parquet",
                         columns=ColumnMapping(rating=None, label="label"))
    _check_contract(dataset)
    assert list(dataset.interactions[USER]) == ["7", "8"] and list(dataset.items[ITEM]) == ["1", "2", "3"]
    assert list(dataset.interactions[TIME]) == [1577836800, 1577923200]
    assert dataset.interactions["label"].dtype == np.int8


def test_contract_named_label_and_rating_columns_need_no_mapping(tmp_path, write):
    plain = write(tmp_path / "plain.csv", "user_id,item_id,timestamp,label\nu,a,1,1\nu,b,2,0\n")
    dataset = read_table(plain)
    assert list(dataset.interactions.columns) == [USER, ITEM, TIME, "label"]
    assert list(dataset.interactions["label"]) == [1, 0]


def test_without_items_file_the_catalogue_is_the_interacted_items(tmp_path, write):
    inter = write(tmp_path / "i.csv", "user_id,item_id,timestamp\nu1,b,1\nu1,a,2\nu2,b,3\n")
    dataset = read_table(inter)
    assert list(dataset.items[ITEM]) == ["b", "a"] and list(dataset.items.columns) == [ITEM]


@pytest.mark.parametrize("name, expected", [("x.parquet", "parquet"), ("x.inter", "atomic"), ("u.data", "movielens"),
                                            ("x.csv", "csv")])
def test_detect_format_by_name(tmp_path, name, expected):
    assert detect_format(tmp_path / name) == expected


def test_detect_format_by_contents(tmp_path, atomic_dir, write):
    plain = write(tmp_path / "export.txt", "user_id,item_id,timestamp\n")
    typed = write(tmp_path / "export.dat", (atomic_dir / "tiny.inter").read_text())
    assert detect_format(plain) == "csv" and detect_format(typed) == "atomic"
    assert detect_format(atomic_dir) == "atomic"


def test_load_dataset_dispatch_max_users_and_text(atomic_dir, movielens_dir):
    spec = DataSpec(interactions=str(atomic_dir / "tiny.inter"), items=str(atomic_dir / "tiny.item"), max_users=1)
    dataset = load_dataset(spec)
    assert set(dataset.interactions[USER]) == {"1"} and len(dataset.interactions) == 3
    assert len(dataset.items) == 4  # the whole catalogue is kept for full ranking
    assert dataset.items.set_index(ITEM).loc["11", "text"] == "Heat. Genres: Action, Crime"
    relative = DataSpec(path=str(movielens_dir), interactions="u.data", items="u.item")
    assert load_dataset(relative).n_items == 3
    assert read_files(movielens_dir).n_users == 2  # a MovieLens folder is auto-detected
