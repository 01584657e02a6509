"""The FusionRecommender's status: typed conditions with named reasons, and a phase derived from them.

Conditions are the source of truth (as in KubeRay's `rayservice_types.go`); `phase` is a summary for
`kubectl get frec` and is always recomputed from the conditions, never set on its own, so the two cannot
disagree. The status model also generates the CRD's status schema (crd.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class Phase(StrEnum):
    PENDING = "Pending"
    TRAINING = "Training"
    ROLLING_OUT = "RollingOut"
    SERVING = "Serving"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class ConditionType(StrEnum):
    SPEC_VALID = "SpecValid"  # the spec parses and fits a cluster
    TRAINED = "Trained"  # the candidate version's RayJob (train, evaluate, compile, write the artifact)
    ROLLED_OUT = "RolledOut"  # the candidate's canary / blue-green rollout
    READY = "Ready"  # the RayService serves
    MONITORING = "MonitoringReady"  # the metrics Service and ServiceMonitor (only when asked for)


class Reason(StrEnum):
    VALID = "Valid"
    INVALID_SPEC = "InvalidSpec"
    SECRET_MISSING = "SecretMissing"  # a Secret the spec names is not in the namespace (SpecValid=False)
    TRAINING_RUNNING = "TrainingRunning"
    TRAINING_SUCCEEDED = "TrainingSucceeded"
    TRAINING_FAILED = "TrainingFailed"
    SUPERSEDED = "Superseded"
    NOT_STARTED = "NotStarted"
    CANARY_IN_PROGRESS = "CanaryInProgress"
    ANALYSIS_INCONCLUSIVE = "AnalysisInconclusive"
    ANALYSIS_UNAVAILABLE = "AnalysisUnavailable"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    ROLLOUT_PAUSED = "RolloutPaused"
    SERVICE_READY = "ServiceReady"
    SERVICE_STARTING = "ServiceStarting"
    SERVICE_UNHEALTHY = "ServiceUnhealthy"
    DEPENDENCY_MISSING = "DependencyMissing"
    SERVICE_MONITOR_CREATED = "ServiceMonitorCreated"
    SERVICE_MONITOR_CRD_MISSING = "ServiceMonitorCRDMissing"


ConditionStatus = Literal["True", "False", "Unknown"]


class StatusModel(BaseModel):
    """camelCase on the wire; unknown keys ignored because kopf keeps its own bookkeeping in the status."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Condition(StatusModel):
    """One metav1.Condition-shaped entry."""

    type: str = Field(description="SpecValid, Trained, RolledOut, Ready or MonitoringReady.")
    status: ConditionStatus
    reason: str = Field(description="CamelCase reason, one of the operator's Reason constants.")
    message: str = ""
    last_transition_time: str = Field(description="RFC 3339 time of the last change of status.")
    observed_generation: int | None = None


class CtrAnalysis(StatusModel):
    """The click-through gate's last look (rollout.analysis.ctr): both versions' counts since the step started."""

    stable_version: str
    stable_impressions: float
    stable_clicks: float
    candidate_impressions: float
    candidate_clicks: float
    stable_ctr: float | None = None
    candidate_ctr: float | None = None
    z: float | None = Field(None, description="Farrington-Manning score z; negative: the candidate is below the "
                                               "bound (1 - maxRelativeDrop) x the stable CTR.")
    p_value: float | None = Field(None, description="One-sided p-value; below 1 - confidence fails the gate.")
    window_seconds: int
    verdict: Literal["Pass", "Fail", "Inconclusive"]
    reason: str | None = Field(None, description="CtrWithinMargin, CtrBelowStable, AwaitingImpressions, "
                                                  "InsufficientImpressions or InconsistentFeedback.")


class AnalysisMetrics(StatusModel):
    """The candidate's last SLO analysis, as read from Prometheus."""

    version: str
    error_rate: float | None = Field(None, description="5xx / all requests over the window.")
    p99_latency_ms: float | None = None
    requests_per_second: float | None = None
    window_seconds: int
    verdict: Literal["Pass", "Fail", "Inconclusive"]
    analyzed_at: str
    ctr: CtrAnalysis | None = None


