"""The real MovieLens-100K, end to end: locate (wheel, installed recbole, cache or pip), prepare, read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fusionrec.cli.main import cli
from fusionrec.data import load_dataset
from fusionrec.data.datasets import RECBOLE_VERSION, data_home, locate_ml100k
from fusionrec.data.prepare import load_prepared
from fusionrec.data.splits import leave_one_out
from fusionrec.errors import UserError
from fusionrec.spec import DataSpec

LOCAL_WHEEL = Path(f"/tmp/recbole_whl/recbole-{RECBOLE_VERSION}-py3-none-any.whl")


@pytest.mark.integration
def test_prepare_ml100k(tmp_path, monkeypatch):
    if LOCAL_WHEEL.is_file():
        path = str(LOCAL_WHEEL)
        monkeypatch.setenv("FUSIONREC_DATA_HOME", str(tmp_path / "home"))
    else:  # the user's own cache, an installed recbole, or a download
        try:
            path = str(locate_ml100k().folder)
        except UserError as exc:
            pytest.skip(f"MovieLens-100K not found and not downloadable: {exc}")
        monkeypatch.setenv("FUSIONREC_DATA_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(cli, ["data", "prepare", "ml-100k", "--path", path, "--json", "--no-download"])
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout)
    assert (card["users"], card["items"], card["interactions"]) == (943, 1682, 100_000)
    assert card["leave_one_out"] == {"train": 98_114, "valid": 943, "test": 943, "users_not_evaluated": 0}
    assert card["interactions_per_user"]["min"] == 20 and card["text_coverage"] > 0.99

    dataset = load_dataset(DataSpec())  # served from the prepared Parquet in the data home
    assert Path(card["location"]) == data_home() / "ml-100k"
    assert (dataset.n_users, dataset.n_items, len(dataset.interactions)) == (943, 1682, 100_000)
    split = leave_one_out(dataset)
    assert (len(split.valid), len(split.test)) == (943, 943)
    toy = dataset.items.set_index("item_id").loc["1"]
    assert toy["text"] == "Toy Story. Genres: Animation, Children's, Comedy. Year: 1995"
    words = set(" ".join(dataset.items["text"]).replace(".", " ").split())
    assert not words & {"nan", "None", "unkonwn", "unknown"}
    first = dataset.interactions.iloc[0]
    assert (first["user_id"], first["item_id"], first["rating"], first["timestamp"]) == ("196", "242", 3.0, 881250949)
    assert load_prepared("ml-100k").users.shape == (943, 5)
