"""The click-through gate's decision (fusionrec.operator.ctr_gate): the non-inferiority test against an independent
computation (scipy), its size and power by simulation, and pass / fail / wait with the reasons the status shows."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, stats

from fusionrec.operator.ctr_gate import (
    AWAITING_IMPRESSIONS,
    CTR_BELOW_STABLE,
    CTR_WITHIN_MARGIN,
    INCONSISTENT_FEEDBACK,
    INSUFFICIENT_IMPRESSIONS,
    Feedback,
    judge_ctr,
    noninferiority_test,
)
from fusionrec.operator.rollout import Verdict, combine
from fusionrec.spec import CtrGateSpec

GATE = CtrGateSpec(enabled=True, max_relative_drop=0.05, min_impressions=1000, confidence=0.95, max_wait_seconds=600)


def _reference_z(stable: Feedback, candidate: Feedback, margin: float) -> float:
    """Farrington-Manning's z with the restricted MLE found by maximising the likelihood numerically."""
    theta = 1 - margin
    n_c, x_c, n_s, x_s = candidate.impressions, candidate.clicks, stable.impressions, stable.clicks

    def minus_loglik(p: float) -> float:
        return -(x_c * math.log(theta * p) + (n_c - x_c) * math.log(1 - theta * p)
                 + x_s * math.log(p) + (n_s - x_s) * math.log(1 - p))

    p_s = optimize.minimize_scalar(minus_loglik, bounds=(1e-12, 1 - 1e-12), method="bounded",
                                   options={"xatol": 1e-14}).x
    p_c = theta * p_s
    variance = p_c * (1 - p_c) / n_c + theta ** 2 * p_s * (1 - p_s) / n_s
    return (x_c / n_c - theta * x_s / n_s) / math.sqrt(variance)


@pytest.mark.parametrize("stable,candidate,margin", [
    (Feedback(10_000, 400), Feedback(10_000, 380), 0.05),
    (Feedback(10_000, 400), Feedback(2_000, 40), 0.05),
    (Feedback(5_000, 150), Feedback(7_000, 260), 0.1),
    (Feedback(1_000, 3), Feedback(1_000, 1), 0.0),
    (Feedback(50_000, 25_000), Feedback(50_000, 23_000), 0.02),
])
def test_score_test_matches_the_restricted_likelihood_computed_independently(stable, candidate, margin):
    test = noninferiority_test(stable, candidate, margin)
    assert test.z == pytest.approx(_reference_z(stable, candidate, margin), rel=1e-5, abs=1e-6)
    assert test.p_value == pytest.approx(stats.norm.cdf(test.z), rel=1e-9, abs=1e-15)


def test_score_test_agrees_with_the_wald_z_on_large_samples():
    stable, candidate, theta = Feedback(2_000_000, 80_000), Feedback(2_000_000, 75_000), 0.95
    p_s, p_c = 0.04, 0.0375
    wald = (p_c - theta * p_s) / math.sqrt(p_c * (1 - p_c) / 2e6 + theta ** 2 * p_s * (1 - p_s) / 2e6)
    assert noninferiority_test(stable, candidate, 0.05).z == pytest.approx(wald, rel=0.01)


def test_a_candidate_without_clicks_is_judged_not_infinitely_significant():
    test = noninferiority_test(Feedback(1_000, 2), Feedback(1_000, 0), 0.05)
    assert math.isfinite(test.z) and test.p_value > 0.05  # 0 of 1000 against 2 of 1000 proves nothing
    assert noninferiority_test(Feedback(1_000, 0), Feedback(1_000, 0), 0.05).p_value == 0.5


def test_size_at_the_margin_is_close_to_one_minus_confidence():
    """Both CTRs exactly on the boundary p_c = (1 - m) p_s: the gate must fail about 5% of such canaries."""
    rng = np.random.default_rng(7)
    n, p_s, margin, runs = 5_000, 0.04, 0.05, 4_000
    stable_clicks = rng.binomial(n, p_s, runs)
    candidate_clicks = rng.binomial(n, (1 - margin) * p_s, runs)
    rejected = sum(noninferiority_test(Feedback(n, float(s)), Feedback(n, float(c)), margin).p_value < 0.05
                   for s, c in zip(stable_clicks, candidate_clicks))
    assert 0.035 < rejected / runs < 0.065


