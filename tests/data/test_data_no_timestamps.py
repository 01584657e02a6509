"""Data without timestamps: `--map timestamp=` prepares it with timestamp 0, the card says so, and loading it
with `data.order: time` is refused (the chronological split would silently follow file order)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fusionrec.cli.data_cmd import _parse_mapping
from fusionrec.cli.main import cli
from fusionrec.data import load_dataset
from fusionrec.data.prepare import load_prepared, prepare_files, prepared_dir
from fusionrec.data.readers import read_atomic, read_files
from fusionrec.errors import UserError
from fusionrec.runner.inputs import data_files
from fusionrec.spec import DataSpec


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONREC_DATA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def baskets(tmp_path, write):
    """A shop's export with no time column at all (the `ts`-free kind: baskets, batch dumps)."""
    inter = write(tmp_path / "baskets.csv", "customer,sku\nc1,A\nc1,B\nc1,C\nc2,A\nc2,C\nc2,B\n")
    items = write(tmp_path / "products.csv", "sku,title,genres,year\nA,Apple,Fruit,\nB,Bread,,\nC,Cheese,,\n")
    return inter, items


def test_map_timestamp_to_nothing_is_a_flag_not_a_column():
    columns, timestamps = _parse_mapping(("user_id=customer", "timestamp=", "rating="))
    assert not timestamps and columns.user_id == "customer" and columns.rating is None
    assert _parse_mapping(("timestamp=ts",)) == (_parse_mapping(("timestamp=ts",))[0], True)
    assert _parse_mapping(("timestamp=ts",))[0].timestamp == "ts"
    with pytest.raises(UserError, match="user_id is required"):
        _parse_mapping(("user_id=",))


def test_cli_prepares_without_timestamps(baskets, home):
    inter, items = baskets
    result = CliRunner().invoke(cli, ["data", "prepare", "shop", "--interactions", str(inter), "--items", str(items),
                                      "--map", "user_id=customer", "--map", "item_id=sku", "--map", "timestamp="])
    assert result.exit_code == 0, result.output
    assert "no timestamps: use data.order none" in result.stdout and "1970" not in result.stdout
    card = json.loads((home / "shop" / "card.json").read_text())
    assert card["timestamps"] is False and card["leave_one_out"]["test"] == 2
    dataset = load_prepared("shop")
    assert dataset.interactions["timestamp"].tolist() == [0] * 6 and dataset.interactions["timestamp"].dtype == "int64"
    # the same file without --map timestamp= is refused: the contract's time column is missing
    refused = CliRunner().invoke(cli, ["data", "prepare", "shop2", "--interactions", str(inter),
                                       "--map", "user_id=customer", "--map", "item_id=sku"])
    assert refused.exit_code == 2 and "timestamp" in refused.stderr


def test_order_time_is_refused_and_order_none_loads(baskets, tmp_path):
    inter, items = baskets
    from fusionrec.spec import ColumnMapping

    prepare_files(inter, items, name="shop", columns=ColumnMapping(user_id="customer", item_id="sku"),
                  timestamps=False)
    direct = DataSpec(interactions=str(prepared_dir("shop") / "interactions.parquet"),
                      items=str(prepared_dir("shop") / "items.parquet"))
    for spec in (DataSpec(dataset="shop"), DataSpec(path=str(prepared_dir("shop"))), direct):
        for call in (load_dataset, data_files):
            with pytest.raises(UserError) as info:
                call(spec)
            assert info.value.field == "spec.data.order" and info.value.fix == "data.order: none"
            assert "without timestamps" in info.value.message
        assert len(load_dataset(spec.model_copy(update={"order": "none"})).interactions) == 6


def test_datasets_with_timestamps_keep_order_time(atomic_dir):
    prepare_files(atomic_dir / "tiny.inter", atomic_dir / "tiny.item", name="tiny")
    assert load_dataset(DataSpec(dataset="tiny")).interactions["timestamp"].tolist() == [100, 200, 150, 300]
    (prepared_dir("tiny") / "card.json").unlink()  # a copy from before cards: trusted to have timestamps
    assert len(load_dataset(DataSpec(dataset="tiny", order="time")).interactions) == 4


def test_atomic_file_without_a_time_field(tmp_path, write):
    folder = tmp_path / "atomic"
    folder.mkdir()
    write(folder / "b.inter", "user_id:token\titem_id:token\n1\t10\n1\t11\n")
    dataset = read_atomic(folder, "b", timestamps=False)
    assert dataset.interactions["timestamp"].tolist() == [0, 0]
    # a time column present but declared absent is ignored, not read
    write(folder / "c.csv", "user_id,item_id,timestamp\nu,i,99\n")
    assert read_files(folder / "c.csv", timestamps=False).interactions["timestamp"].tolist() == [0]


def test_movielens_always_has_timestamps(movielens_dir):
    with pytest.raises(UserError, match="MovieLens files always have a timestamp"):
        read_files(movielens_dir / "u.data", timestamps=False)
