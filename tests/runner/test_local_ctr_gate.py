"""The click-through gate of `fusionrec run`'s local canary: counts from the serve's /metrics, judged per step by
the operator's gate, with a fake metrics source and clock (no Ray, no serve)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from fusionrec.operator.ctr_gate import Feedback
from fusionrec.operator.rollout import Measurement
from fusionrec.runner import local_rollout
from fusionrec.runner.local_rollout import CtrCheck, metrics_feedback
from fusionrec.runner.local_serve import Version
from fusionrec.runner.summary import RunReport
from fusionrec.spec import RolloutSpec

STABLE, CANDIDATE = Version("v1", Path("a")), Version("v2", Path("b"))


class FakeResponse:
    def __init__(self, text: str) -> None:
        self.text = text

    def raise_for_status(self) -> None:
        pass


class FakeClient:
    def __init__(self, text: str) -> None:
        self.text = text
        self.asked: list[str] = []

    def get(self, path: str) -> FakeResponse:
        self.asked.append(path)
        return FakeResponse(self.text)


def test_feedback_is_read_per_version_from_the_prometheus_exposition():
    registry = CollectorRegistry()
    events = Counter("fusionrec_feedback_events", "Feedback events.", ["version", "type"], registry=registry)
    events.labels(version="v1", type="impression").inc(1200)
    events.labels(version="v1", type="click").inc(48)
    events.labels(version="v2", type="impression").inc(300)
    events.labels(version="v2", type="purchase").inc(7)
    client = FakeClient(generate_latest(registry).decode())
    counts = metrics_feedback(client)
    assert client.asked == ["/metrics"]
    assert counts == {"v1": Feedback(1200.0, 48.0), "v2": Feedback(300.0, 0.0)}
    assert metrics_feedback(FakeClient("# no events yet\n")) == {}


def test_feedback_is_read_from_what_the_serving_app_exports_summed_over_ingress_replicas():
    """The contract with POST /v1/events: the serving app's own counter, as its /metrics renders it."""
    from fusionrec.serving.metrics import ServingMetrics, merge, render

    replicas = [ServingMetrics(), ServingMetrics()]
    replicas[0].observe_feedback("v1", "impression", 700)
    replicas[1].observe_feedback("v1", "impression", 500)
    replicas[1].observe_feedback("v1", "click", 30)
    replicas[0].observe_feedback("v2", "click", 2)
    replicas[0].observe_feedback("v2", "impression", 90)
    text = render(merge(r.snapshot() for r in replicas)).decode()
    assert metrics_feedback(FakeClient(text)) == {"v1": Feedback(1200.0, 30.0), "v2": Feedback(90.0, 2.0)}


class Shop:
    """A fake clock and the cumulative counts a shop's events would leave in /metrics: each version gets
    `impressions_per_s` impressions per second, clicked at its own rate."""

    def __init__(self, ctr: dict[str, float], impressions_per_s: float = 20.0) -> None:
        self.t = 0.0
        self.ctr = ctr
        self.rate = impressions_per_s
        self.sleeps: list[float] = []

    def read(self) -> dict[str, Feedback]:
        shown = 5_000 + self.rate * self.t  # the stable version had impressions before the canary
        return {v: Feedback(shown, round(shown * ctr)) for v, ctr in self.ctr.items()}

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds

    def check(self) -> CtrCheck:
        return CtrCheck(self.read, sleep=self.sleep, clock=lambda: self.t, poll_s=10.0)


def run(monkeypatch, shop: Shop, **rollout) -> tuple[local_rollout.RolloutResult, list[dict[str, int]], list[str]]:
    good = Measurement(requests_per_second=50.0, error_rate=0.0, p99_latency_ms=5.0)
    monkeypatch.setattr(local_rollout, "check", lambda *_a, **_k: (good, "", {"requests": 40}))
    monkeypatch.setattr(local_rollout, "wait_for_routing", lambda *_a, **_k: True)
    spec = RolloutSpec.model_validate({"steps": [10, 50, 100], **rollout, "analysis": {
        "ctr": {"enabled": True, "minImpressions": 1000, "maxWaitSeconds": 300}}})
    applied: list[dict[str, int]] = []
    said: list[str] = []
    result = local_rollout.rollout(None, applied.append, STABLE, CANDIDATE, spec, said.append, ctr=shop.check())
    return result, applied, said


