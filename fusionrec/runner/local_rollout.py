"""A canary rollout on the local Serve, with the operator's state machine (`fusionrec.operator.rollout`).

Both versions are deployed behind the router; each step of `spec.rollout.steps` changes only the router's
`user_config` weights (no replica restarts, as on a cluster) and is followed by a short check on loopback
instead of the cluster's Prometheus window: requests are sent to both versions (their keys chosen so the
candidate gets its share even at 10%), and the candidate's error rate and p99 latency are judged against
`spec.rollout.analysis` by the operator's own `judge`. A breach rolls all traffic back to the old version
(100/0), unless `autoRollback` is off, in which case the split stays where it is. With
`spec.rollout.analysis.enabled: false` each step only waits for the new weights to reach the router.

With `spec.rollout.analysis.ctr.enabled` a step also waits for click-through evidence: the serve's `/metrics`
(`fusionrec_feedback_events_total{version,type}`, counted by POST /v1/events) is read when the step starts and
polled until both versions have `minImpressions` more impressions (or `maxWaitSeconds` pass), and the counts
since the step started are judged by the operator's own click-through gate (`fusionrec.operator.ctr_gate`).
The run sends no events itself: they come from whoever shows the recommendations (a shop, a replay).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from fusionrec.operator.ctr_gate import AWAITING_IMPRESSIONS, INCONSISTENT_FEEDBACK, Feedback, judge_ctr
from fusionrec.operator.rollout import (
    Measurement,
    Outcome,
    RolloutState,
    Verdict,
    begin,
    combine,
    decide,
    judge,
    served_weights,
)
from fusionrec.runner.local_serve import Version, post, sample_requests
from fusionrec.spec import RolloutSpec

CHECK_REQUESTS = 40  # per step, over both versions
MIN_CANDIDATE_REQUESTS = 10  # the candidate's share is at least this, even at a 10% weight
ROUTING_WAIT_S = 60.0
MAX_HOLDS = 2  # inconclusive checks in a row before the step counts as failed
CTR_POLL_S = 2.0  # how often a step waiting for impressions reads /metrics again
FEEDBACK_COUNTER = "fusionrec_feedback_events_total"

# Cumulative impressions and clicks per version, since the serve started (the local Prometheus scrape).
FeedbackReader = Callable[[], dict[str, Feedback]]


@dataclass
class RolloutResult:
    """How a rollout ended and what each step measured."""

    stable: str
    candidate: str
    outcome: str = ""
    steps: list[dict[str, Any]] = field(default_factory=list)
    final_weights: dict[str, int] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.outcome == Outcome.PROMOTED.value

    def to_json(self) -> dict[str, Any]:
        return {"from": self.stable, "to": self.candidate, "outcome": self.outcome, "steps": self.steps,
                "final_weights": self.final_weights}


def keyed_requests(weights: dict[str, int], candidate: Version, n: int, seed: int,
                   stable: Version | None = None) -> list[tuple[str, dict]]:
    """(version the router must pick, request) pairs: history-keyed requests, sorted into versions by the
    router's own bucket function, so each version with traffic gets its share and the candidate at least
    MIN_CANDIDATE_REQUESTS. Histories hold only items `stable` knows too (a retrain adds catalogue items the
    old version would answer 404 for)."""
    from fusionrec.serving.routing import TrafficSplit, request_key

    split = TrafficSplit(weights)
    live = [v for v, w in weights.items() if w > 0]
    quota = {v: 0 for v in live}
    if candidate.version in quota:
        quota[candidate.version] = max(MIN_CANDIDATE_REQUESTS, math.ceil(n * weights[candidate.version] / 100))
    for version in live:
        if version != candidate.version:
            quota[version] = max(1, n - quota.get(candidate.version, 0))
    out: list[tuple[str, dict]] = []
    pool = sample_requests(candidate.artifact, 50 * n, seed=seed, known_by=stable.artifact if stable else None)
    for body in pool:
        if "history" not in body:
            continue
        version = split.pick(request_key(None, body["history"]))
        if quota.get(version, 0) > 0:
            quota[version] -= 1
            out.append((version, body))
        if not any(quota.values()):
            break
    return out


def check(client: Any, weights: dict[str, int], candidate: Version, seed: int,
          stable: Version | None = None) -> tuple[Measurement, str, dict]:
    """Send the step's requests; the candidate's measurement, a routing problem (or ""), and counts."""
    requests = keyed_requests(weights, candidate, CHECK_REQUESTS, seed, stable)
    latencies, errors, misrouted, started = [], 0, 0, time.perf_counter()
    sent = 0
    for expected, body in requests:
        status, answer, ms = post(client, body)
        served = (answer or {}).get("model_version")
        if status == 200 and served != expected:
            misrouted += 1
        if expected == candidate.version:
            sent += 1
            latencies.append(ms)
            errors += status != 200
    elapsed = max(time.perf_counter() - started, 1e-6)
    measured = Measurement(requests_per_second=sent / elapsed if sent else 0.0,
                           error_rate=errors / sent if sent else None,
                           p99_latency_ms=float(np.percentile(latencies, 99)) if latencies else None)
    problem = f"{misrouted} of {len(requests)} requests answered by the wrong version" if misrouted else ""
    counts = {"requests": len(requests), "candidate_requests": sent, "candidate_errors": errors}
    return measured, problem, counts


def wait_for_routing(client: Any, weights: dict[str, int], candidate: Version, stable: Version | None = None) -> bool:
    """Poll until a request keyed into the candidate's share (or, at weight 0, the stable's) is answered by
    that version: the new weights have reached the router."""
    probes = keyed_requests(weights, candidate, 2, seed=99, stable=stable)
    if not probes:
        return True
    expected, body = probes[0]
    deadline = time.monotonic() + ROUTING_WAIT_S
    while time.monotonic() < deadline:
        status, answer, _ = post(client, body)
        if status == 200 and (answer or {}).get("model_version") == expected:
            return True
        time.sleep(0.25)
    return False


def metrics_feedback(client: Any) -> dict[str, Feedback]:
    """Impressions and clicks per version so far, from the serve's `/metrics` (summed over its ingress replicas)."""
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get("/metrics")
    response.raise_for_status()
    counts: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == FEEDBACK_COUNTER and sample.labels.get("type") in ("impression", "click"):
                per_type = counts.setdefault(sample.labels.get("version", ""), {})
                per_type[sample.labels["type"]] = per_type.get(sample.labels["type"], 0.0) + sample.value
    return {version: Feedback(impressions=c.get("impression", 0.0), clicks=c.get("click", 0.0))
            for version, c in counts.items()}


