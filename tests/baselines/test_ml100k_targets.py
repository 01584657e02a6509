"""The baselines land near RecBole 1.2.1 on full MovieLens-100K (one seed; the bench runs three)."""

import pytest
import torch

from fusionrec.train.evaluate import evaluate_baselines

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ml100k():
    from fusionrec.data import load_dataset
    from fusionrec.spec import DataSpec

    torch.set_num_threads(1)
    return load_dataset(DataSpec(dataset="ml-100k"))


def test_ranking_baselines_near_recbole(ml100k):
    summary = evaluate_baselines(ml100k, ["pop", "bpr"], seeds=[2020]).summary()
    assert 0.05 <= summary["pop"]["valid_hr@10"]["mean"] <= 0.09
    assert summary["bpr"]["test_ndcg@10"]["mean"] == pytest.approx(0.067, rel=0.15)
    assert summary["bpr"]["test_hr@10"]["mean"] == pytest.approx(0.124, rel=0.15)


def test_ctr_baselines_near_recbole(ml100k):
    summary = evaluate_baselines(ml100k, ["lr", "fm"], seeds=[2020]).summary()
    assert summary["lr"]["test_auc"]["mean"] == pytest.approx(0.775, abs=0.01)
    assert summary["fm"]["test_auc"]["mean"] == pytest.approx(0.782, abs=0.01)
