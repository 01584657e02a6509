"""Every registered baseline builds, fits and evaluates through the protocol runner on tiny data."""

import json

import pytest
import torch

from fusionrec.baselines import BASELINES, get_baseline
from fusionrec.errors import UserError
from fusionrec.files import atomic_write_json
from fusionrec.train.evaluate import evaluate_baselines

import planted

torch.set_num_threads(1)  # 2-core machines: a thread pool makes these tiny ops slower, not faster


@pytest.fixture(scope="module")
def dataset():
    return planted.ctr("item_quality", n_users=30, n_items=20, per_user=8)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_each_baseline_runs_the_protocol(name, dataset):
    results = evaluate_baselines(dataset, [name], seeds=[1, 2], quick=True)
    assert [(r.baseline, r.seed) for r in results.runs] == [(name, 1), (name, 2)]
    row = results.summary()[name]
    assert row["task"] == BASELINES[name].task
    key = "test_ndcg@10" if row["task"] == "ranking" else "test_auc"
    assert 0.0 <= row[key]["mean"] <= 1.0 and row[key]["std"] >= 0.0
    assert name in results.render()


def test_unknown_baseline_is_a_user_error():
    with pytest.raises(UserError, match="known: pop, bpr"):
        get_baseline("svd")


def test_results_json_is_written_whole(tmp_path, dataset):
    results = evaluate_baselines(dataset, ["pop", "lr"], seeds=[3], quick=True)
    target = tmp_path / "out" / "results.json"
    atomic_write_json(target, results.to_json())
    payload = json.loads(target.read_text())
    assert set(payload["summary"]) == {"pop", "lr"}
    assert payload["runs"][0]["seed"] == 3
    assert [p.name for p in target.parent.iterdir()] == ["results.json"]  # no temporary file left behind
    assert target.stat().st_mode & 0o777 == 0o644


def test_seeds_change_the_model_not_the_data(dataset):
    a = evaluate_baselines(dataset, ["bpr"], seeds=[1], quick=True).runs[0]
    b = evaluate_baselines(dataset, ["bpr"], seeds=[1], quick=True).runs[0]
    c = evaluate_baselines(dataset, ["bpr"], seeds=[2], quick=True).runs[0]
    assert a.test == b.test  # same seed, same numbers
    assert a.test != c.test
