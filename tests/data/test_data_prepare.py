"""`fusionrec data prepare`: Parquet written atomically, read back identical, a card, exit code 2 on bad data."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from fusionrec.cli.main import cli
from fusionrec.data import load_dataset
from fusionrec.data.prepare import FILES, DataCard, data_card, load_prepared, prepare_files
from fusionrec.data.readers import read_atomic
from fusionrec.errors import UserError
from fusionrec.spec import DataSpec


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONREC_DATA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_card_numbers(atomic_dir):
    card = data_card(read_atomic(atomic_dir, "tiny"))
    assert (card.users, card.items, card.interactions) == (2, 4, 4)
    assert card.density == pytest.approx(4 / 8)
    assert card.interactions_per_user == {"min": 1.0, "median": 2.0, "max": 3.0}
    assert card.leave_one_out == {"train": 2, "valid": 1, "test": 1, "users_not_evaluated": 1}
    assert card.time_range["first"] == "1970-01-01 00:01:40 UTC"
    assert card.text_coverage == 1.0 and card.field_coverage["year"] == 0.75


def test_prepare_files_round_trip(atomic_dir, home):
    _, card = prepare_files(atomic_dir / "tiny.inter", atomic_dir / "tiny.item", atomic_dir / "tiny.user",
                                  name="tiny")
    assert sorted(p.name for p in (home / "tiny").iterdir()) == sorted([*FILES.values(), "card.json"])
    again = load_prepared("tiny")
    original = read_atomic(atomic_dir, "tiny")
    pd.testing.assert_frame_equal(again.interactions, original.interactions, check_dtype=False)
    assert again.interactions["timestamp"].dtype == "int64" and again.interactions["rating"].dtype == "float64"
    assert again.items.set_index("item_id").loc["12", "text"] == "Casino. Year: 1995"
    assert DataCard(**json.loads((home / "tiny" / "card.json").read_text())).to_dict() == card.to_dict()


def test_load_prepared_missing_says_how_to_prepare():
    with pytest.raises(UserError, match="fusionrec data prepare ghost"):
        load_prepared("ghost")


def test_load_dataset_reads_prepared_ml100k_without_touching_raw_files(atomic_dir, home):
    prepare_files(atomic_dir / "tiny.inter", atomic_dir / "tiny.item", name="ml-100k")
    dataset = load_dataset(DataSpec(item_text_template="{title} ({year})"))
    assert dataset.n_items == 4 and dataset.items["text"].tolist()[:2] == ["Toy Story (1995)", ""]


def test_cli_prepare_custom_export_prints_card(tmp_path, write, home):
    inter = write(tmp_path / "orders.csv", "customer;sku;ts;stars\nc1;A;1;5\nc1;B;2;4\nc1;C;3;1\n", "latin-1")
    items = write(tmp_path / "products.csv", "sku;title;genres;year\nA;Café;Food;2001\nB;Tea;;\nC;Jam;Food;\n",
                  "latin-1")
    result = CliRunner().invoke(cli, ["data", "prepare", "shop", "--interactions", str(inter), "--items", str(items),
                                      "--delimiter", ";", "--encoding", "latin-1", "--map", "user_id=customer",
                                      "--map", "item_id=sku", "--map", "timestamp=ts", "--map", "rating=stars",
                                      "--json"])
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout)
    assert (card["users"], card["items"], card["interactions"]) == (1, 3, 3)
    assert card["leave_one_out"] == {"train": 1, "valid": 1, "test": 1, "users_not_evaluated": 0}
    texts = load_prepared("shop").items["text"].tolist()
    assert texts == ["Café. Genres: Food. Year: 2001", "Tea", "Jam. Genres: Food"]


def test_cli_bad_file_exits_2_naming_file_line_and_field(tmp_path, write):
    inter = write(tmp_path / "inter.csv", "user_id,item_id,rating,timestamp\nu1,i1,4,10\nu1,i2,four,20\n")
    result = CliRunner().invoke(cli, ["data", "prepare", "--interactions", str(inter)])
    assert result.exit_code == 2
    assert f"{inter}, line 3, field 'rating'" in result.stderr and "'four' is not a number" in result.stderr


@pytest.mark.parametrize("args, words", [
    (["data", "prepare", "nosuch"], "unknown dataset 'nosuch'"),
    (["data", "prepare", "--interactions", "x.csv", "--map", "customer"], "FIELD=COLUMN"),
    (["data", "prepare", "ml-100k", "--items", "x.csv"], "ml-100k takes only --path"),
])
def test_cli_usage_errors_exit_2(args, words):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and words in result.stderr
