"""The merge experiment's pure parts: the step cap (through the real training loop), step planning, and the
checks written into bench/results/merge-ml100k.md."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fusionrec.baselines.bpr import BPR
from fusionrec.data.schema import Dataset
from fusionrec.data.splits import leave_one_out
from fusionrec.spec import TrainingSpec
from fusionrec.train.loop import FitHooks, fit

_SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "merge_experiment.py"
_spec = importlib.util.spec_from_file_location("_fusionrec_bench_merge_experiment", _SCRIPT)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

torch.set_num_threads(1)


def _dataset(n_users: int = 30, n_items: int = 20, per_user: int = 8) -> Dataset:
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{item}", 1000 + t, 4.0)
            for u in range(n_users) for t, item in enumerate(rng.choice(n_items, size=per_user, replace=False))]
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)], "title": [f"m{i}" for i in range(n_items)]})
    return Dataset("tiny", pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"]), items)


def test_step_cap_bounds_the_optimizer_steps_of_the_real_loop():
    dataset = _dataset()
    split = leave_one_out(dataset)
    training = TrainingSpec(epochs=3, batch_size=8, learning_rate=1e-2, warmup_ratio=0.0, lr_schedule="linear",
                            seed=3)
    model = BPR.from_data(dataset, split)
    steps = []
    model_loss = model.calculate_loss

    def counted(batch):
        steps.append(1)
        return model_loss(batch)

    model.calculate_loss = counted
    cap = bench.StepCap(2)
    result = fit(model, split, training, device="cpu", hooks=FitHooks(wrap_batches=cap))
    uncapped = math.ceil(len(split.train) / 8)
    assert uncapped > 2  # the cap, not the data, ends each epoch
    assert len(steps) == 3 * 2
    assert len(cap.step_seconds) == 3 * 2 and all(s >= 0 for s in cap.step_seconds)
    # The linear decay spans the capped run: the rate reaches zero at its last step.
    assert result.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_step_cap_rejects_a_zero_cap():
    with pytest.raises(ValueError, match="steps_per_epoch must be >= 1, got 0"):
        bench.StepCap(0)


@pytest.mark.parametrize(("max_steps", "every", "expected"), [(160, 80, (2, 80)), (100, 100, (1, 100)),
                                                               (100, 30, (4, 25)), (7, 3, (7, 1))])
def test_plan_steps_spends_exactly_the_budget(max_steps, every, expected):
    epochs, per_epoch = bench.plan_steps(max_steps, every)
    assert (epochs, per_epoch) == expected and epochs * per_epoch == max_steps


def test_relative_gain_counts_a_lower_rmse_as_a_gain():
    assert bench.relative_gain(0.11, 0.10, True) == pytest.approx(0.10)
    assert bench.relative_gain(0.90, 1.00, False) == pytest.approx(0.10)
    assert bench.relative_gain(1.10, 1.00, False) == pytest.approx(-0.10)
    assert bench.relative_gain(0.0, 0.0, True) == 0.0


def _matrix(**cells: tuple[float, float, float]) -> dict:
    return {name: {"ranking": {"ndcg@10": r}, "ctr": {"auc": c}, "rating": {"rmse": m}}
            for name, (r, c, m) in cells.items()}


def test_checks_pass_when_specialists_win_and_the_merge_keeps_every_task():
    matrix = _matrix(base=(0.080, 0.70, 1.00), ranking=(0.090, 0.70, 1.00), ctr=(0.080, 0.75, 1.00),
                     rating=(0.080, 0.70, 0.95), soup=(0.089, 0.74, 0.96))
    checks = bench.check_matrix(matrix, ["soup"], within=0.02)
    assert [c["met"] for c in checks] == [True] * 5
    assert "ranking 0.0890 vs 0.0900 (-1.11%)" in checks[3]["detail"]


def test_checks_report_a_missed_task_and_a_specialist_that_does_not_beat_base():
    matrix = _matrix(base=(0.080, 0.70, 1.00), ranking=(0.079, 0.70, 1.00), ctr=(0.080, 0.75, 1.00),
                     rating=(0.080, 0.70, 0.95), soup=(0.085, 0.71, 0.96))
    checks = {c["target"]: c["met"] for c in bench.check_matrix(matrix, ["soup"], within=0.02)}
    assert checks["the ranking specialist beats base MiniLM on ranking (ndcg@10)"] is False
    assert checks["soup is within 2% of every specialist on its own task"] is False  # CTR 0.71 vs 0.75
    assert checks["soup beats base MiniLM on all three tasks"] is True


def test_a_gain_inside_base_seed_range_does_not_count():
    matrix = _matrix(base=(0.080, 0.70, 1.00), ranking=(0.083, 0.70, 1.00), ctr=(0.080, 0.75, 1.00),
                     rating=(0.080, 0.70, 0.95))
    runs = [{"ranking": {"test": {"ndcg@10": v}}} for v in (0.076, 0.080, 0.084)]
    spread = bench.seed_spread(runs)
    assert spread["ranking"]["range"] == pytest.approx(0.1) and "ctr" not in spread
    checks = {c["target"]: c for c in bench.check_matrix(matrix, [], spread=spread)}
    ranking = checks["the ranking specialist beats base MiniLM on ranking (ndcg@10) by more than base's seed range"]
    assert ranking["met"] is False and "inside base's seed range 10.00%" in ranking["detail"]
    ctr = checks["the ctr specialist beats base MiniLM on ctr (auc) by more than base's seed range"]
    assert ctr["met"] is True  # no spread measured for CTR: any gain counts


def test_checks_skip_what_has_not_been_measured():
    matrix = _matrix(base=(0.08, 0.7, 1.0))
    assert bench.check_matrix(matrix, ["soup"]) == []