class FusionRecommenderStatus(StatusModel):
    """What the operator observed and decided; every rollout decision is resumable from these fields."""

    phase: Phase = Phase.PENDING
    observed_generation: int | None = None
    spec_version: str | None = Field(None, description="The spec.version the operator last acted on.")
    current_version: str | None = Field(None, description="The version taking the stable share of traffic.")
    candidate_version: str | None = Field(None, description="The version being trained or rolled out.")
    canary_weight: int = Field(0, ge=0, le=100, description="Percent of traffic on the candidate.")
    rollout_step: int | None = Field(None, ge=0, description="Index into the rollout schedule; null while training.")
    step_started_at: str | None = Field(None, description="When the current rollout step took traffic.")
    rollout_paused: bool = Field(False, description="A breach with autoRollback off holds the rollout here.")
    failed_version: str | None = Field(None, description="The last version whose training or rollout failed.")
    training_job: str | None = Field(None, description="Name of the candidate's RayJob.")
    last_scheduled_run: str | None = Field(None, description="When training.schedule last started a retrain.")
    endpoint: str | None = Field(None, description="In-cluster URL of the serving application.")
    metrics: AnalysisMetrics | None = None
    conditions: list[Condition] = Field(default_factory=list)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> FusionRecommenderStatus:
        return cls.model_validate(body.get("status") or {})

    def to_patch(self) -> dict[str, Any]:
        """The merge-patch body for the status subresource; None values are sent as null so they clear."""
        return self.model_dump(by_alias=True, mode="json")

    def condition(self, type_: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def condition_is(self, type_: ConditionType, status: ConditionStatus, *reasons: Reason) -> bool:
        cond = self.condition(type_)
        return cond is not None and cond.status == status and (not reasons or cond.reason in reasons)


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def set_condition(
    status: FusionRecommenderStatus,
    type_: ConditionType,
    value: ConditionStatus,
    reason: Reason,
    message: str,
    *,
    now: datetime,
    generation: int | None,
) -> bool:
    """Upsert a condition; returns True when its status or reason changed (worth a Kubernetes Event).

    lastTransitionTime moves only when the status flips, as metav1.Condition prescribes.
    """
    old = status.condition(type_)
    if old is not None and old.status == value and old.reason == reason:
        old.message = message
        old.observed_generation = generation
        return False
    stamp = old.last_transition_time if old is not None and old.status == value else format_time(now)
    new = Condition(type=type_, status=value, reason=reason, message=message,
                    last_transition_time=stamp, observed_generation=generation)
    status.conditions = [c for c in status.conditions if c.type != type_] + [new]
    return True


def remove_condition(status: FusionRecommenderStatus, type_: ConditionType) -> None:
    status.conditions = [c for c in status.conditions if c.type != type_]


def derive_phase(status: FusionRecommenderStatus) -> Phase:
    """Summarise the conditions, most urgent first.

    A failure that leaves an older version serving is Degraded (traffic is fine, the desired version is
    not); with nothing served it is Failed.
    """
    is_ = status.condition_is
    serving = is_(ConditionType.READY, "True")
    if is_(ConditionType.SPEC_VALID, "False"):  # the spec cannot be acted on; what already serves stays
        return Phase.DEGRADED if status.current_version else Phase.FAILED
    if is_(ConditionType.TRAINED, "False", Reason.TRAINING_RUNNING):
        return Phase.TRAINING
    if status.candidate_version and status.rollout_step is not None and not status.rollout_paused:
        return Phase.ROLLING_OUT
    if is_(ConditionType.TRAINED, "False", Reason.TRAINING_FAILED):
        return Phase.DEGRADED if status.current_version else Phase.FAILED
    if is_(ConditionType.ROLLED_OUT, "False", Reason.ROLLED_BACK, Reason.ROLLOUT_PAUSED):
        return Phase.DEGRADED
    if serving:
        return Phase.SERVING
    if is_(ConditionType.READY, "False", Reason.SERVICE_STARTING):
        return Phase.ROLLING_OUT
    if is_(ConditionType.READY, "False"):
        return Phase.DEGRADED
    return Phase.PENDING
