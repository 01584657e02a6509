"""The rollout state machine, pure: (state, rollout spec, analysis verdict, now) -> (next state, outcome).

The state is exactly what the status records (current and candidate versions, step index, when the step
started), so an operator that restarts mid-rollout rebuilds it from the status and goes on from the same
step, waiting out what is left of that step's interval, never starting again from the first weight.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from fusionrec.spec import AnalysisSpec, RolloutSpec


class Outcome(StrEnum):
    WAITING = "Waiting"  # the step's interval has not passed yet
    HELD = "Held"  # analysis was inconclusive; ask again next time
    STEPPED = "Stepped"  # the candidate moved to the next weight
    PROMOTED = "Promoted"  # the candidate took all traffic and became current
    ROLLED_BACK = "RolledBack"  # a breach: all traffic back to current, candidate dropped
    PAUSED = "Paused"  # a breach with autoRollback off: the weights stay, nothing advances


@dataclass(frozen=True)
class Verdict:
    """An analysis result: passed True/False, or None when it could not be decided; `reason` names the cause
    where a gate has one (the click-through gate's CtrBelowStable, InsufficientImpressions...)."""

    passed: bool | None
    message: str
    reason: str | None = None

    @property
    def label(self) -> str:
        return {True: "Pass", False: "Fail", None: "Inconclusive"}[self.passed]


@dataclass(frozen=True)
class Measurement:
    """The candidate's traffic over the analysis window; None where Prometheus had no data."""

    requests_per_second: float | None
    error_rate: float | None
    p99_latency_ms: float | None


@dataclass(frozen=True)
class RolloutState:
    current: str | None
    candidate: str | None = None
    step: int | None = None
    weight: int = 0
    step_started_at: datetime | None = None
    paused: bool = False

    @property
    def in_progress(self) -> bool:
        return self.candidate is not None and self.step is not None


def schedule(rollout: RolloutSpec) -> list[int]:
    """Candidate weights, step by step: the canary steps, or 0 then 100 for blue-green."""
    return [0, 100] if rollout.strategy == "blueGreen" else list(rollout.steps)


def begin(current: str | None, candidate: str, rollout: RolloutSpec, now: datetime) -> tuple[RolloutState, Outcome]:
    """Start rolling out a freshly trained candidate.

    With nothing served yet there is no traffic to compare against, so the first version goes straight to
    100; so does a canary whose only step is 100.
    """
    weights = schedule(rollout)
    if current is None or weights[0] == 100:
        return RolloutState(current=candidate), Outcome.PROMOTED
    return RolloutState(current, candidate, step=0, weight=weights[0], step_started_at=now), Outcome.STEPPED


def is_due(state: RolloutState, rollout: RolloutSpec, now: datetime) -> bool:
    if not state.in_progress or state.paused:
        return False
    started = state.step_started_at or now
    return now - started >= timedelta(seconds=rollout.step_interval_seconds)


def decide(state: RolloutState, rollout: RolloutSpec, verdict: Verdict, now: datetime) -> tuple[RolloutState, Outcome]:
    """One gate: the analysis of the current step decides whether the candidate takes the next one."""
    if not is_due(state, rollout, now):
        return state, Outcome.WAITING
    if verdict.passed is None:
        return state, Outcome.HELD
    if verdict.passed is False:
        if rollout.auto_rollback:
            return RolloutState(current=state.current), Outcome.ROLLED_BACK
        return replace(state, paused=True), Outcome.PAUSED
    weights = schedule(rollout)
    step = (state.step or 0) + 1
    if step >= len(weights) or weights[step] >= 100:
        return RolloutState(current=state.candidate), Outcome.PROMOTED
    return replace(state, step=step, weight=weights[step], step_started_at=now), Outcome.STEPPED


def judge(measured: Measurement, analysis: AnalysisSpec, *, require_traffic: bool = True) -> Verdict:
    """Compare the candidate's error rate and p99 latency with the spec's limits.

    No requests means no evidence: a canary holds (its weight sends it traffic, so silence is suspicious);
    a blue-green candidate at weight 0 gets no user traffic by design, so only a measured breach stops it.
    """
    rps = measured.requests_per_second
    if not rps:
        if require_traffic:
            return Verdict(None, f"no requests reached the candidate in the last {analysis.window_seconds}s")
        return Verdict(True, "no requests reached the candidate at weight 0; promoted without traffic evidence")
    breaches = []
    if measured.error_rate is not None and measured.error_rate > analysis.max_error_rate:
        breaches.append(f"error rate {measured.error_rate:.4f} > maxErrorRate {analysis.max_error_rate}")
    if measured.p99_latency_ms is not None and measured.p99_latency_ms > analysis.max_p99_latency_ms:
        breaches.append(f"p99 latency {measured.p99_latency_ms:.1f} ms > maxP99LatencyMs {analysis.max_p99_latency_ms}")
    if breaches:
        return Verdict(False, "; ".join(breaches))
    if measured.error_rate is None or measured.p99_latency_ms is None:
        missing = "error rate" if measured.error_rate is None else "p99 latency"
        return Verdict(None, f"no {missing} data for the candidate in the last {analysis.window_seconds}s")
    return Verdict(True, f"error rate {measured.error_rate:.4f} <= {analysis.max_error_rate}, "
                         f"p99 {measured.p99_latency_ms:.1f} ms <= {analysis.max_p99_latency_ms} ms")


def combine(*verdicts: Verdict) -> Verdict:
    """Several gates of one step: any failure fails it (a definite no needs no other gate's data), else any
    undecided gate holds it, else it passes. The message gives the deciding gates' first, then the others'; the
    reason is the deciding ones'."""
    for outcome in (False, None, True):
        deciding = [v for v in verdicts if v.passed is outcome]
        if deciding:
            others = [v for v in verdicts if v.passed is not outcome]
            reasons = [v.reason for v in deciding if v.reason]
            return Verdict(outcome, "; ".join(v.message for v in deciding + others if v.message),
                           reason=", ".join(reasons) or None)
    raise ValueError("combine needs at least one verdict")


def served_weights(state: RolloutState) -> list[tuple[str, int]]:
    """(version, weight) pairs the RayService should serve, stable version first; empty before any version."""
    if state.current is None:
        return []
    if not state.in_progress:
        return [(state.current, 100)]
    assert state.candidate is not None  # in_progress means a candidate (and a step)
    return [(state.current, 100 - state.weight), (state.candidate, state.weight)]