@dataclass
class CtrCheck:
    """The click-through gate of the local steps: where the counts come from and the clock it waits on (a test
    passes a fake reader and clock)."""

    read: FeedbackReader
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    poll_s: float = CTR_POLL_S

    def judge(self, baseline: dict[str, Feedback], started: float, stable: Version, candidate: Version,
              spec: RolloutSpec, say: Callable[[str], None]) -> tuple[Verdict, dict[str, Any]]:
        """Poll until the counts since `baseline` can be judged or `maxWaitSeconds` pass since `started`. A gate
        still undecided then fails the step (a run must end: with autoRollback off that leaves the split as it
        is, the local form of holding)."""
        gate, said = spec.analysis.ctr, False
        while True:
            now = self.read()
            since = {v.version: now.get(v.version, Feedback()).minus(baseline.get(v.version, Feedback()))
                     for v in (stable, candidate)}
            waited = self.clock() - started
            judged = judge_ctr(since[stable.version], since[candidate.version], gate, waited_seconds=waited,
                               auto_rollback=spec.auto_rollback, stable_version=stable.version,
                               candidate_version=candidate.version)
            verdict = judged.verdict
            # Clicks ahead of their impressions (events of answers given before the step's baseline) settle as
            # more arrive: poll on, as the operator holds the step, until maxWaitSeconds.
            if verdict.reason not in (AWAITING_IMPRESSIONS, INCONSISTENT_FEEDBACK) or \
                    (verdict.reason == INCONSISTENT_FEEDBACK and waited >= gate.max_wait_seconds):
                break
            if not said:
                say(f"        canary: {verdict.message}")
                said = True
            self.sleep(min(self.poll_s, max(gate.max_wait_seconds - waited, 0.0)))
        if verdict.passed is None:
            verdict = Verdict(False, f"{verdict.message} (the local run stops waiting here)", reason=verdict.reason)
        test = judged.test
        counts = {"stable_impressions": since[stable.version].impressions,
                  "stable_clicks": since[stable.version].clicks,
                  "candidate_impressions": since[candidate.version].impressions,
                  "candidate_clicks": since[candidate.version].clicks,
                  "ctr_z": None if test is None or not math.isfinite(test.z) else _round(test.z),
                  "ctr_p": None if test is None else _round(test.p_value),
                  "ctr_verdict": verdict.label, "ctr_reason": verdict.reason}
        return verdict, counts


