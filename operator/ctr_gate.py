"""The click-through gate of a canary step, pure: (stable's and candidate's counts, the gate's spec, how long the
step has waited) -> pass, fail or wait, with a reason that carries the numbers.

The question is one of non-inferiority: is the candidate's CTR p_c significantly below (1 - m) x the stable
version's p_s, m being `maxRelativeDrop`? The null hypothesis is p_c >= (1 - m) p_s, and the candidate fails only
when the data reject it at `confidence`; without that evidence it passes, so a small or noisy sample never rolls
a model back by chance more often than 1 - confidence of the time.

The test is Farrington and Manning's score test for a ratio of two proportions (Statistics in Medicine 9, 1990):
the z of p̂_c - θ p̂_s (θ = 1 - m) with its variance taken at the maximum-likelihood proportions *under the
null* (p_c = θ p_s), not at the observed ones as a Wald z would. That keeps its size close to nominal with few
clicks and when one side has none (a Wald variance of zero there makes any drop look infinitely significant).
The normal tail is `math.erfc`: the operator's image carries no scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fusionrec.operator.rollout import Verdict
from fusionrec.spec import CtrGateSpec

# Verdict reasons: the cause of a failure (or of a wait), named in the rollback reason, the status and the events.
CTR_BELOW_STABLE = "CtrBelowStable"
INSUFFICIENT_IMPRESSIONS = "InsufficientImpressions"
AWAITING_IMPRESSIONS = "AwaitingImpressions"
INCONSISTENT_FEEDBACK = "InconsistentFeedback"
CTR_WITHIN_MARGIN = "CtrWithinMargin"


@dataclass(frozen=True)
class Feedback:
    """Impressions and clicks one version got over the analysis window (Prometheus' increase() extrapolates, so
    these may be fractional)."""

    impressions: float = 0.0
    clicks: float = 0.0

    @property
    def ctr(self) -> float | None:
        return self.clicks / self.impressions if self.impressions > 0 else None

    def minus(self, earlier: Feedback) -> Feedback:
        """What was counted since `earlier` (a counter that went back, a restart, counts from zero again)."""
        impressions = self.impressions - earlier.impressions
        clicks = self.clicks - earlier.clicks
        if impressions < 0 or clicks < 0:
            return self
        return Feedback(impressions, clicks)


@dataclass(frozen=True)
class NonInferiority:
    """The score test's statistic and its one-sided p-value (small: the candidate is worse than the margin)."""

    z: float
    p_value: float


@dataclass(frozen=True)
class CtrJudgement:
    """The gate's verdict with the numbers behind it, for the status and the run's report."""

    verdict: Verdict
    stable: Feedback
    candidate: Feedback
    test: NonInferiority | None = None


def normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def noninferiority_test(stable: Feedback, candidate: Feedback, max_relative_drop: float) -> NonInferiority:
    """Farrington-Manning score test of H0: p_c >= θ p_s against H1: p_c < θ p_s, θ = 1 - max_relative_drop.

    The restricted maximum-likelihood p_s under p_c = θ p_s is the smaller root of
    N θ p² - (n_c θ + x_c + n_s + x_s θ) p + (x_c + x_s) = 0 (N = n_c + n_s; x clicks, n impressions), written
    as 2C / (-B + sqrt(B² - 4AC)) so it loses no digits when the product AC is small.
    """
    theta = 1.0 - max_relative_drop
    n_c, x_c = candidate.impressions, candidate.clicks
    n_s, x_s = stable.impressions, stable.clicks
    if n_c <= 0 or n_s <= 0:
        raise ValueError("the test needs impressions on both versions")
    a = (n_c + n_s) * theta
    b = -(n_c * theta + x_c + n_s + x_s * theta)
    c = x_c + x_s
    root = math.sqrt(max(b * b - 4.0 * a * c, 0.0))
    p_s = 2.0 * c / (-b + root) if c > 0 else 0.0
    p_c = theta * p_s
    variance = p_c * (1.0 - p_c) / n_c + theta * theta * p_s * (1.0 - p_s) / n_s
    difference = x_c / n_c - theta * x_s / n_s
    if variance <= 0.0:  # no clicks anywhere (or every impression clicked): no evidence either way
        z = 0.0 if difference == 0 else math.copysign(math.inf, difference)
    else:
        z = difference / math.sqrt(variance)
    return NonInferiority(z=z, p_value=normal_cdf(z))


def judge_ctr(stable: Feedback, candidate: Feedback, gate: CtrGateSpec, *, waited_seconds: float, auto_rollback: bool,
              stable_version: str = "stable", candidate_version: str = "candidate") -> CtrJudgement:
    """The click-through gate of one step.

    `waited_seconds`: how long the step has been due (its interval passed) without enough impressions; past
    `gate.max_wait_seconds` a step still short of them fails (InsufficientImpressions) when `auto_rollback`,
    else it holds and says so.
    """
    names = f"stable {stable_version} {_counts(stable)}, candidate {candidate_version} {_counts(candidate)}"
    for version, counts in ((stable_version, stable), (candidate_version, candidate)):
        if counts.clicks > counts.impressions:
            return CtrJudgement(Verdict(
                None, f"{version} has more clicks than impressions ({names}): every shown item needs an impression "
                      "event (POST /v1/events type impression), so the click-through cannot be judged",
                reason=INCONSISTENT_FEEDBACK), stable, candidate)
    needed = gate.min_impressions
    if stable.impressions < needed or candidate.impressions < needed:
        short = f"{names}; minImpressions is {needed} each"
        if waited_seconds < gate.max_wait_seconds:
            return CtrJudgement(Verdict(
                None, f"waiting for impressions: {short} (waited {waited_seconds:.0f}s of maxWaitSeconds "
                      f"{gate.max_wait_seconds})", reason=AWAITING_IMPRESSIONS), stable, candidate)
        message = f"too few impressions after maxWaitSeconds {gate.max_wait_seconds}: {short}"
        if auto_rollback:
            return CtrJudgement(Verdict(False, message, reason=INSUFFICIENT_IMPRESSIONS), stable, candidate)
        return CtrJudgement(Verdict(None, f"{message}; autoRollback is off, so the step holds until they arrive",
                                    reason=INSUFFICIENT_IMPRESSIONS), stable, candidate)
    test = noninferiority_test(stable, candidate, gate.max_relative_drop)
    alpha = 1.0 - gate.confidence
    assert stable.ctr is not None and candidate.ctr is not None  # both have impressions (>= minImpressions >= 1)
    bound = (1.0 - gate.max_relative_drop) * stable.ctr
    numbers = (f"candidate {candidate_version} CTR {_percent(candidate.ctr)} ({_counts(candidate)}), stable "
               f"{stable_version} CTR {_percent(stable.ctr)} ({_counts(stable)}), bound (1 - maxRelativeDrop "
               f"{gate.max_relative_drop:g}) x stable = {_percent(bound)}; z={test.z:.2f}, p={test.p_value:.3g}")
    if test.p_value < alpha:
        return CtrJudgement(Verdict(False, f"click-through below the stable version's: {numbers} < "
                                           f"{alpha:.3g} (confidence {gate.confidence:g})", reason=CTR_BELOW_STABLE),
                            stable, candidate, test)
    return CtrJudgement(Verdict(True, f"click-through not significantly below the bound: {numbers} >= {alpha:.3g}",
                                reason=CTR_WITHIN_MARGIN), stable, candidate, test)


def _counts(feedback: Feedback) -> str:
    return f"{feedback.clicks:.0f} clicks / {feedback.impressions:.0f} impressions"


def _percent(value: float) -> str:
    return f"{100.0 * value:.2f}%"
