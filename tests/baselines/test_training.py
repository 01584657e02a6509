"""The baselines' training settings: `TrainingSpec`s for the one loop (`fusionrec.train.loop.fit`), RecBole's
plain Adam at one rate, each selecting its epoch by a metric its task can measure."""

import pytest

from fusionrec.baselines import BASELINES
from fusionrec.train.evaluate import QUICK_EPOCHS, baseline_training
from fusionrec.train.loop import selection_metric


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_each_baseline_trains_at_one_constant_rate_and_selects_by_its_tasks_metric(name):
    training = BASELINES[name].training
    assert (training.lr_schedule, training.warmup_ratio, training.grad_clip, training.weight_decay) == \
        ("constant", 0.0, 0.0, 0.0)
    assert (training.learning_rate, training.early_stopping.patience) == (1e-3, 10)
    needs = "ranks" if BASELINES[name].task == "ranking" else "labels"
    assert selection_metric(training, needs) == ("ndcg@10" if needs == "ranks" else "auc")


def test_a_run_gets_its_seed_and_quick_runs_a_few_epochs():
    full = baseline_training("bpr", seed=7)
    quick = baseline_training("bpr", seed=8, quick=True)
    assert (full.seed, full.epochs) == (7, BASELINES["bpr"].training.epochs)
    assert (quick.seed, quick.epochs) == (8, QUICK_EPOCHS)
    assert baseline_training("pop", seed=1, quick=True).epochs == 1  # never more than registered
    assert BASELINES["bpr"].training.seed == 2020  # the registry's own settings are not changed
