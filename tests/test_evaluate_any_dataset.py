"""`fusionrec evaluate --baselines` on any prepared dataset: a name, an order, a manifest's data and evaluation
sections with options laid over them; and the baselines' epoch budget (evaluation.baselineEpochs, else by size)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

import fusionrec.train.evaluate as evaluate_module
from fusionrec.baselines.registry import BASELINES
from fusionrec.cli.evaluate_cmd import plan
from fusionrec.cli.main import cli
from fusionrec.data import load_dataset
from fusionrec.errors import UserError
from fusionrec.train.evaluate import QUICK_EPOCHS, baseline_budget, baseline_training, run_baseline

torch.set_num_threads(1)  # 2-core machines

MANIFEST = """\
apiVersion: fusionrec.io/v1alpha1
kind: FusionRecommender
metadata: {name: shop}
spec:
  version: v1
  encoders: [{name: a, source: "pkg://nothing_needed"}]
  data: {dataset: shop, order: none, maxUsers: 5, itemTextTemplate: "{title}"}
  evaluation: {baselines: [pop, bpr], baselineEpochs: 3}
"""


@pytest.fixture
def shop(tmp_path, monkeypatch):
    """`shop`, prepared in an empty data home from an export without timestamps: 6 users, 6 items."""
    monkeypatch.setenv("FUSIONREC_DATA_HOME", str(tmp_path / "home"))
    rows = [(f"c{u}", "ABCDEF"[(u + k) % 6]) for u in range(6) for k in range(4)]
    inter = tmp_path / "baskets.csv"
    inter.write_text("customer,sku\n" + "".join(f"{u},{i}\n" for u, i in rows))
    items = tmp_path / "products.csv"
    items.write_text("sku,title\n" + "".join(f"{i},Product {i}\n" for i in "ABCDEF"))
    result = CliRunner().invoke(cli, ["data", "prepare", "shop", "--interactions", str(inter), "--items", str(items),
                                      "--map", "user_id=customer", "--map", "item_id=sku", "--map", "timestamp=",
                                      "--template", "{title}"])
    assert result.exit_code == 0, result.output
    return tmp_path


def _manifest(folder: Path, text: str = MANIFEST) -> str:
    path = folder / "shop.yaml"
    path.write_text(text)
    return str(path)


# --- the budget ------------------------------------------------------------------------------------------------


def test_budget_by_size():
    bpr, sasrec = BASELINES["bpr"].training.epochs, BASELINES["sasrec"].training.epochs
    assert baseline_budget("bpr", 100_000)[0] == bpr and baseline_budget("bpr", 200_000)[0] == bpr
    assert baseline_budget("bpr", 1_000_209)[0] == round(bpr * 200_000 / 1_000_209) == 60
    assert baseline_budget("sasrec", 1_000_000)[0] == round(sasrec / 5)
    assert baseline_budget("bpr", 50_000_000)[0] == 20  # never fewer than 20
    assert baseline_budget("bpr")[0] == bpr  # size unknown: the registered budget
    assert all(baseline_budget("pop", n)[0] == 1 for n in (10, 10_000_000))


def test_budget_from_the_manifest_wins_but_pop_stays_one():
    assert baseline_budget("bpr", 1_000_000, epochs=7) == (7, "evaluation.baselineEpochs")
    assert baseline_budget("fm", 10, epochs=500)[0] == 500
    assert baseline_budget("pop", 10, epochs=7)[0] == 1
    assert baseline_training("bpr", 3, interactions=1_000_209).epochs == 60
    assert baseline_training("bpr", 3, quick=True, epochs=50).epochs == QUICK_EPOCHS
    assert baseline_training("bpr", 3, epochs=50).seed == 3


def test_run_baseline_fits_with_the_budget_and_logs_it(shop, monkeypatch, caplog):
    seen = []

    def fake_fit(build, split, training, **kwargs):
        seen.append(training)
        return SimpleNamespace(fit=SimpleNamespace(best_epoch=1), test={}, seconds=0.0,
                               run=lambda name, task, seed: (name, seed))

    monkeypatch.setattr(evaluate_module, "fit_and_evaluate", fake_fit)
    dataset = load_dataset(plan(None, dataset="shop", data_path=None, order="none", max_users=None, only=None,
                                epochs=None).data)
    with caplog.at_level(logging.INFO, logger="fusionrec.train.evaluate"):
        assert run_baseline("bpr", dataset, 4, split=None, epochs=9) == ("bpr", 4)  # type: ignore[arg-type]
    assert seen[0].epochs == 9 and "bpr seed 4: budget 9 epochs (evaluation.baselineEpochs)" in caplog.text


# --- the plan: manifest, then options -------------------------------------------------------------------------


def test_plan_takes_data_and_evaluation_from_the_manifest(tmp_path):
    chosen = plan(_manifest(tmp_path), dataset=None, data_path=None, order=None, max_users=None, only=None,
                  epochs=None)
    assert (chosen.data.dataset, chosen.data.order, chosen.data.max_users) == ("shop", "none", 5)
    assert chosen.data.item_text_template == "{title}" and chosen.names == ["pop", "bpr"] and chosen.epochs == 3


def test_options_override_the_manifest(tmp_path):
    text = MANIFEST.replace("{dataset: shop,", "{path: ./export, interactions: orders.csv,")
    chosen = plan(_manifest(tmp_path, text), dataset="books", data_path=None, order="time", max_users=2,
                  only="sasrec", epochs=11)
    assert (chosen.data.dataset, chosen.data.order, chosen.data.max_users) == ("books", "time", 2)
    assert chosen.data.path is None and chosen.data.interactions is None  # another source: the files are dropped
    assert chosen.names == ["sasrec"] and chosen.epochs == 11
    kept = plan(_manifest(tmp_path, text), dataset=None, data_path=None, order=None, max_users=None, only=None,
                epochs=None)
    assert (kept.data.path, kept.data.interactions) == ("./export", "orders.csv")


def test_without_a_manifest_all_baselines_on_ml100k():
    chosen = plan(None, dataset=None, data_path=None, order=None, max_users=None, only=None, epochs=None)
    assert chosen.data.dataset == "ml-100k" and chosen.data.order == "time" and chosen.epochs is None
    assert chosen.names == list(BASELINES)


def test_a_manifest_baseline_that_does_not_suit_its_task_fails(tmp_path):
    text = MANIFEST.replace("baselines: [pop, bpr]", "baselines: [lr]")
    with pytest.raises(UserError, match="baseline 'lr' is a ctr model"):
        plan(_manifest(tmp_path, text), dataset=None, data_path=None, order=None, max_users=None, only=None,
             epochs=None)


# --- end to end on the prepared shop ---------------------------------------------------------------------------


def test_cli_evaluates_a_prepared_dataset_in_random_order(shop):
    out = shop / "results.json"
    result = CliRunner().invoke(cli, ["evaluate", "--baselines", "--dataset", "shop", "--order", "none", "--only",
                                      "pop,bpr", "--quick", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "ranking (shop, leave-one-out (random per-user hold-out" in result.output and "| bpr |" in result.output
    payload = json.loads(out.read_text())
    assert payload["dataset"] == "shop" and payload["order"] == "none"


def test_cli_refuses_time_order_on_data_without_timestamps(shop):
    result = CliRunner().invoke(cli, ["evaluate", "--baselines", "--dataset", "shop", "--only", "pop"])
    assert result.exit_code == 2
    assert "spec.data.order" in result.stderr and "fix: data.order: none" in result.stderr


def test_cli_reads_the_manifest(shop, monkeypatch):
    calls = []

    def fake_evaluate(dataset, names, seeds, quick=False, order="time", epochs=None):
        calls.append((dataset.name, len(dataset.interactions), names, seeds, order, epochs))
        return evaluate_module.Results(dataset=dataset.name, seeds=list(seeds), order=order)

    monkeypatch.setattr(evaluate_module, "evaluate_baselines", fake_evaluate)
    manifest = _manifest(shop, MANIFEST.replace("maxUsers: 5", "maxUsers: 2"))
    result = CliRunner().invoke(cli, ["evaluate", "--baselines", "-f", manifest, "--seeds", "1,2"])
    assert result.exit_code == 0, result.output
    assert calls == [("shop", 8, ["pop", "bpr"], [1, 2], "none", 3)]


def test_cli_unknown_dataset_says_how_to_prepare_it(shop):
    result = CliRunner().invoke(cli, ["evaluate", "--baselines", "--dataset", "nosuch", "--only", "pop"])
    assert result.exit_code == 2
    assert "spec.data.dataset" in result.stderr
    assert "fusionrec data prepare nosuch --interactions FILE --items FILE" in result.stderr


def test_runner_baseline_rows_pass_the_budget_and_key_it(tmp_path, monkeypatch):
    import fusionrec.runner.compare as compare
    from fusionrec.spec import load_manifest

    steps: list[tuple[str, str, str]] = []

    def fake_step(ctx, name, key, work, announce=None):
        steps.append((name, key, announce))
        work()
        return key

    fitted = []
    monkeypatch.setattr(compare, "run_step", fake_step)
    monkeypatch.setattr(evaluate_module, "run_baseline", lambda name, dataset, seed, split, epochs=None: fitted.append(
        (name, epochs)) or SimpleNamespace(valid={}, test={}, best_epoch=1, seconds=0.0))
    spec = load_manifest(_manifest(tmp_path)).spec
    compare.baselines(SimpleNamespace(spec=spec, data=lambda: (None, None)), "data-key")
    assert fitted == [("pop", 3), ("bpr", 3)] and steps[1][2].endswith("3 epochs")
    by_size = spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update={"baseline_epochs": None})})
    compare.baselines(SimpleNamespace(spec=by_size, data=lambda: (None, None)), "data-key")
    assert fitted[2:] == [("pop", None), ("bpr", None)] and steps[3][2].endswith("epochs by data size")
    assert steps[1][1] != steps[3][1]  # a new budget is a new key: the baseline is refitted
