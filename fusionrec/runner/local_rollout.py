"""A canary rollout on the local Serve, with the operator's state machine (`fusionrec.operator.rollout`).

Both versions are deployed behind the router; each step of `spec.rollout.steps` changes only the router's
`user_config` weights (no replica restarts, as on a cluster) and is followed by a short check on loopback
instead of the cluster's Prometheus window: requests are sent to both versions (their keys chosen so the
candidate gets its share even at 10%), and the candidate's error rate and p99 latency are judged against
`spec.rollout.analysis` by the operator's own `judge`. A breach rolls all traffic back to the old version
(100/0), unless `autoRollback` is off, in which case the split stays where it is. With
`spec.rollout.analysis.enabled: false` each step only waits for the new weights to reach the router.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from fusionrec.operator.rollout import Measurement, Outcome, RolloutState, Verdict, begin, decide, judge, served_weights
from fusionrec.runner.local_serve import Version, post, sample_requests
from fusionrec.spec import RolloutSpec

CHECK_REQUESTS = 40  # per step, over both versions
MIN_CANDIDATE_REQUESTS = 10  # the candidate's share is at least this, even at a 10% weight
ROUTING_WAIT_S = 60.0
MAX_HOLDS = 2  # inconclusive checks in a row before the step counts as failed


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


def keyed_requests(weights: dict[str, int], candidate: Version, n: int, seed: int) -> list[tuple[str, dict]]:
    """(version the router must pick, request) pairs: history-keyed requests, sorted into versions by the
    router's own bucket function, so each version with traffic gets its share and the candidate at least
    MIN_CANDIDATE_REQUESTS."""
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
    pool = sample_requests(candidate.artifact, 50 * n, seed=seed)
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


def check(client: Any, weights: dict[str, int], candidate: Version, seed: int) -> tuple[Measurement, str, dict]:
    """Send the step's requests; the candidate's measurement, a routing problem (or ""), and counts."""
    requests = keyed_requests(weights, candidate, CHECK_REQUESTS, seed)
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


def wait_for_routing(client: Any, weights: dict[str, int], candidate: Version) -> bool:
    """Poll until a request keyed into the candidate's share (or, at weight 0, the stable's) is answered by
    that version: the new weights have reached the router."""
    probes = keyed_requests(weights, candidate, 2, seed=99)
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


def rollout(client: Any, apply_weights: Callable[[dict[str, int]], None], stable: Version, candidate: Version,
            spec: RolloutSpec, say: Callable[[str], None]) -> RolloutResult:
    """Step the candidate through `spec.steps`; returns the outcome and each step's check.

    `apply_weights` changes the router's weights (both versions must already be deployed).
    """
    local = spec.model_copy(update={"step_interval_seconds": 0})  # the local check replaces the wait
    result = RolloutResult(stable.version, candidate.version)
    state, outcome = begin(stable.version, candidate.version, local, _now())
    holds = 0
    counts: dict[str, Any]  # the step's request counts (none when no request was sent)
    while state.in_progress and not state.paused:
        weights = _weights(state, stable, candidate)
        apply_weights(weights)
        if not wait_for_routing(client, weights, candidate):
            verdict, measured, counts = Verdict(False, f"the weights {weights} did not reach the router in "
                                                       f"{ROUTING_WAIT_S:.0f}s"), None, {}
        elif not local.analysis.enabled:
            verdict, measured, counts = Verdict(True, "not gated: spec.rollout.analysis.enabled is false"), None, {}
        else:
            measured, problem, counts = check(client, weights, candidate, seed=len(result.steps))
            verdict = Verdict(False, problem) if problem else judge(measured, local.analysis,
                                                                    require_traffic=state.weight > 0)
        holds = holds + 1 if verdict.passed is None else 0
        if verdict.passed is None and holds > MAX_HOLDS:
            verdict = Verdict(False, f"{verdict.message} ({holds} checks in a row)")
        result.steps.append({"weights": weights, "verdict": verdict.label, "message": verdict.message,
                             **counts, **_measured(measured)})
        say(f"        canary {weights}: {verdict.label} - {verdict.message}")
        state, outcome = decide(state, local, verdict, _now())
    if outcome is Outcome.PROMOTED:
        final = {stable.version: 0, candidate.version: 100}
    elif outcome is Outcome.ROLLED_BACK:
        final = {stable.version: 100, candidate.version: 0}
    else:  # paused: a breach with autoRollback off leaves the split as it is
        final = _weights(state, stable, candidate)
    apply_weights(final)
    wait_for_routing(client, final, candidate)
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