def rollout(client: Any, apply_weights: Callable[[dict[str, int]], None], stable: Version, candidate: Version,
            spec: RolloutSpec, say: Callable[[str], None], ctr: CtrCheck | None = None) -> RolloutResult:
    """Step the candidate through `spec.steps`; returns the outcome and each step's check.

    `apply_weights` changes the router's weights (both versions must already be deployed). `ctr`: where the
    click-through gate reads its counts (default: the serve's /metrics through `client`), when the spec enables it.
    """
    local = spec.model_copy(update={"step_interval_seconds": 0})  # the local check replaces the wait
    if local.analysis.enabled and local.analysis.ctr.enabled:
        ctr = ctr or CtrCheck(lambda: metrics_feedback(client))
    else:
        ctr = None
    ctr_started, ctr_baseline = 0.0, {}
    result = RolloutResult(stable.version, candidate.version)
    state, outcome = begin(stable.version, candidate.version, local, _now())
    holds = 0
    counts: dict[str, Any]  # the step's request counts (none when no request was sent)
    while state.in_progress and not state.paused:
        weights = _weights(state, stable, candidate)
        apply_weights(weights)
        routed = wait_for_routing(client, weights, candidate, stable)
        if ctr is not None:
            ctr_started, ctr_baseline = ctr.clock(), ctr.read()
        if not routed:
            verdict, measured, counts = Verdict(False, f"the weights {weights} did not reach the router in "
                                                       f"{ROUTING_WAIT_S:.0f}s"), None, {}
        elif not local.analysis.enabled:
            verdict, measured, counts = Verdict(True, "not gated: spec.rollout.analysis.enabled is false"), None, {}
        else:
            measured, problem, counts = check(client, weights, candidate, seed=len(result.steps), stable=stable)
            verdict = Verdict(False, problem) if problem else judge(measured, local.analysis,
                                                                    require_traffic=state.weight > 0)
            if ctr is not None and verdict.passed is not False:
                ctr_verdict, ctr_counts = ctr.judge(ctr_baseline, ctr_started, stable, candidate, local, say)
                verdict, counts = combine(verdict, ctr_verdict), {**counts, **ctr_counts}
        holds = holds + 1 if verdict.passed is None else 0
        if verdict.passed is None and holds > MAX_HOLDS:
            verdict = Verdict(False, f"{verdict.message} ({holds} checks in a row)")
        result.steps.append({"weights": weights, "verdict": verdict.label, "reason": verdict.reason,
                             "message": verdict.message, **counts, **_measured(measured)})
        cause = f"{verdict.reason}: " if verdict.reason and verdict.passed is False else ""
        say(f"        canary {weights}: {verdict.label} - {cause}{verdict.message}")
        state, outcome = decide(state, local, verdict, _now())
    if outcome is Outcome.PROMOTED:
        final = {stable.version: 0, candidate.version: 100}
    elif outcome is Outcome.ROLLED_BACK:
        final = {stable.version: 100, candidate.version: 0}
    else:  # paused: a breach with autoRollback off leaves the split as it is
        final = _weights(state, stable, candidate)
    apply_weights(final)
    wait_for_routing(client, final, candidate, stable)
    result.outcome, result.final_weights = outcome.value, final
    return result


def _weights(state: RolloutState, stable: Version, candidate: Version) -> dict[str, int]:
    pairs = dict(served_weights(state))
    return {stable.version: pairs.get(stable.version, 0), candidate.version: pairs.get(candidate.version, 0)}


def _measured(measured: Measurement | None) -> dict[str, Any]:
    if measured is None:
        return {}
    return {"candidate_rps": _round(measured.requests_per_second), "error_rate": _round(measured.error_rate),
            "p99_ms": _round(measured.p99_latency_ms)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _now() -> datetime:
    return datetime.now(UTC)