def test_a_candidate_that_clicks_like_stable_is_promoted_after_waiting_for_impressions(monkeypatch):
    shop = Shop({"v1": 0.04, "v2": 0.041})
    result, applied, said = run(monkeypatch, shop)
    assert result.outcome == "Promoted" and [w["v2"] for w in applied] == [10, 50, 100]
    assert any("waiting for impressions" in line for line in said)
    first = result.steps[0]
    assert first["ctr_verdict"] == "Pass" and first["ctr_reason"] == "CtrWithinMargin"
    assert first["candidate_impressions"] >= 1000 and first["stable_impressions"] >= 1000
    assert first["stable_impressions"] < 5_000  # counted since the step started, not since the serve did
    assert shop.sleeps and max(shop.sleeps) <= 10.0
    assert "click-through not significantly below" in first["message"] and first["requests"] == 40


def test_a_candidate_with_fewer_clicks_is_rolled_back_with_the_reason(monkeypatch):
    shop = Shop({"v1": 0.05, "v2": 0.03}, impressions_per_s=100.0)
    result, applied, said = run(monkeypatch, shop)
    assert result.outcome == "RolledBack" and result.final_weights == {"v1": 100, "v2": 0}
    assert applied[-1] == {"v1": 100, "v2": 0} and len(result.steps) == 1
    step = result.steps[0]
    assert step["verdict"] == "Fail" and step["reason"] == "CtrBelowStable"
    assert "candidate v2 CTR 3.00%" in step["message"] and "stable v1 CTR 5.00%" in step["message"]
    assert any("Fail - CtrBelowStable: click-through below" in line for line in said)
    report = RunReport("shop", "v2", rollout=result).render()
    assert "rollout v1 -> v2: RolledBack (10% Fail)" in report
    assert "  why: CtrBelowStable: click-through below the stable version's: candidate v2 CTR 3.00%" in report


@pytest.mark.parametrize("auto_rollback,outcome", [(True, "RolledBack"), (False, "Paused")])
def test_too_few_impressions_end_the_step_after_max_wait(monkeypatch, auto_rollback, outcome):
    shop = Shop({"v1": 0.04, "v2": 0.04}, impressions_per_s=1.0)  # 300 s bring 300 of the 1000 needed
    result, applied, _ = run(monkeypatch, shop, autoRollback=auto_rollback)
    assert result.outcome == outcome and shop.t == pytest.approx(300.0)
    step = result.steps[-1]
    assert step["reason"] == "InsufficientImpressions" and "maxWaitSeconds 300" in step["message"]
    expected = {"v1": 100, "v2": 0} if auto_rollback else {"v1": 90, "v2": 10}
    assert result.final_weights == expected


def test_a_failed_slo_check_does_not_wait_for_clicks(monkeypatch):
    shop = Shop({"v1": 0.04, "v2": 0.04}, impressions_per_s=0.0)
    bad = Measurement(requests_per_second=50.0, error_rate=0.5, p99_latency_ms=5.0)
    monkeypatch.setattr(local_rollout, "check", lambda *_a, **_k: (bad, "", {}))
    monkeypatch.setattr(local_rollout, "wait_for_routing", lambda *_a, **_k: True)
    spec = RolloutSpec.model_validate({"analysis": {"ctr": {"enabled": True}}})
    result = local_rollout.rollout(None, lambda _w: None, STABLE, CANDIDATE, spec, lambda _l: None, ctr=shop.check())
    assert result.outcome == "RolledBack" and shop.sleeps == [] and "error rate" in result.steps[0]["message"]


class ClicksBeforeImpressions(Shop):
    """The candidate's first click events arrive before the impressions of the answers they came from (a
    client that batches impressions): clicks ahead of impressions for the first 20 s, then consistent."""

    def read(self) -> dict[str, Feedback]:
        counts = super().read()
        if 0.0 < self.t < 20.0:  # after the step's baseline (read at t=0)
            counts["v2"] = Feedback(5_000.0, round(5_000 * 0.041) + 50)  # 50 clicks since the baseline, no impressions
        return counts


def test_clicks_ahead_of_impressions_are_waited_out_not_rolled_back(monkeypatch):
    shop = ClicksBeforeImpressions({"v1": 0.04, "v2": 0.041})
    result, _, _ = run(monkeypatch, shop)
    assert result.outcome == "Promoted"
    assert shop.t >= 20.0  # it polled through the inconsistent counts
    assert result.steps[0]["ctr_reason"] == "CtrWithinMargin"