def test_power_against_a_worse_candidate_is_what_theory_says():
    """20% fewer clicks against a 5% margin, 20k impressions each: the normal approximation's power is 0.95."""
    rng = np.random.default_rng(11)
    n, p_s, p_c, theta, runs = 20_000, 0.04, 0.032, 0.95, 1_000
    stable_clicks = rng.binomial(n, p_s, runs)
    candidate_clicks = rng.binomial(n, p_c, runs)
    rejected = sum(noninferiority_test(Feedback(n, float(s)), Feedback(n, float(c)), 1 - theta).p_value < 0.05
                   for s, c in zip(stable_clicks, candidate_clicks))
    shift = (p_c - theta * p_s) / math.sqrt(p_c * (1 - p_c) / n + theta ** 2 * p_s * (1 - p_s) / n)
    expected = stats.norm.cdf(stats.norm.ppf(0.05) - shift)
    assert expected == pytest.approx(0.95, abs=0.01)
    assert rejected / runs == pytest.approx(expected, abs=0.025)


def test_a_worse_candidate_fails_with_the_numbers_in_the_reason():
    judged = judge_ctr(Feedback(20_000, 800), Feedback(20_000, 600), GATE, waited_seconds=0, auto_rollback=True,
                       stable_version="v1", candidate_version="v2")
    verdict = judged.verdict
    assert verdict.passed is False and verdict.reason == CTR_BELOW_STABLE
    for words in ("candidate v2 CTR 3.00% (600 clicks / 20000 impressions)", "stable v1 CTR 4.00%",
                  "bound (1 - maxRelativeDrop 0.05) x stable = 3.80%", "z=-4.4", "< 0.05"):
        assert words in verdict.message
    assert judged.test is not None and judged.test.z < -4


@pytest.mark.parametrize("candidate", [Feedback(20_000, 800), Feedback(20_000, 900), Feedback(20_000, 770)])
def test_an_equal_better_or_insignificantly_lower_candidate_passes(candidate):
    judged = judge_ctr(Feedback(20_000, 800), candidate, GATE, waited_seconds=0, auto_rollback=True)
    assert judged.verdict.passed is True and judged.verdict.reason == CTR_WITHIN_MARGIN
    assert "z=" in judged.verdict.message and "p=" in judged.verdict.message


def test_few_impressions_wait_then_roll_back_or_hold():
    stable, candidate = Feedback(5_000, 200), Feedback(300, 12)
    waiting = judge_ctr(stable, candidate, GATE, waited_seconds=120, auto_rollback=True, candidate_version="v2")
    assert waiting.verdict.passed is None and waiting.verdict.reason == AWAITING_IMPRESSIONS
    assert "candidate v2 12 clicks / 300 impressions" in waiting.verdict.message
    assert "minImpressions is 1000" in waiting.verdict.message and "waited 120s of maxWaitSeconds 600" in \
        waiting.verdict.message
    expired = judge_ctr(stable, candidate, GATE, waited_seconds=600, auto_rollback=True)
    assert expired.verdict.passed is False and expired.verdict.reason == INSUFFICIENT_IMPRESSIONS
    held = judge_ctr(stable, candidate, GATE, waited_seconds=601, auto_rollback=False)
    assert held.verdict.passed is None and held.verdict.reason == INSUFFICIENT_IMPRESSIONS
    assert "autoRollback is off" in held.verdict.message
    few_on_stable = judge_ctr(Feedback(999, 40), Feedback(5_000, 200), GATE, waited_seconds=0, auto_rollback=True)
    assert few_on_stable.verdict.reason == AWAITING_IMPRESSIONS


def test_more_clicks_than_impressions_is_inconclusive_and_says_what_to_send():
    judged = judge_ctr(Feedback(5_000, 200), Feedback(1_000, 1_500), GATE, waited_seconds=10_000, auto_rollback=True)
    assert judged.verdict.passed is None and judged.verdict.reason == INCONSISTENT_FEEDBACK
    assert "impression event" in judged.verdict.message


def test_counts_since_a_baseline():
    assert Feedback(150, 9).minus(Feedback(100, 4)) == Feedback(50, 5)
    assert Feedback(20, 1).minus(Feedback(100, 4)) == Feedback(20, 1)  # the counter restarted
    assert Feedback(0, 0).ctr is None and Feedback(200, 5).ctr == 0.025


def test_combined_gates_fail_on_any_failure_hold_on_any_doubt():
    ok, unsure = Verdict(True, "slo ok"), Verdict(None, "waiting", reason=AWAITING_IMPRESSIONS)
    bad = Verdict(False, "ctr below", reason=CTR_BELOW_STABLE)
    failed = combine(ok, bad)
    assert failed.passed is False and failed.reason == CTR_BELOW_STABLE
    assert failed.message == "ctr below; slo ok"  # the deciding gate's first
    assert combine(Verdict(False, "error rate"), unsure).passed is False
    assert combine(Verdict(False, "error rate"), unsure).reason is None
    assert combine(ok, unsure).passed is None and combine(ok, unsure).reason == AWAITING_IMPRESSIONS
    assert combine(ok, Verdict(True, "ctr ok", reason=CTR_WITHIN_MARGIN)).passed is True
