"""The reconcile logic end to end, in-process: the real Controller and KubeApi against kmock's emulator,
with a fake clock and a fake metrics source (the real Prometheus and the real operator process are in
test_operator_prometheus_real.py and test_operator_kmock.py)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import kmock
import kopf
import pytest
import pytest_asyncio

from fusionrec.operator import consts
from fusionrec.operator.builders.serving import ServedVersion
from fusionrec.operator.config import OperatorConfig
from fusionrec.operator.controller import Controller, InvalidSpec
from fusionrec.operator.ctr_gate import Feedback
from fusionrec.operator.kube import KubeApi, KubeApiError
from fusionrec.operator.prometheus import PrometheusError
from fusionrec.operator.rollout import Measurement
from fusionrec.operator.status import ConditionType, FusionRecommenderStatus, Phase

from _served import served_versions

NS, NAME = "recs", "shop-recs"
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
GOOD = Measurement(requests_per_second=20.0, error_rate=0.001, p99_latency_ms=12.0)
BAD = Measurement(requests_per_second=20.0, error_rate=0.2, p99_latency_ms=12.0)


class FakeMetrics:
    """MetricsSource whose answers the test sets per version."""

    def __init__(self) -> None:
        self.answers: dict[str, Measurement | Exception] = {}
        self.asked: list[str] = []
        self.feedback_answers: dict[str, Feedback] = {}
        self.feedback_asked: list[tuple[str, int]] = []

    async def measure(self, *, namespace: str, name: str, version: str, window_seconds: int) -> Measurement:
        self.asked.append(version)
        answer = self.answers.get(version, Measurement(None, None, None))
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def feedback(self, *, namespace: str, name: str, version: str, window_seconds: int) -> Feedback:
        self.feedback_asked.append((version, window_seconds))
        return self.feedback_answers.get(version, Feedback())


class Harness:
    def __init__(self, emulator: Any, url: str) -> None:
        self.emulator = emulator
        self.kube = KubeApi(lambda: kopf.ConnectionInfo(server=url))
        self.now = T0
        self.metrics = FakeMetrics()
        self.events: list[tuple[str, str, str]] = []
        self.controller = self.new_controller()

    def new_controller(self) -> Controller:
        """A fresh controller, as after an operator restart: it keeps nothing but what the cluster holds."""
        return Controller(kube=self.kube, config=OperatorConfig(), metrics_source=self.metrics, clock=lambda: self.now)

    async def create(self, doc: dict[str, Any]) -> None:
        await self.kube.create(consts.FUSIONRECOMMENDERS, NS, doc)

    async def reconcile(self) -> FusionRecommenderStatus:
        return await self.controller.reconcile(NS, NAME, lambda *event: self.events.append(event))

    async def set_spec(self, **changes: Any) -> None:
        body = self.get(consts.FUSIONRECOMMENDERS, NAME)
        generation = body["metadata"].get("generation", 1) + 1
        await self.kube.patch(consts.FUSIONRECOMMENDERS, NS, NAME,
                              {"metadata": {"generation": generation}, "spec": changes})

    async def finish_job(self, version: str, job_status: str, message: str = "") -> None:
        name = f"{NAME}-train-{version}"
        deployment = "Complete" if job_status == "SUCCEEDED" else "Failed"
        await self.kube.patch(consts.RAYJOBS, NS, name, {"status": {
            "jobStatus": job_status, "jobDeploymentStatus": deployment, "message": message}}, subresource="status")

    async def service_ready(self, ready: bool = True) -> None:
        await self.kube.patch(consts.RAYSERVICES, NS, NAME, {"status": {"conditions": [
            {"type": "Ready", "status": str(ready), "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z",
             "reason": "NonZeroServeEndpoints" if ready else "ZeroServeEndpoints"}]}}, subresource="status")

    @staticmethod
    def key(resource: consts.Resource, name: str) -> tuple[Any, str, str]:
        return kmock.resource(resource.group, resource.version, resource.plural), NS, name

    def get(self, resource: consts.Resource, name: str) -> dict[str, Any] | None:
        key = self.key(resource, name)
        if key not in self.emulator.objects or self.emulator.objects[key].deleted:
            return None
        return self.emulator.objects[key].raw

    def versions(self, resource: consts.Resource, name: str) -> int:
        return len(self.emulator.objects[self.key(resource, name)].history)

    def served(self) -> list[ServedVersion]:
        service = self.get(consts.RAYSERVICES, NAME)
        return served_versions(service) if service else []

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.events]


@pytest_asyncio.fixture
async def h(kube_emulator):
    harness = Harness(*kube_emulator)
    yield harness
    await harness.kube.close()


@pytest.fixture
def cr(design_cr):
    doc = copy.deepcopy(design_cr)
    doc["spec"]["version"] = "v1"
    doc["spec"]["rollout"]["stepIntervalSeconds"] = 60
    doc["spec"]["training"].pop("schedule")
    return doc


async def serve_v1(h: Harness, cr: dict[str, Any]) -> None:
    await h.create(cr)
    await h.reconcile()
    await h.finish_job("v1", "SUCCEEDED")
    await h.reconcile()
    await h.service_ready()
    status = await h.reconcile()
    assert status.phase == Phase.SERVING and h.served() == [ServedVersion("v1", 100)]


@pytest.mark.asyncio
async def test_first_version_trains_then_serves(h, cr):
    await h.create(cr)
    status = await h.reconcile()
    job = h.get(consts.RAYJOBS, "shop-recs-train-v1")
    assert job is not None and h.get(consts.CONFIGMAPS, "shop-recs-v1-manifest") is not None
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == \
        ("FusionRecommender", NAME, cr["metadata"]["uid"], True)
    assert status.phase == Phase.TRAINING and status.training_job == "shop-recs-train-v1"
    assert h.get(consts.RAYSERVICES, NAME) is None  # nothing to serve before training succeeds

    await h.finish_job("v1", "SUCCEEDED")
    status = await h.reconcile()
    assert h.served() == [ServedVersion("v1", 100)]
    assert status.current_version == "v1" and status.phase == Phase.ROLLING_OUT  # RayService still starting
    assert h.get(consts.RAYSERVICES, NAME)["metadata"]["ownerReferences"][0]["uid"] == cr["metadata"]["uid"]

    await h.service_ready()
    status = await h.reconcile()
    assert status.phase == Phase.SERVING
    assert status.endpoint == "http://shop-recs-serve-svc.recs.svc:8000"
    assert status.observed_generation == 1
    stored = h.get(consts.FUSIONRECOMMENDERS, NAME)["status"]
    assert stored["phase"] == "Serving" and stored["currentVersion"] == "v1"
    assert {c["type"]: c["status"] for c in stored["conditions"]} == {
        "SpecValid": "True", "MonitoringReady": "True", "Trained": "True", "RolledOut": "True", "Ready": "True"}
    assert h.get(consts.SERVICE_MONITORS, NAME) is not None and h.get(consts.SERVICES, "shop-recs-metrics")


@pytest.mark.asyncio
async def test_reconcile_is_idempotent(h, cr):
    await serve_v1(h, cr)
    keys = [(consts.FUSIONRECOMMENDERS, NAME), (consts.RAYSERVICES, NAME), (consts.RAYJOBS, "shop-recs-train-v1"),
            (consts.SERVICE_MONITORS, NAME)]
    before = [h.versions(*key) for key in keys]
    for _ in range(3):
        await h.reconcile()
    assert [h.versions(*key) for key in keys] == before  # nothing written when nothing changed


@pytest.mark.asyncio
async def test_canary_with_good_metrics_walks_to_100(h, cr):
    await serve_v1(h, cr)
    await h.set_spec(version="v2")
    status = await h.reconcile()
    assert status.phase == Phase.TRAINING and h.served() == [ServedVersion("v1", 100)]
    await h.finish_job("v2", "SUCCEEDED")
    status = await h.reconcile()
    assert h.served() == [ServedVersion("v1", 90), ServedVersion("v2", 10)]
    assert (status.phase, status.candidate_version, status.canary_weight, status.rollout_step) == \
        (Phase.ROLLING_OUT, "v2", 10, 0)

    h.metrics.answers["v2"] = GOOD
    h.now += timedelta(seconds=30)
    await h.reconcile()
    assert h.served()[1].weight == 10 and h.metrics.asked == []  # not due: no analysis yet
    h.now += timedelta(seconds=30)
    status = await h.reconcile()
    assert h.served() == [ServedVersion("v1", 50), ServedVersion("v2", 50)] and h.metrics.asked == ["v2"]
    assert status.metrics.verdict == "Pass" and status.metrics.error_rate == pytest.approx(0.001)
    h.now += timedelta(seconds=60)
    status = await h.reconcile()
    assert h.served() == [ServedVersion("v2", 100)]
    assert (status.current_version, status.candidate_version, status.canary_weight) == ("v2", None, 0)
    assert status.phase == Phase.SERVING
    assert h.reasons().count("RolloutStep") == 2 and "Promoted" in h.reasons()


@pytest.mark.asyncio
async def test_breach_rolls_back_and_marks_the_candidate_failed(h, cr):
    await serve_v1(h, cr)
    await h.set_spec(version="v2")
    await h.reconcile()
    await h.finish_job("v2", "SUCCEEDED")
    await h.reconcile()
    h.metrics.answers["v2"] = BAD
    h.now += timedelta(seconds=60)
    status = await h.reconcile()
    assert h.served() == [ServedVersion("v1", 100)]
    assert status.failed_version == "v2" and status.current_version == "v1" and status.candidate_version is None
    assert status.phase == Phase.DEGRADED
    rolled = status.condition(ConditionType.ROLLED_OUT)
    assert rolled.reason == "RolledBack" and "error rate 0.2000 > maxErrorRate 0.01" in rolled.message
    assert ("Warning", "RolledBack") in [(t, r) for t, r, _ in h.events]
    h.now += timedelta(minutes=10)
    await h.reconcile()
    assert h.served() == [ServedVersion("v1", 100)]  # v2 is not retried until spec.version changes


@pytest.mark.asyncio
async def test_failed_training_leaves_the_served_version_untouched(h, cr):
    await serve_v1(h, cr)
    serve_config = h.get(consts.RAYSERVICES, NAME)["spec"]["serveConfigV2"]
    await h.set_spec(version="v2")
    await h.reconcile()
    await h.finish_job("v2", "FAILED", "Job entrypoint command failed with exit code 1")
    status = await h.reconcile()
    assert h.get(consts.RAYSERVICES, NAME)["spec"]["serveConfigV2"] == serve_config
    trained = status.condition(ConditionType.TRAINED)
    assert trained.reason == "TrainingFailed" and "exit code 1" in trained.message
    assert "version v1 keeps serving" in trained.message
    assert status.phase == Phase.DEGRADED and status.current_version == "v1" and status.failed_version == "v2"
    jobs_before = h.versions(consts.RAYJOBS, "shop-recs-train-v2")
    await h.reconcile()
    assert h.versions(consts.RAYJOBS, "shop-recs-train-v2") == jobs_before  # no retraining loop


@pytest.mark.asyncio
async def test_restarted_controller_resumes_at_the_recorded_step(h, cr):
    cr["spec"]["rollout"]["steps"] = [10, 30, 60, 100]
    await serve_v1(h, cr)
    await h.set_spec(version="v2")
    await h.reconcile()
    await h.finish_job("v2", "SUCCEEDED")
    await h.reconcile()
    h.metrics.answers["v2"] = GOOD
    h.now += timedelta(seconds=60)
    await h.reconcile()
    assert h.served()[1] == ServedVersion("v2", 30)

    h.controller = h.new_controller()  # "restart": nothing survives but the cluster's state
    h.now += timedelta(seconds=20)
    await h.reconcile()
    assert h.served()[1] == ServedVersion("v2", 30)  # the rest of the step's interval is waited out
    h.now += timedelta(seconds=40)
    status = await h.reconcile()
    assert h.served()[1] == ServedVersion("v2", 60) and status.rollout_step == 2


@pytest.mark.asyncio
async def test_inconclusive_analysis_holds_and_says_why(h, cr):
    await serve_v1(h, cr)
    await h.set_spec(version="v2")
    await h.reconcile()
    await h.finish_job("v2", "SUCCEEDED")
    await h.reconcile()
    h.metrics.answers["v2"] = PrometheusError("Prometheus at http://prom is unreachable")
    h.now += timedelta(seconds=60)
    status = await h.reconcile()
    assert h.served()[1] == ServedVersion("v2", 10)
    rolled = status.condition(ConditionType.ROLLED_OUT)
    assert rolled.reason == "AnalysisInconclusive" and "unreachable" in rolled.message
    assert status.phase == Phase.ROLLING_OUT
    h.metrics.answers["v2"] = GOOD
    h.now += timedelta(seconds=1)
    await h.reconcile()
    assert h.served()[1] == ServedVersion("v2", 50)


@pytest.mark.asyncio
async def test_blue_green_runs_the_candidate_at_zero_then_switches(h, cr):
    cr["spec"]["rollout"] = {"strategy": "blueGreen", "stepIntervalSeconds": 60}
    await serve_v1(h, cr)
    await h.set_spec(version="v2")
    await h.reconcile()
    await h.finish_job("v2", "SUCCEEDED")
    await h.reconcile()
    assert h.served() == [ServedVersion("v1", 100), ServedVersion("v2", 0)]
    h.now += timedelta(seconds=60)
    await h.reconcile()
    assert h.served() == [ServedVersion("v2", 100)]


@pytest.mark.asyncio
async def test_new_version_supersedes_one_still_training(h, cr):
    await serve_v1(h, cr)
    await h.set_spec(version="v2")
    await h.reconcile()
    await h.set_spec(version="v3")
    status = await h.reconcile()
    assert h.get(consts.RAYJOBS, "shop-recs-train-v2") is None
    assert h.get(consts.RAYJOBS, "shop-recs-train-v3") is not None
    assert status.candidate_version == "v3" and "Superseded" in h.reasons()


@pytest.mark.asyncio
async def test_invalid_spec_is_a_condition_and_one_event(h, cr):
    cr["spec"]["storage"]["uri"] = "./runs"
    await h.create(cr)
    for _ in range(2):
        with pytest.raises(InvalidSpec, match="spec.storage.uri"):
            await h.reconcile()
    stored = FusionRecommenderStatus.from_body(h.get(consts.FUSIONRECOMMENDERS, NAME))
    assert stored.phase == Phase.FAILED
    assert "not shared storage" in stored.condition(ConditionType.SPEC_VALID).message
    assert h.reasons() == ["InvalidSpec"]
    assert h.get(consts.RAYJOBS, "shop-recs-train-v1") is None


@pytest.mark.asyncio
async def test_a_recommender_without_an_auth_secret_is_an_invalid_spec(h, cr):
    """Issue 17, item 6: auth on by default; no secretRef (and no `disabled: true`) used to serve /v1/* open."""
    del cr["spec"]["serving"]["auth"]
    await h.create(cr)
    with pytest.raises(InvalidSpec, match="spec.serving.auth.secretRef"):
        await h.reconcile()
    stored = FusionRecommenderStatus.from_body(h.get(consts.FUSIONRECOMMENDERS, NAME))
    condition = stored.condition(ConditionType.SPEC_VALID)
    assert condition.status == "False" and "spec.serving.auth.secretRef" in condition.message
    assert "disabled: true" in condition.message  # the fix is named
    assert h.get(consts.RAYJOBS, "shop-recs-train-v1") is None and h.reasons() == ["InvalidSpec"]


@pytest.mark.asyncio
async def test_a_recommender_with_auth_disabled_is_valid(h, cr):
    cr["spec"]["serving"]["auth"] = {"disabled": True}
    await h.create(cr)
    status = await h.reconcile()
    assert status.condition(ConditionType.SPEC_VALID).status == "True"


async def _refused(h: Harness, cr: dict[str, Any], field: str) -> str:
    """Reconcile twice: both refuse naming `field`, with one condition, one event and no training child."""
    await h.create(cr)
    for _ in range(2):
        with pytest.raises(InvalidSpec, match=field):
            await h.reconcile()
    stored = FusionRecommenderStatus.from_body(h.get(consts.FUSIONRECOMMENDERS, NAME))
    condition = stored.condition(ConditionType.SPEC_VALID)
    assert stored.phase == Phase.FAILED and condition.status == "False" and condition.reason == "InvalidSpec"
    assert field in condition.message
    assert h.reasons() == ["InvalidSpec"] and field in h.events[0][2] and h.events[0][0] == "Warning"
    assert h.get(consts.RAYJOBS, "shop-recs-train-v1") is None
    assert h.get(consts.CONFIGMAPS, "shop-recs-v1-manifest") is None
    return condition.message


@pytest.mark.asyncio
async def test_select_best_is_refused_on_a_cluster_with_the_fix(h, cr):
    """The singles of `select: best` are fitted in the Ray driver, which is the RayJob's GPU-less head pod."""
    cr["spec"]["evaluation"] = {"select": "best"}
    cr["spec"]["training"]["workers"] = 1  # several workers are refused by the schema itself
    message = await _refused(h, cr, "spec.evaluation.select")
    assert "head pod" in message and "select: fused" in message and "fusionrec run" in message


@pytest.mark.asyncio
async def test_select_best_with_one_encoder_selects_nothing_and_is_valid(h, cr):
    cr["spec"]["evaluation"] = {"select": "best"}
    cr["spec"]["encoders"] = cr["spec"]["encoders"][:1]
    await h.create(cr)
    status = await h.reconcile()
    assert status.condition(ConditionType.SPEC_VALID).status == "True"
    assert h.get(consts.RAYJOBS, "shop-recs-train-v1") is not None


@pytest.mark.asyncio
async def test_a_prepared_dataset_without_a_path_is_refused_with_the_fix(h, cr):
    """The pods have no prepared-data home: a dataset that is not a built-in needs its folder on a PVC."""
    cr["spec"]["data"] = {"dataset": "shop"}
    message = await _refused(h, cr, "spec.data.dataset")
    assert "'shop'" in message and "pvc://<claim>/<folder>" in message
    assert "spec.data.path" in message and "fusionrec data prepare shop --out" in message


@pytest.mark.asyncio
@pytest.mark.parametrize("data", [
    {"dataset": "shop", "path": "pvc://fusionrec-data/shop"},
    {"dataset": "shop", "interactions": "s3://bucket/inter.parquet"},
    {"dataset": "ml-100k"},
    {"dataset": "ml-1m"},
    {},  # the default dataset, ml-100k
], ids=["prepared-on-a-pvc", "files", "ml-100k", "ml-1m", "default"])
async def test_a_dataset_the_pods_can_find_is_valid(h, cr, data):
    cr["spec"]["data"] = data
    await h.create(cr)
    status = await h.reconcile()
    assert status.condition(ConditionType.SPEC_VALID).status == "True"
    assert h.get(consts.RAYJOBS, "shop-recs-train-v1") is not None


def test_the_operators_built_in_datasets_are_fusionrec_datas():
    """The operator keeps its own copy (it must not import fusionrec.data); the two must agree."""
    from fusionrec.data.datasets import BUILT_INS

    assert consts.BUILT_IN_DATASETS == tuple(BUILT_INS)


@pytest.mark.asyncio
async def test_schedule_starts_a_retrain(h, cr):
    cr["spec"]["training"]["schedule"] = "0 13 * * *"
    await serve_v1(h, cr)
    h.now = datetime(2025, 1, 1, 13, 0, 30, tzinfo=UTC)
    status = await h.reconcile()
    assert status.candidate_version == "v1-r202501011300" and status.phase == Phase.TRAINING
    assert h.get(consts.RAYJOBS, "shop-recs-train-v1-r202501011300") is not None
    assert status.last_scheduled_run == "2025-01-01T13:00:30Z"


@pytest.mark.asyncio
async def test_service_monitor_follows_the_spec(h, cr):
    await serve_v1(h, cr)
    await h.set_spec(monitoring={"serviceMonitor": False})
    status = await h.reconcile()
    assert h.get(consts.SERVICE_MONITORS, NAME) is None and h.get(consts.SERVICES, "shop-recs-metrics") is None
    assert status.condition(ConditionType.MONITORING) is None


@pytest.mark.asyncio
async def test_a_child_owned_by_someone_else_is_not_taken_over(h, cr):
    await h.kube.create(consts.CONFIGMAPS, NS, {"apiVersion": "v1", "kind": "ConfigMap",
                                                "metadata": {"name": "shop-recs-v1-manifest", "namespace": NS}})
    await h.create(cr)
    with pytest.raises(InvalidSpec, match="ConfigMap recs/shop-recs-v1-manifest already exists"):
        await h.reconcile()


@pytest.mark.asyncio
async def test_missing_kuberay_is_shown_and_retried(h, cr):
    h.emulator["post /apis/ray.io/v1/namespaces/recs/rayjobs"] << 404
    await h.create(cr)
    with pytest.raises(KubeApiError) as error:
        await h.reconcile()
    assert error.value.status == 404
    stored = FusionRecommenderStatus.from_body(h.get(consts.FUSIONRECOMMENDERS, NAME))
    ready = stored.condition(ConditionType.READY)
    assert ready.reason == "DependencyMissing" and "is KubeRay installed" in ready.message
    assert "DependencyMissing" in h.reasons()


async def _candidate_at_first_step(h: Harness, cr: dict[str, Any]) -> None:
    await serve_v1(h, cr)
    await h.set_spec(version="v2")
    await h.reconcile()
    await h.finish_job("v2", "SUCCEEDED")
    await h.reconcile()
    assert h.served() == [ServedVersion("v1", 90), ServedVersion("v2", 10)]


@pytest.mark.asyncio
async def test_without_a_metrics_source_a_gated_canary_holds_and_says_how_to_go_on(h, cr):
    h.controller.metrics_source = None
    await _candidate_at_first_step(h, cr)
    for _ in range(2):
        h.now += timedelta(seconds=60)
        status = await h.reconcile()
    assert h.served()[1] == ServedVersion("v2", 10)
    rolled = status.condition(ConditionType.ROLLED_OUT)
    assert rolled.reason == "AnalysisUnavailable" and "FUSIONREC_PROMETHEUS_URL" in rolled.message
    assert "spec.rollout.analysis.enabled: false" in rolled.message
    assert h.reasons().count("AnalysisUnavailable") == 1  # one Warning, not one per reconcile

    await h.set_spec(rollout={"analysis": {"enabled": False}})  # the explicit opt-out
    h.now += timedelta(seconds=60)
    status = await h.reconcile()
    assert h.served()[1] == ServedVersion("v2", 50)
    assert "not gated: spec.rollout.analysis.enabled is false" in status.condition(ConditionType.ROLLED_OUT).message


@pytest.mark.asyncio
async def test_analysis_disabled_never_asks_the_metrics_source(h, cr):
    cr["spec"]["rollout"]["analysis"] = {"enabled": False}
    await _candidate_at_first_step(h, cr)
    for _ in range(2):
        h.now += timedelta(seconds=60)
        status = await h.reconcile()
    assert h.served() == [ServedVersion("v2", 100)] and h.metrics.asked == []
    assert status.condition(ConditionType.ROLLED_OUT).reason == "Promoted"


@pytest.mark.asyncio
async def test_a_child_the_api_server_refuses_is_an_invalid_spec_not_a_loop(h, cr):
    h.emulator["post /apis/ray.io/v1/namespaces/recs/rayjobs"] << 422 << {
        "kind": "Status", "reason": "Invalid", "message": 'RayJob "x" is invalid: metadata.name: Invalid value'}
    await h.create(cr)
    with pytest.raises(InvalidSpec, match="refused a child"):
        await h.reconcile()
    stored = FusionRecommenderStatus.from_body(h.get(consts.FUSIONRECOMMENDERS, NAME))
    valid = stored.condition(ConditionType.SPEC_VALID)
    assert valid.status == "False" and "metadata.name: Invalid value" in valid.message
    assert stored.phase == Phase.FAILED and h.reasons().count("InvalidSpec") == 1


@pytest.mark.asyncio
async def test_children_of_a_deleted_namesake_are_replaced_not_refused(h, cr):
    stale_owner = {"apiVersion": "fusionrec.io/v1alpha1", "kind": "FusionRecommender", "name": NAME,
                   "uid": "11111111-0000-0000-0000-000000000000", "controller": True, "blockOwnerDeletion": True}
    await h.kube.create(consts.CONFIGMAPS, NS, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "shop-recs-v1-manifest", "namespace": NS, "ownerReferences": [stale_owner]}})
    await h.create(cr)
    with pytest.raises(KubeApiError) as conflict:  # deleted now; retried by the next reconcile
        await h.reconcile()
    assert conflict.value.status == 409 and "deleted FusionRecommender of the same name" in str(conflict.value)
    assert h.get(consts.CONFIGMAPS, "shop-recs-v1-manifest") is None
    status = await h.reconcile()
    assert status.phase == Phase.TRAINING
    owners = h.get(consts.CONFIGMAPS, "shop-recs-v1-manifest")["metadata"]["ownerReferences"]
    assert [o["uid"] for o in owners] == [cr["metadata"]["uid"]]


@pytest.mark.asyncio
async def test_missing_service_monitor_crd_is_not_asked_again_every_reconcile(h, cr):
    h.emulator["get /apis/monitoring.coreos.com/v1/namespaces/recs/servicemonitors/shop-recs"] << 404
    h.emulator["post /apis/monitoring.coreos.com/v1/namespaces/recs/servicemonitors"] << 404
    await h.create(cr)
    await h.reconcile()
    asked = [r for r in list(h.emulator) if "servicemonitors" in r.url.path]
    for _ in range(3):
        status = await h.reconcile()
    assert [r for r in list(h.emulator) if "servicemonitors" in r.url.path] == asked
    monitoring = status.condition(ConditionType.MONITORING)
    assert monitoring.reason == "ServiceMonitorCRDMissing" and h.reasons().count("ServiceMonitorCRDMissing") == 1


def test_retired_versions_beyond_the_kept_ones_are_chosen_oldest_first():
    from fusionrec.operator.controller import _Reconcile

    def child(version: str, created: str, rv: str, uid: str = "u1") -> dict[str, Any]:
        return {"metadata": {"name": f"job-{version}", "creationTimestamp": created, "resourceVersion": rv,
                             "labels": {consts.VERSION_LABEL: version}, "ownerReferences": [{"uid": uid}]}}

    body = {"metadata": {"name": NAME, "namespace": NS, "uid": "u1"},
            "status": {"currentVersion": "v1", "candidateVersion": "v5"}}
    run = _Reconcile(Controller(kube=None, config=OperatorConfig(keep_versions=1)), body, lambda *e: None)
    children = [child("v1", "2025-01-01T00:00:00Z", "10"), child("v2", "2025-01-01T00:01:00Z", "20"),
                child("v3", "2025-01-01T00:01:00Z", "30"), child("v4", "2025-01-01T00:02:00Z", "40"),
                child("v5", "2025-01-01T00:03:00Z", "50"), child("x", "2025-01-01T00:00:00Z", "1", uid="other")]
    # v1 serves and v5 is the candidate; of the retired v2..v4 the newest (v4) stays; another owner's is not ours.
    assert run.retired(children) == ["job-v3", "job-v2"]


@pytest.mark.asyncio
async def test_a_missing_credentials_secret_is_a_condition_and_an_event_before_any_rayjob(h, cr):
    """spec.storage.credentialsSecret names a Secret the namespace lacks: SpecValid=False, reason SecretMissing,
    naming the field and the fix, one Warning event, and no RayJob (whose pods would sit in
    CreateContainerConfigError); once the Secret exists, training starts with no spec change."""
    cr["spec"]["storage"] = {"uri": "s3://bucket/models", "credentialsSecret": "s3-creds"}
    await h.create(cr)
    for _ in range(2):
        with pytest.raises(InvalidSpec, match="spec.storage.credentialsSecret"):
            await h.reconcile()
    stored = FusionRecommenderStatus.from_body(h.get(consts.FUSIONRECOMMENDERS, NAME))
    condition = stored.condition(ConditionType.SPEC_VALID)
    assert (condition.status, condition.reason) == ("False", "SecretMissing")
    assert "Secret 's3-creds' does not exist in namespace 'recs'" in condition.message
    assert "kubectl create secret generic s3-creds -n recs" in condition.message  # the fix
    assert stored.phase == Phase.FAILED and h.reasons() == ["SecretMissing"]
    assert h.get(consts.RAYJOBS, "shop-recs-train-v1") is None

    await h.kube.create(consts.SECRETS, NS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds"},
                                             "stringData": {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE"}})
    status = await h.reconcile()
    assert status.condition(ConditionType.SPEC_VALID).status == "True"
    job = h.get(consts.RAYJOBS, "shop-recs-train-v1")
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert "AKIDEXAMPLE" not in str(job) + str(h.get(consts.FUSIONRECOMMENDERS, NAME)) + str(h.events)


# --- the click-through gate (rollout.analysis.ctr) ---------------------------------------------------------------


def ctr_gated(cr: dict[str, Any], **gate: Any) -> dict[str, Any]:
    cr["spec"]["serving"]["live"] = {"events": True}
    cr["spec"]["rollout"]["analysis"]["ctr"] = {"enabled": True, "minImpressions": 1000, "maxWaitSeconds": 600, **gate}
    return cr


async def canary_v2(h: Harness, cr: dict[str, Any]) -> None:
    await _candidate_at_first_step(h, cr)
    h.metrics.answers["v2"] = GOOD


@pytest.mark.asyncio
async def test_ctr_gate_waits_for_impressions_then_promotes_a_candidate_as_good_as_stable(h, cr):
    await canary_v2(h, ctr_gated(cr))
    h.metrics.feedback_answers = {"v1": Feedback(9_000, 360), "v2": Feedback(400, 17)}
    h.now += timedelta(seconds=60)
    status = await h.reconcile()
    assert h.served()[1] == ServedVersion("v2", 10)  # the SLO passes, but v2 has 400 of 1000 impressions
    rolled = status.condition(ConditionType.ROLLED_OUT)
    assert rolled.reason == "AnalysisInconclusive" and "waiting for impressions" in rolled.message
    assert "candidate v2 17 clicks / 400 impressions" in rolled.message
    assert status.metrics.ctr.reason == "AwaitingImpressions" and status.metrics.ctr.verdict == "Inconclusive"
    assert h.metrics.feedback_asked == [("v1", 60), ("v2", 60)]

    h.metrics.feedback_answers["v2"] = Feedback(1_200, 50)
    h.now += timedelta(seconds=240)  # the window grows with the step: counts since it started
    status = await h.reconcile()
    assert h.served()[1] == ServedVersion("v2", 50) and h.metrics.feedback_asked[-1] == ("v2", 300)
    assert status.metrics.ctr.verdict == "Pass" and status.metrics.ctr.reason == "CtrWithinMargin"
    assert status.metrics.ctr.candidate_ctr == pytest.approx(50 / 1200) and status.metrics.ctr.z is not None
    h.now += timedelta(seconds=60)
    status = await h.reconcile()
    assert h.served() == [ServedVersion("v2", 100)] and status.condition(ConditionType.ROLLED_OUT).reason == "Promoted"


@pytest.mark.asyncio
async def test_ctr_gate_rolls_back_a_candidate_with_fewer_clicks_and_says_why(h, cr):
    await canary_v2(h, ctr_gated(cr))
    h.metrics.feedback_answers = {"v1": Feedback(20_000, 800), "v2": Feedback(5_000, 140)}
    h.now += timedelta(seconds=60)
    status = await h.reconcile()
    assert h.served() == [ServedVersion("v1", 100)]
    assert status.failed_version == "v2" and status.phase == Phase.DEGRADED
    rolled = status.condition(ConditionType.ROLLED_OUT)
    assert rolled.reason == "RolledBack"
    assert rolled.message.startswith("v2 rolled back, v1 takes 100% again: CtrBelowStable: click-through below")
    assert "candidate v2 CTR 2.80% (140 clicks / 5000 impressions)" in rolled.message
    assert "stable v1 CTR 4.00%" in rolled.message and "z=-" in rolled.message
    assert status.metrics.ctr.verdict == "Fail" and status.metrics.ctr.p_value < 0.05
    events = [(t, r, m) for t, r, m in h.events if r == "RolledBack"]
    assert len(events) == 1 and events[0][0] == "Warning" and "CtrBelowStable" in events[0][2]


@pytest.mark.asyncio
async def test_ctr_gate_gives_up_waiting_after_max_wait_or_holds_without_auto_rollback(h, cr):
    await canary_v2(h, ctr_gated(cr, maxWaitSeconds=120))
    h.metrics.feedback_answers = {"v1": Feedback(9_000, 360), "v2": Feedback(100, 4)}
    h.now += timedelta(seconds=60 + 119)
    await h.reconcile()
    assert h.served()[1] == ServedVersion("v2", 10)
    h.now += timedelta(seconds=1)
    status = await h.reconcile()
    assert h.served() == [ServedVersion("v1", 100)]
    assert "InsufficientImpressions: too few impressions after maxWaitSeconds 120" in \
        status.condition(ConditionType.ROLLED_OUT).message

    await h.set_spec(version="v3", rollout={"autoRollback": False})
    await h.reconcile()
    await h.finish_job("v3", "SUCCEEDED")
    await h.reconcile()
    h.metrics.answers["v3"] = GOOD
    h.metrics.feedback_answers["v3"] = Feedback(100, 4)
    h.now += timedelta(seconds=60 + 3600)
    status = await h.reconcile()
    assert h.served()[1] == ServedVersion("v3", 10) and not status.rollout_paused
    rolled = status.condition(ConditionType.ROLLED_OUT)
    assert rolled.reason == "AnalysisInconclusive" and "autoRollback is off" in rolled.message
