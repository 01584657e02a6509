"""What `fusionrec run` says about the candidates without Ray: comparison.json's rows from the training job's
selection (times split, nothing fitted twice), `fused_beats_members`, the summary's warning and shipped lines,
and the one line an interrupted run ends with."""

from __future__ import annotations

import pytest

from fusionrec.protocol import selection_note
from fusionrec.runner.build import Trained
from fusionrec.runner.cache import Record
from fusionrec.runner.compare import _candidate_rows, _fused_row, fused_beats_members
from fusionrec.runner.run import interrupted_line
from fusionrec.runner.steps import StepResult
from fusionrec.runner.summary import RunReport
from fusionrec.spec import FusionRecommenderSpec

from runkit import manifest_document


def _rows(fused: float, bert: float, llama: float) -> list[dict]:
    return [{"model": "fused-attention", "group": "fused", "valid": {"ndcg@10": fused}, "test": {"ndcg@10": 0.3},
             "best_epoch": 2, "seconds": 3.0, "setup_seconds": 1.0, "train_seconds": 2.0},
            {"model": "bert", "group": "single", "valid": {"ndcg@10": bert}, "test": {"ndcg@10": 0.2},
             "best_epoch": 1, "seconds": 5.0, "setup_seconds": 1.5, "train_seconds": 3.5},
            {"model": "llama", "group": "single", "valid": {"ndcg@10": llama}, "test": {"ndcg@10": 0.1},
             "best_epoch": 1, "seconds": 4.0, "setup_seconds": 1.0, "train_seconds": 3.0},
            {"model": "pop", "group": "baseline", "valid": {"ndcg@10": 0.9}, "test": {"ndcg@10": 0.05}}]


def _comparison(select: str, shipped: str, rows: list[dict]) -> dict:
    return {"task": "ranking", "split": "leave-one-out", "seed": 7, "select": select, "metric": "ndcg@10",
            "higher_is_better": True, "shipped": shipped, "rows": rows}


@pytest.fixture
def spec(tiny_models, shop, tmp_path) -> FusionRecommenderSpec:
    document = manifest_document(tiny_models, shop, tmp_path)
    document["spec"]["evaluation"]["select"] = "best"
    return FusionRecommenderSpec.model_validate(document["spec"])


def test_fused_beats_members_by_validation_and_baselines_do_not_count():
    assert fused_beats_members(_rows(0.5, 0.4, 0.3), "ndcg@10", True) is True
    assert fused_beats_members(_rows(0.5, 0.6, 0.3), "ndcg@10", True) is False
    assert fused_beats_members(_rows(0.5, 0.5, 0.3), "ndcg@10", True) is False  # a tie is not beating
    assert fused_beats_members(_rows(0.5, 0.6, 0.7), "ndcg@10", False) is True  # lower is better
    assert fused_beats_members(_rows(0.5, 0.4, 0.3)[:1] + _rows(0, 0, 0)[3:], "ndcg@10", True) is None


def test_candidate_rows_come_from_the_job_with_the_fused_rows_setup_outside_every_fit(spec):
    record = Record("train", "k", {"artifact": "/runs/v1", "train_seconds": 30.0, "hash": "h"}, 30.0)
    trained = Trained(spec=spec, sources={}, data_key="d", record=record, shipped="bert")
    rows = _candidate_rows(trained, {"selection": {"candidates": _rows(0.5, 0.6, 0.3)[:3]}})
    assert [r["model"] for r in rows] == ["fused-attention", "bert", "llama"]
    fused = rows[0]
    # 30 s of train step - 9 s of singles (setup + train) = 21 s, of which 2 s trained the fused model
    assert (fused["setup_seconds"], fused["train_seconds"], fused["seconds"]) == (19.0, 2.0, 21.0)
    assert fused["encoders"] == ["bert", "llama"]
    assert rows[1]["setup_seconds"] == 1.5 and rows[1]["train_seconds"] == 3.5
    with pytest.raises(RuntimeError, match="no selection"):
        _candidate_rows(trained, {})


def test_an_artifact_from_before_the_time_split_shows_no_split(spec):
    record = Record("train", "k", {"artifact": "/runs/v1", "train_seconds": 30.0, "hash": "h"}, 30.0)
    trained = Trained(spec=spec, sources={}, data_key="d", record=record)
    old = _fused_row(trained, {"valid": {"ndcg@10": 0.5}, "test": {"ndcg@10": 0.3}})
    assert (old["setup_seconds"], old["train_seconds"], old["seconds"]) == (None, None, 30.0)
    new = _fused_row(trained, {"valid": {"ndcg@10": 0.5}, "test": {}, "train_seconds": 12.0})
    assert (new["setup_seconds"], new["train_seconds"]) == (18.0, 12.0)


def test_select_fused_warns_when_a_single_validated_better():
    line = selection_note(_comparison("fused", "fused-attention", _rows(0.5, 0.6, 0.55)))
    assert line is not None and line.startswith("warning: bert alone validated better")
    assert "0.6000 vs 0.5000" in line and "evaluation.select: best" in line
    assert selection_note(_comparison("fused", "fused-attention", _rows(0.5, 0.4, 0.3))) is None
    old = _rows(0.5, 0.6, 0.3)  # a comparison.json from before the selection: nothing to say
    assert selection_note({"task": "ranking", "split": "s", "seed": 1, "rows": old}) is None


def test_select_best_says_what_shipped_and_why():
    line = selection_note(_comparison("best", "bert", _rows(0.5, 0.6, 0.3)))
    assert line is not None and line.startswith("shipped: bert (evaluation.select: best): valid ndcg@10 0.6000")
    assert "better than the fused model (0.5000)" in line and "llama 0.3000" in line
    fused = selection_note(_comparison("best", "fused-attention", _rows(0.7, 0.6, 0.3)))
    assert fused is not None and "the fused model validated best" in fused


def test_the_summary_prints_the_warning_under_the_table():
    report = RunReport(name="shop-recs", version="v1",
                       comparison=_comparison("fused", "fused-attention", _rows(0.5, 0.6, 0.3)))
    lines = report.render().splitlines()
    table_end = max(i for i, line in enumerate(lines) if line.startswith("pop"))
    assert lines[table_end + 1].startswith("warning: bert alone validated better")


def test_an_interrupted_run_says_what_was_published():
    report = RunReport(name="shop-recs", version="v3", artifact="/runs/v3",
                       steps=[StepResult("prepare", "ran", 0.1), StepResult("train", "failed", 9.0)])
    assert interrupted_line(report) == "interrupted: nothing published for version v3; run again to train it"
    report.steps = [StepResult("train", "cached", 0.1), StepResult("evaluate", "failed", 2.0)]
    assert interrupted_line(report) == ("interrupted: version v3 is at /runs/v3 but its evaluate step did not "
                                        "finish; run again to resume")
