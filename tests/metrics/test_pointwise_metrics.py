"""AUC, LogLoss, RMSE, MAE against hand values and scikit-learn; the metric registry."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, roc_auc_score

from fusionrec.metrics import METRICS, auc, logloss, mae, parse_metric, rmse


def test_auc_by_hand():
    assert auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    assert auc([0.1, 0.5, 0.5, 0.9], [0, 0, 1, 1]) == pytest.approx(0.875)  # one tied pair counts half


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=2, max_value=200), st.integers(min_value=0, max_value=2**31 - 1),
       st.sampled_from([3, 10, 1000]))
def test_auc_matches_sklearn_with_ties(n, seed, levels):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    labels[0], labels[1] = 0, 1  # both classes present
    scores = rng.integers(0, levels, size=n) / levels  # few levels: many ties
    assert auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        auc([0.1, 0.2], [1, 1])


def test_logloss_matches_sklearn_and_is_clipped():
    rng = np.random.default_rng(0)
    prob = rng.uniform(0.01, 0.99, size=50)
    labels = rng.integers(0, 2, size=50)
    assert logloss(prob, labels) == pytest.approx(log_loss(labels, prob), rel=1e-9)
    confident_mistake = logloss([0.0, 1.0], [1, 0])
    assert math.isfinite(confident_mistake) and confident_mistake == pytest.approx(-math.log(1e-7), rel=1e-6)
    with pytest.raises(ValueError, match="probabilities"):
        logloss([1.5], [1])


def test_rmse_and_mae_by_hand():
    assert rmse([1.0, 2.0, 3.0], [1.0, 2.0, 5.0]) == pytest.approx(math.sqrt(4 / 3))
    assert mae([1.0, 2.0, 3.0], [2.0, 2.0, 5.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in length"):
        rmse([1.0], [1.0, 2.0])


def test_registry_declares_what_each_metric_needs():
    assert {m.needs for m in METRICS.values()} == {"ranks", "labels", "ratings"}
    metric, k = parse_metric("NDCG@10")
    assert (metric.name, k, metric.needs) == ("ndcg", 10, "ranks")
    assert parse_metric("logloss")[0].higher_is_better is False
    for bad, message in [("ndcg", "cutoff"), ("auc@5", "no cutoff"), ("recall@10", "unknown"), ("hr@0", "cutoff")]:
        with pytest.raises(ValueError, match=message):
            parse_metric(bad)
