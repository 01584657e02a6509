"""`fusionrec evaluate --baselines` end to end on a tiny dataset (the loader is swapped for planted data)."""

import json

import pytest
import torch
from click.testing import CliRunner

import fusionrec.data
from fusionrec.cli.main import cli

import planted

torch.set_num_threads(1)  # 2-core machines: a thread pool makes these tiny ops slower, not faster


@pytest.fixture
def tiny_data(monkeypatch):
    seen = []

    def load(spec):
        seen.append(spec)
        return planted.ctr("item_quality", n_users=30, n_items=20, per_user=8)

    monkeypatch.setattr(fusionrec.data, "load_dataset", load)
    return seen


def test_quick_run_prints_tables_and_writes_json(tiny_data, tmp_path):
    out = tmp_path / "results.json"
    result = CliRunner().invoke(cli, ["evaluate", "--baselines", "--only", "pop,bpr,lr,fm", "--seeds", "1,2",
                                      "--quick", "--max-users", "30", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "| pop |" in result.output and "| fm |" in result.output
    assert "test ndcg@10" in result.output and "test auc" in result.output
    payload = json.loads(out.read_text())
    assert payload["seeds"] == [1, 2] and payload["quick"] is True
    assert set(payload["summary"]) == {"pop", "bpr", "lr", "fm"}
    assert tiny_data[0].max_users == 30 and tiny_data[0].dataset == "ml-100k"


@pytest.mark.parametrize("args, message", [
    (["--only", "pop,svd"], "unknown baseline 'svd'"),
    (["--seeds", "20x"], "--seeds must be comma-separated integers"),
    (["--only", ","], "--only is empty"),
])
def test_bad_options_exit_2_before_reading_data(tiny_data, args, message):
    result = CliRunner().invoke(cli, ["evaluate", "--baselines", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert tiny_data == []


def test_nothing_to_evaluate_is_a_user_error(tiny_data):
    result = CliRunner().invoke(cli, ["evaluate"])
    assert result.exit_code == 2 and "--baselines" in result.output
