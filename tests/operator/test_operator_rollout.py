"""The rollout state machine: canary steps, blue-green, rollback, pause, and resuming from the status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fusionrec.operator.rollout import (
    Measurement,
    Outcome,
    RolloutState,
    Verdict,
    begin,
    decide,
    is_due,
    judge,
    served_weights,
)
from fusionrec.spec import AnalysisSpec, RolloutSpec

T0 = datetime(2025, 1, 1, tzinfo=UTC)
PASS, FAIL, UNSURE = Verdict(True, "ok"), Verdict(False, "error rate 0.2 > 0.01"), Verdict(None, "no data")
CANARY = RolloutSpec(steps=[10, 50, 100], step_interval_seconds=60)


def test_first_version_takes_all_traffic_at_once():
    state, outcome = begin(None, "v1", CANARY, T0)
    assert outcome == Outcome.PROMOTED and state == RolloutState(current="v1")
    assert served_weights(state) == [("v1", 100)]


def test_canary_walks_the_steps_and_promotes():
    state, outcome = begin("v1", "v2", CANARY, T0)
    assert outcome == Outcome.STEPPED and served_weights(state) == [("v1", 90), ("v2", 10)]
    assert decide(state, CANARY, PASS, T0 + timedelta(seconds=59)) == (state, Outcome.WAITING)
    state, outcome = decide(state, CANARY, PASS, T0 + timedelta(seconds=60))
    assert outcome == Outcome.STEPPED and served_weights(state) == [("v1", 50), ("v2", 50)]
    assert state.step_started_at == T0 + timedelta(seconds=60)
    state, outcome = decide(state, CANARY, PASS, T0 + timedelta(seconds=120))
    assert outcome == Outcome.PROMOTED and served_weights(state) == [("v2", 100)]
    assert state == RolloutState(current="v2")


def test_breach_rolls_back_to_the_stable_version():
    state, _ = begin("v1", "v2", CANARY, T0)
    state, _ = decide(state, CANARY, PASS, T0 + timedelta(seconds=60))
    state, outcome = decide(state, CANARY, FAIL, T0 + timedelta(seconds=120))
    assert outcome == Outcome.ROLLED_BACK and served_weights(state) == [("v1", 100)]


def test_breach_without_auto_rollback_pauses_at_the_current_weights():
    spec = RolloutSpec(steps=[10, 100], step_interval_seconds=0, auto_rollback=False)
    state, _ = begin("v1", "v2", spec, T0)
    state, outcome = decide(state, spec, FAIL, T0)
    assert outcome == Outcome.PAUSED and state.paused and served_weights(state) == [("v1", 90), ("v2", 10)]
    assert decide(state, spec, PASS, T0 + timedelta(hours=1))[1] == Outcome.WAITING  # paused stays paused


def test_inconclusive_analysis_holds_the_step():
    state, _ = begin("v1", "v2", CANARY, T0)
    held, outcome = decide(state, CANARY, UNSURE, T0 + timedelta(seconds=60))
    assert outcome == Outcome.HELD and held == state


def test_blue_green_switches_after_one_analysis():
    spec = RolloutSpec(strategy="blueGreen", step_interval_seconds=30)
    state, outcome = begin("v1", "v2", spec, T0)
    assert outcome == Outcome.STEPPED and served_weights(state) == [("v1", 100), ("v2", 0)]
    state, outcome = decide(state, spec, PASS, T0 + timedelta(seconds=30))
    assert outcome == Outcome.PROMOTED and served_weights(state) == [("v2", 100)]


def test_resume_from_recorded_step_waits_out_the_rest_of_the_interval():
    """What the status holds after a restart is enough to go on from the same step."""
    recorded = RolloutState(current="v1", candidate="v2", step=1, weight=50, step_started_at=T0)
    assert not is_due(recorded, CANARY, T0 + timedelta(seconds=30))
    state, outcome = decide(recorded, CANARY, PASS, T0 + timedelta(seconds=61))
    assert outcome == Outcome.PROMOTED and state.current == "v2"


def test_single_step_canary_is_a_cut_over():
    state, outcome = begin("v1", "v2", RolloutSpec(steps=[100]), T0)
    assert outcome == Outcome.PROMOTED and served_weights(state) == [("v2", 100)]


ANALYSIS = AnalysisSpec(max_error_rate=0.01, max_p99_latency_ms=50, window_seconds=60)


@pytest.mark.parametrize("measured,passed,words", [
    (Measurement(10.0, 0.001, 20.0), True, "<="),
    (Measurement(10.0, 0.05, 20.0), False, "error rate 0.0500 > maxErrorRate 0.01"),
    (Measurement(10.0, 0.0, 80.0), False, "p99 latency 80.0 ms > maxP99LatencyMs 50"),
    (Measurement(10.0, 0.0, float("inf")), False, "p99 latency inf ms"),
    (Measurement(0.0, None, None), None, "no requests"),
    (Measurement(None, None, None), None, "no requests"),
    (Measurement(5.0, 0.0, None), None, "no p99 latency data"),
])
def test_judge(measured, passed, words):
    verdict = judge(measured, ANALYSIS)
    assert verdict.passed is passed and words in verdict.message


def test_judge_without_traffic_passes_only_when_traffic_is_not_expected():
    assert judge(Measurement(0.0, None, None), ANALYSIS, require_traffic=False).passed is True
    assert judge(Measurement(3.0, 0.5, 1.0), ANALYSIS, require_traffic=False).passed is False
