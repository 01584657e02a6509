"""One reconcile of one FusionRecommender: read it fresh, decide, record the decision, then act on children.

Level-based and idempotent: every call recomputes the children from the spec and the status, so the
kopf change handlers and the periodic timer can both call it, and an operator restarted at any point
picks up where the status says it was. The status is written *before* the RayService is changed, so a
crash between the two leaves the status ahead and the next reconcile finishes the step, instead of
repeating one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn, Protocol

import kopf

from fusionrec.errors import UserError
from fusionrec.operator import consts, rollout
from fusionrec.operator.builders import (
    ServedVersion,
    build_manifest_configmap,
    build_metrics_service,
    build_rayjob,
    build_rayservice,
    build_service_monitor,
)
from fusionrec.operator.builders.common import (
    check_cluster_live,
    check_cluster_spec,
    check_cluster_training,
    rayjob_name,
    serve_endpoint,
)
from fusionrec.operator.builders.credentials import check_credentials_secret, missing_secret_error
from fusionrec.operator.config import OperatorConfig
from fusionrec.operator.cron import CronSchedule, retrain_version
from fusionrec.operator.ctr_gate import judge_ctr
from fusionrec.operator.kube import KubeApi, KubeApiError, owner_uids
from fusionrec.operator.metrics import OperatorMetrics
from fusionrec.operator.observe import JobState, observe_rayjob, observe_rayservice
from fusionrec.operator.prometheus import MetricsSource, PrometheusError
from fusionrec.operator.rollout import Outcome, RolloutState, Verdict
from fusionrec.operator.status import (
    AnalysisMetrics,
    ConditionStatus,
    ConditionType,
    CtrAnalysis,
    FusionRecommenderStatus,
    Reason,
    derive_phase,
    format_time,
    parse_time,
    remove_condition,
    set_condition,
)
from fusionrec.spec import Manifest, manifest_from_dict

log = logging.getLogger(__name__)

# How long an API kind found missing (the ServiceMonitor CRD) is taken as still missing before asking again.
MISSING_KIND_RECHECK_S = 300.0


class EventSink(Protocol):
    def __call__(self, type_: str, reason: str, message: str) -> None: ...


class InvalidSpec(Exception):
    """The spec cannot work on a cluster; retrying without a spec change cannot help."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_manifest(body: dict[str, Any]) -> Manifest:
    meta = body.get("metadata", {})
    document = {k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec")}
    manifest = manifest_from_dict(document, source=f"FusionRecommender {meta.get('namespace')}/{meta.get('name')}")
    check_cluster_spec(manifest.metadata.name, manifest.spec.storage.uri, manifest.spec.serving.auth)
    check_cluster_training(manifest.spec)
    check_cluster_live(manifest)
    check_credentials_secret(manifest.spec)
    if manifest.spec.training.schedule:
        try:
            CronSchedule.parse(manifest.spec.training.schedule)
        except ValueError as exc:
            raise UserError(str(exc), field="spec.training.schedule") from None
    return manifest


def _finite(value: float | None) -> float | None:
    """JSON (and so the status) has no infinity: a p99 beyond the last bucket is recorded as unknown,
    while the verdict message still says it breached."""
    return value if value is not None and math.isfinite(value) else None


def _age_order(obj: dict[str, Any]) -> tuple[str, int]:
    """Oldest first: creationTimestamp has whole seconds, so ties go by the last write's resourceVersion (an
    etcd revision on every server seen; opaque by contract, hence only a tie-breaker)."""
    meta = obj["metadata"]
    version = str(meta.get("resourceVersion") or "")
    return meta.get("creationTimestamp") or "", int(version) if version.isdigit() else 0


@dataclass
class Controller:
    kube: KubeApi
    config: OperatorConfig
    metrics_source: MetricsSource | None = None
    operator_metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    clock: Callable[[], datetime] = utcnow
    # Kinds the API server answered 404 for, with when: not asked again for MISSING_KIND_RECHECK_S.
    missing_kinds: dict[str, float] = field(default_factory=dict)

    def note_missing(self, plural: str) -> None:
        self.missing_kinds[plural] = time.monotonic()

    def recently_missing(self, plural: str) -> bool:
        since = self.missing_kinds.get(plural)
        return since is not None and time.monotonic() - since < MISSING_KIND_RECHECK_S

    async def reconcile(self, namespace: str, name: str, events: EventSink) -> FusionRecommenderStatus | None:
        """Raises InvalidSpec for a spec that cannot work (after recording it in the status)."""
        body = await self.kube.get(consts.FUSIONRECOMMENDERS, namespace, name)
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            return None  # children go with it through their owner references
        run = _Reconcile(self, body, events)
        await run.run()
        return run.status


class _Reconcile:
    """The state of one reconcile; methods in the order they run."""

    def __init__(self, controller: Controller, body: dict[str, Any], events: EventSink) -> None:
        self.c = controller
        self.body = body
        self.events = events
        meta = body["metadata"]
        self.name: str = meta["name"]
        self.namespace: str = meta["namespace"]
        self.generation: int | None = meta.get("generation")
        self.now = controller.clock()
        self.status = FusionRecommenderStatus.from_body(body)
        self.written = self.status.to_patch()
        self.manifest: Manifest
        self.prune_due = False  # a version left the rollout: old versions' training children may go
        self.analysis_unavailable = False

    def condition(self, type_: ConditionType, value: ConditionStatus, reason: Reason, message: str) -> bool:
        return set_condition(self.status, type_, value, reason, message, now=self.now, generation=self.generation)

    def event(self, type_: str, reason: str, message: str) -> None:
        log.info("%s/%s: %s: %s", self.namespace, self.name, reason, message)
        self.events(type_, reason, message)

    def adopt(self, child: dict[str, Any]) -> dict[str, Any]:
        # kopf types `owner` as its Body view, but reads it as a mapping only; ours is the plain dict of the object.
        kopf.adopt(child, owner=self.body)  # type: ignore[arg-type]
        return child

    async def run(self) -> None:
        try:
            self.manifest = parse_manifest(self.body)
        except UserError as exc:
            await self.invalid(exc)
        await self.check_secrets()
        self.condition(ConditionType.SPEC_VALID, "True", Reason.VALID, "the spec is valid")
        try:
            await self.monitoring()
            await self.select_version()
            await self.training()
            await self.rollout()
            await self.write()
            await self.serving()
        except UserError as exc:  # e.g. a child of the same name that belongs to someone else
            await self.invalid(exc)
        except KubeApiError as exc:
            if exc.status == 404 and exc.method == "POST":  # the API server does not serve that kind at all
                await self.dependency_missing(exc)
            if exc.status == 422 and exc.method in ("POST", "PATCH") and "/status" not in exc.path:
                # The server refuses a child built from this spec (a derived name it finds invalid, a
                # ConfigMap over 1 MiB...): retrying cannot help until the spec changes, so say so.
                await self.invalid(UserError(f"the API server refused a child object made from this spec: {exc}",
                                             field="spec"))
            raise
        if self.prune_due:
            await self.prune()
        await self.write()

    async def dependency_missing(self, exc: KubeApiError) -> None:
        """KubeRay (or the children's CRDs) missing is a cluster problem, not a spec one: retried, and shown."""
        message = (f"the API server does not serve {exc.path} (is KubeRay installed, with its RayJob and "
                   f"RayService CRDs?): {exc}")
        if self.condition(ConditionType.READY, "False", Reason.DEPENDENCY_MISSING, message):
            self.event("Warning", Reason.DEPENDENCY_MISSING, message)
        await self.write()

    async def invalid(self, exc: UserError, reason: Reason = Reason.INVALID_SPEC) -> NoReturn:
        if self.condition(ConditionType.SPEC_VALID, "False", reason, exc.render()):
            self.event("Warning", reason, exc.render())
        await self.write()
        raise InvalidSpec(exc.render())

    async def check_secrets(self) -> None:
        """The credentials Secret must exist before any pod is made to need it: a pod whose envFrom names a
        missing Secret only waits in CreateContainerConfigError, where nobody watching the FusionRecommender
        sees it. Checked every reconcile (the Secret may come or go without a spec change); a metadata-only
        read, so the operator never holds the credentials."""
        secret = self.manifest.spec.storage.credentials_secret
        if secret and not await self.c.kube.exists(consts.SECRETS, self.namespace, secret):
            await self.invalid(missing_secret_error(secret, self.namespace), Reason.SECRET_MISSING)

    async def write(self) -> None:
        self.status.phase = derive_phase(self.status)
        self.status.observed_generation = self.generation
        patch = self.status.to_patch()
        if patch != self.written:
            await self.c.kube.patch(consts.FUSIONRECOMMENDERS, self.namespace, self.name, {"status": patch},
                                    subresource="status")
            self.written = patch
        labels = {"namespace": self.namespace, "name": self.name}
        self.c.operator_metrics.rollout_weight.labels(**labels).set(self.status.canary_weight)
        step = self.status.rollout_step
        self.c.operator_metrics.rollout_step.labels(**labels).set(-1 if step is None else step)

    # --- monitoring ---------------------------------------------------------------------------------------

    async def monitoring(self) -> None:
        service = build_metrics_service(self.name, self.namespace)
        monitor = build_service_monitor(self.name, self.namespace)
        if not self.manifest.spec.monitoring.service_monitor:
            if self.status.condition(ConditionType.MONITORING) is not None:
                await self.c.kube.delete(consts.SERVICE_MONITORS, self.namespace, self.name)
                await self.c.kube.delete(consts.SERVICES, self.namespace, service["metadata"]["name"])
                remove_condition(self.status, ConditionType.MONITORING)
            return
        await self.c.kube.ensure(consts.SERVICES, self.adopt(service))
        asked_recently = self.c.recently_missing(consts.SERVICE_MONITORS.plural)
        if asked_recently and self.status.condition_is(ConditionType.MONITORING, "False"):
            return  # asked a moment ago; the condition already says so
        try:
            await self.c.kube.ensure(consts.SERVICE_MONITORS, self.adopt(monitor))
        except KubeApiError as exc:
            if exc.status != 404:
                raise
            self.c.note_missing(consts.SERVICE_MONITORS.plural)
            message = ("monitoring.serviceMonitor is set but the ServiceMonitor CRD (monitoring.coreos.com/v1) is "
                       "not installed; install Prometheus Operator or turn monitoring.serviceMonitor off")
            if self.condition(ConditionType.MONITORING, "False", Reason.SERVICE_MONITOR_CRD_MISSING, message):
                self.event("Warning", Reason.SERVICE_MONITOR_CRD_MISSING, message)
            return
        self.condition(ConditionType.MONITORING, "True", Reason.SERVICE_MONITOR_CREATED,
                       f"ServiceMonitor {self.name} scrapes Service {service['metadata']['name']}")

    # --- which version to build ------------------------------------------------------------------------------

    async def select_version(self) -> None:
        st, spec = self.status, self.manifest.spec
        if st.spec_version != spec.version:
            st.spec_version = spec.version
            if spec.version == st.current_version:
                if st.candidate_version:
                    await self.drop_candidate(f"spec.version is back to {spec.version}, which is serving")
                return
            if spec.version == st.candidate_version:
                return
            if st.candidate_version:
                await self.drop_candidate(f"superseded by spec.version {spec.version}")
            await self.start_candidate(spec.version, "spec.version changed")
            return
        if spec.training.schedule and not st.candidate_version:
            created = parse_time(self.body["metadata"].get("creationTimestamp"))
            since = parse_time(st.last_scheduled_run) or created or self.now
            due = CronSchedule.parse(spec.training.schedule).next_after(since)
            if self.now >= due:
                st.last_scheduled_run = format_time(self.now)
                await self.start_candidate(retrain_version(spec.version, self.now),
                                           f"training.schedule {spec.training.schedule!r} fired at {format_time(due)}")

    async def start_candidate(self, version: str, why: str) -> None:
        st = self.status
        st.candidate_version = version
        st.rollout_step, st.canary_weight, st.step_started_at, st.rollout_paused = None, 0, None, False
        st.metrics = None
        st.training_job = rayjob_name(self.name, version)
        await self.ensure_training_children(version)
        self.condition(ConditionType.TRAINED, "False", Reason.TRAINING_RUNNING,
                       f"RayJob {st.training_job} trains version {version} ({why})")
        self.condition(ConditionType.ROLLED_OUT, "Unknown", Reason.NOT_STARTED, f"{version} is training")
        self.event("Normal", "TrainingStarted", f"RayJob {st.training_job} trains version {version} ({why})")
        self.c.operator_metrics.training_jobs.labels(outcome="started").inc()

    async def ensure_training_children(self, version: str) -> None:
        configmap = self.adopt(build_manifest_configmap(self.manifest, version))
        await self.c.kube.ensure(consts.CONFIGMAPS, configmap, update=False)
        rayjob = self.adopt(build_rayjob(self.manifest, version, self.c.config))
        await self.c.kube.ensure(consts.RAYJOBS, rayjob, update=False)

    async def drop_candidate(self, why: str) -> None:
        st = self.status
        version = st.candidate_version
        if st.rollout_step is None and st.training_job:  # still training: free its Ray cluster
            await self.c.kube.delete(consts.RAYJOBS, self.namespace, st.training_job)
            self.condition(ConditionType.TRAINED, "False", Reason.SUPERSEDED, f"training of {version} stopped: {why}")
        else:
            self.condition(ConditionType.ROLLED_OUT, "False", Reason.SUPERSEDED,
                           f"rollout of {version} stopped at {st.canary_weight}%: {why}")
        self.event("Normal", Reason.SUPERSEDED, f"candidate {version} dropped: {why}")
        self.prune_due = True
        st.candidate_version, st.training_job = None, None
        st.rollout_step, st.canary_weight, st.step_started_at, st.rollout_paused = None, 0, None, False

    # --- training ------------------------------------------------------------------------------------------

    async def training(self) -> None:
        st = self.status
        if not st.candidate_version or st.rollout_step is not None or not st.training_job:
            return
        version = st.candidate_version
        job = await self.c.kube.get(consts.RAYJOBS, self.namespace, st.training_job)
        if job is None:  # e.g. deleted by hand: training is what the status asks for, so start it again
            await self.ensure_training_children(version)
            return
        seen = observe_rayjob(job)
        if seen.state == JobState.RUNNING:
            self.condition(ConditionType.TRAINED, "False", Reason.TRAINING_RUNNING,
                           f"RayJob {st.training_job} trains version {version}: {seen.message}")
        elif seen.state == JobState.FAILED:
            keeps = f"version {st.current_version} keeps serving" if st.current_version else "nothing is served yet"
            message = f"RayJob {st.training_job} for version {version} failed: {seen.message}; {keeps}"
            self.condition(ConditionType.TRAINED, "False", Reason.TRAINING_FAILED, message)
            self.condition(ConditionType.ROLLED_OUT, "Unknown", Reason.NOT_STARTED, f"{version} did not train")
            self.event("Warning", Reason.TRAINING_FAILED, message)
            self.c.operator_metrics.training_jobs.labels(outcome="failed").inc()
            st.failed_version, st.candidate_version = version, None
            self.prune_due = True
        else:
            self.condition(ConditionType.TRAINED, "True", Reason.TRAINING_SUCCEEDED,
                           f"RayJob {st.training_job} trained, evaluated and compiled version {version}")
            self.event("Normal", Reason.TRAINING_SUCCEEDED, f"version {version} is trained; rolling it out")
            self.c.operator_metrics.training_jobs.labels(outcome="succeeded").inc()
            state, outcome = rollout.begin(st.current_version, version, self.manifest.spec.rollout, self.now)
            self.apply(state, outcome, None)

    # --- rollout -------------------------------------------------------------------------------------------

    # Annotations here name RolloutState, Verdict and Outcome directly: in this class `rollout` is the method below.
    def state(self) -> RolloutState:
        st = self.status
        return rollout.RolloutState(current=st.current_version, candidate=st.candidate_version, step=st.rollout_step,
                                    weight=st.canary_weight, step_started_at=parse_time(st.step_started_at),
                                    paused=st.rollout_paused)

    async def rollout(self) -> None:
        state, spec = self.state(), self.manifest.spec.rollout
        if not rollout.is_due(state, spec, self.now):
            return
        verdict = await self.analyse(state)
        new_state, outcome = rollout.decide(state, spec, verdict, self.now)
        self.apply(new_state, outcome, verdict)

    async def analyse(self, state: RolloutState) -> Verdict:
        analysis = self.manifest.spec.rollout.analysis
        if not self.status.condition_is(ConditionType.READY, "True"):
            return rollout.Verdict(None, "the RayService is not Ready, so the candidate's metrics would mislead")
        if not analysis.enabled:
            return rollout.Verdict(True, "not gated: spec.rollout.analysis.enabled is false, so steps advance on "
                                         "stepIntervalSeconds alone")
        source = self.c.metrics_source
        if source is None:
            self.analysis_unavailable = True
            return rollout.Verdict(None, "no metrics to gate on: the operator has no Prometheus "
                                         "(FUSIONREC_PROMETHEUS_URL, chart value operator.prometheus.url); configure "
                                         "one, or set spec.rollout.analysis.enabled: false to advance on time alone")
        try:
            measured = await source.measure(namespace=self.namespace, name=self.name, version=state.candidate or "",
                                            window_seconds=analysis.window_seconds)
        except PrometheusError as exc:
            return rollout.Verdict(None, str(exc))
        verdict = rollout.judge(measured, analysis, require_traffic=state.weight > 0)
        self.status.metrics = AnalysisMetrics(
            version=state.candidate or "", error_rate=_finite(measured.error_rate),
            p99_latency_ms=_finite(measured.p99_latency_ms), requests_per_second=_finite(measured.requests_per_second),
            window_seconds=analysis.window_seconds, verdict=verdict.label, analyzed_at=format_time(self.now))
        if analysis.ctr.enabled:
            verdict = rollout.combine(verdict, await self.analyse_ctr(state, source))
        return verdict

    async def analyse_ctr(self, state: RolloutState, source: MetricsSource) -> Verdict:
        """The click-through gate: both versions' impressions and clicks since the step started (at least
        windowSeconds), so a step that waits for impressions gathers them instead of sliding past them."""
        spec = self.manifest.spec.rollout
        gate, stable, candidate = spec.analysis.ctr, state.current or "", state.candidate or ""
        started = state.step_started_at or self.now
        window = max(spec.analysis.window_seconds, math.ceil((self.now - started).total_seconds()))
        waited = (self.now - started).total_seconds() - spec.step_interval_seconds
        try:
            counts = [await source.feedback(namespace=self.namespace, name=self.name, version=version,
                                            window_seconds=window) for version in (stable, candidate)]
        except PrometheusError as exc:
            return rollout.Verdict(None, f"click-through: {exc}")
        judged = judge_ctr(counts[0], counts[1], gate, waited_seconds=waited, auto_rollback=spec.auto_rollback,
                           stable_version=stable, candidate_version=candidate)
        test = judged.test
        if self.status.metrics is not None:
            self.status.metrics.ctr = CtrAnalysis(
                stable_version=stable, stable_impressions=counts[0].impressions, stable_clicks=counts[0].clicks,
                candidate_impressions=counts[1].impressions, candidate_clicks=counts[1].clicks,
                stable_ctr=counts[0].ctr, candidate_ctr=counts[1].ctr, z=_finite(test.z) if test else None,
                p_value=test.p_value if test else None, window_seconds=window, verdict=judged.verdict.label,
                reason=judged.verdict.reason)
        return judged.verdict

    def apply(self, state: RolloutState, outcome: Outcome, verdict: Verdict | None) -> None:
        st = self.status
        candidate = st.candidate_version
        st.current_version, st.candidate_version = state.current, state.candidate
        st.rollout_step, st.canary_weight, st.rollout_paused = state.step, state.weight, state.paused
        st.step_started_at = format_time(state.step_started_at) if state.step_started_at else None
        why = f": {verdict.message}" if verdict else ""
        if verdict and verdict.reason and outcome in (rollout.Outcome.ROLLED_BACK, rollout.Outcome.PAUSED):
            why = f": {verdict.reason}: {verdict.message}"  # the cause first, where a gate names one
        if outcome != rollout.Outcome.WAITING:
            self.c.operator_metrics.rollout_outcomes.labels(outcome=outcome.value).inc()
        if outcome == rollout.Outcome.STEPPED:
            total = len(rollout.schedule(self.manifest.spec.rollout))
            message = f"{candidate} takes {state.weight}% of traffic (step {(state.step or 0) + 1} of {total}){why}"
            self.condition(ConditionType.ROLLED_OUT, "False", Reason.CANARY_IN_PROGRESS, message)
            self.event("Normal", "RolloutStep", message)
        elif outcome == rollout.Outcome.PROMOTED:
            message = f"{candidate} takes 100% of traffic{why}"
            self.condition(ConditionType.ROLLED_OUT, "True", Reason.PROMOTED, message)
            self.event("Normal", Reason.PROMOTED, message)
        elif outcome == rollout.Outcome.ROLLED_BACK:
            message = f"{candidate} rolled back, {state.current} takes 100% again{why}"
            st.failed_version = candidate
            self.condition(ConditionType.ROLLED_OUT, "False", Reason.ROLLED_BACK, message)
            self.event("Warning", Reason.ROLLED_BACK, message)
        elif outcome == rollout.Outcome.PAUSED:
            message = (f"{candidate} failed its analysis at {state.weight}%; autoRollback is off, so the weights "
                       f"stay{why}")
            self.condition(ConditionType.ROLLED_OUT, "False", Reason.ROLLOUT_PAUSED, message)
            self.event("Warning", Reason.ROLLOUT_PAUSED, message)
        elif outcome == rollout.Outcome.HELD and self.analysis_unavailable:
            message = f"{candidate} stays at {state.weight}%{why}"
            if self.condition(ConditionType.ROLLED_OUT, "False", Reason.ANALYSIS_UNAVAILABLE, message):
                self.event("Warning", Reason.ANALYSIS_UNAVAILABLE, message)
        elif outcome == rollout.Outcome.HELD:
            message = f"{candidate} stays at {state.weight}%: analysis inconclusive{why}"
            if self.condition(ConditionType.ROLLED_OUT, "False", Reason.ANALYSIS_INCONCLUSIVE, message):
                self.event("Normal", Reason.ANALYSIS_INCONCLUSIVE, message)
        if outcome in (rollout.Outcome.PROMOTED, rollout.Outcome.ROLLED_BACK):
            self.prune_due = True

    # --- retention -----------------------------------------------------------------------------------------

    async def prune(self) -> None:
        """Delete the training RayJobs and manifest ConfigMaps of versions that left the rollout, keeping the
        newest `config.keep_versions` of them (for their logs and manifests) besides those still in play."""
        selector = f"{consts.NAME_LABEL}={self.name},{consts.COMPONENT_LABEL}=train"
        jobs = await self.c.kube.list(consts.RAYJOBS, self.namespace, label_selector=selector)
        for name in self.retired(jobs):
            await self.c.kube.delete(consts.RAYJOBS, self.namespace, name)
        manifests = await self.c.kube.list(consts.CONFIGMAPS, self.namespace, label_selector=selector)
        for name in self.retired(manifests):
            await self.c.kube.delete(consts.CONFIGMAPS, self.namespace, name)

    def retired(self, children: list[dict[str, Any]]) -> list[str]:
        """Names of this object's children beyond the kept retired versions, newest kept first."""
        st = self.status
        in_play = {v for v in (st.current_version, st.candidate_version) if v}
        uid = self.body["metadata"].get("uid")
        mine = sorted((c for c in children if uid in owner_uids(c)), key=_age_order, reverse=True)
        out = [c["metadata"]["name"] for c in mine
               if c["metadata"].get("labels", {}).get(consts.VERSION_LABEL) not in in_play]
        dropped = out[self.c.config.keep_versions:]
        if dropped:
            log.info("%s/%s: deleting children of retired versions: %s", self.namespace, self.name, dropped)
        return dropped

    # --- serving -------------------------------------------------------------------------------------------

    async def serving(self) -> None:
        weights = rollout.served_weights(self.state())
        if not weights:
            return
        versions = [ServedVersion(version, weight) for version, weight in weights]
        desired = self.adopt(build_rayservice(self.manifest, versions, self.c.config))
        service, _ = await self.c.kube.ensure(consts.RAYSERVICES, desired)
        self.status.endpoint = serve_endpoint(self.name, self.namespace)
        seen = observe_rayservice(service)
        if seen.ready:
            self.condition(ConditionType.READY, "True", Reason.SERVICE_READY, seen.message)
        elif seen.starting:
            self.condition(ConditionType.READY, "False", Reason.SERVICE_STARTING, seen.message)
        elif self.condition(ConditionType.READY, "False", Reason.SERVICE_UNHEALTHY, seen.message):
            self.event("Warning", Reason.SERVICE_UNHEALTHY, seen.message)
