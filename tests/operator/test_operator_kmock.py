"""The real operator process (`python -m fusionrec.operator`) against kmock's Kubernetes emulator on loopback.

The test plays KubeRay (it marks RayJobs succeeded or failed and the RayService ready) and Prometheus (a
second kmock server answering /api/v1/query with good or bad numbers per version), and kills the
operator with SIGKILL mid-rollout to see it resume from the step recorded in the status.
"""

from __future__ import annotations

import asyncio
import copy
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import kmock
import kopf
import pytest
import pytest_asyncio

from fusionrec.operator import consts
from fusionrec.operator.builders.serving import ServedVersion
from fusionrec.operator.kube import KubeApi

from _operator_process import OperatorProcess
from _served import served_versions

NS, NAME = "recs", "shop-recs"
pytestmark = pytest.mark.asyncio


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakePrometheus:
    """Answers the operator's instant queries from per-version numbers the test sets: the SLO's three and the
    click-through gate's impressions and clicks."""

    def __init__(self) -> None:
        self.handler = kmock.RawHandler()
        self.handler["get /api/v1/query"] << self.answer
        self.numbers: dict[str, tuple[float, float, float]] = {}  # version -> (rps, error rate, p99 seconds)
        self.feedback: dict[str, tuple[float, float]] = {}  # version -> (impressions, clicks) in any window

    def answer(self, request: kmock.Request) -> dict[str, Any]:
        query = request.params["query"]
        version = query.split('version="', 1)[1].split('"', 1)[0]
        value: float | None = None
        if "fusionrec_feedback_events_total" in query:
            impressions, clicks = self.feedback.get(version, (0.0, 0.0))
            value = clicks if 'type="click"' in query else impressions
        elif version in self.numbers:
            rps, error_rate, p99 = self.numbers[version]
            value = p99 if "histogram_quantile" in query else rps * error_rate if "5.." in query else rps
        result = [] if value is None else [{"metric": {}, "value": [0, str(value)]}]
        return {"status": "success", "data": {"resultType": "vector", "result": result}}


class KmockOperator(OperatorProcess):
    """The operator against kmock without credentials, with its metrics and health endpoints on free ports.

    Cluster-wide: with --namespace kopf lists /api/v1/namespaces, a path kmock 0.8 fails to parse."""

    def __init__(self, kube_url: str, prometheus_url: str, workdir: Path) -> None:
        self.metrics_port, self.health_port = free_port(), free_port()
        super().__init__(workdir / "operator.log", [
            "--all-namespaces", "--verbose", "--liveness", f"http://127.0.0.1:{self.health_port}/healthz"], {
            "FUSIONREC_KUBE_SERVER": kube_url, "FUSIONREC_PROMETHEUS_URL": prometheus_url,
            "FUSIONREC_PROMETHEUS_SELECTOR": "", "FUSIONREC_SYNC_INTERVAL": "0.3",
            "FUSIONREC_METRICS_PORT": str(self.metrics_port), "FUSIONREC_METRICS_HOST": "127.0.0.1"})


class World:
    """The emulated cluster and Prometheus, plus helpers to play KubeRay's part."""

    def __init__(self, emulator: Any, kube_url: str, prometheus: FakePrometheus, operator: KmockOperator) -> None:
        self.emulator = emulator
        self.kube = KubeApi(lambda: kopf.ConnectionInfo(server=kube_url))
        self.prometheus = prometheus
        self.operator = operator

    def get(self, resource: consts.Resource, name: str) -> dict[str, Any] | None:
        key = (kmock.resource(resource.group, resource.version, resource.plural), NS, name)
        if key not in self.emulator.objects or self.emulator.objects[key].deleted:
            return None
        return self.emulator.objects[key].raw

    def history(self, resource: consts.Resource, name: str) -> list[dict[str, Any]]:
        key = (kmock.resource(resource.group, resource.version, resource.plural), NS, name)
        return [version.raw for version in self.emulator.objects[key].history if version is not None]

    def served(self) -> list[ServedVersion]:
        service = self.get(consts.RAYSERVICES, NAME)
        return served_versions(service) if service else []

    def status(self) -> dict[str, Any]:
        return (self.get(consts.FUSIONRECOMMENDERS, NAME) or {}).get("status") or {}

    def condition(self, type_: str) -> dict[str, Any]:
        return next((c for c in self.status().get("conditions", []) if c["type"] == type_), {})

    async def wait(self, predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            value = predicate()
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting until {what}\nstatus: {self.status()}\n"
                             f"served: {self.served()}\n--- operator log ---\n{self.operator.tail()}")

    async def set_spec(self, **changes: Any) -> None:
        generation = self.get(consts.FUSIONRECOMMENDERS, NAME)["metadata"]["generation"] + 1
        await self.kube.patch(consts.FUSIONRECOMMENDERS, NS, NAME,
                              {"metadata": {"generation": generation}, "spec": changes})

    async def train(self, version: str, outcome: str = "SUCCEEDED", message: str = "") -> None:
        job = f"{NAME}-train-{version}"
        await self.wait(lambda: self.get(consts.RAYJOBS, job), f"RayJob {job} exists")
        deployment = "Complete" if outcome == "SUCCEEDED" else "Failed"
        await self.kube.patch(consts.RAYJOBS, NS, job, {"status": {
            "jobStatus": outcome, "jobDeploymentStatus": deployment, "message": message}}, subresource="status")

    async def service_ready(self) -> None:
        await self.wait(lambda: self.get(consts.RAYSERVICES, NAME), "the RayService exists")
        await self.kube.patch(consts.RAYSERVICES, NS, NAME, {"status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints", "message": "",
             "lastTransitionTime": "2025-01-01T00:00:00Z"}]}}, subresource="status")

    async def serve_v1(self) -> None:
        await self.train("v1")
        await self.wait(lambda: self.served() == [ServedVersion("v1", 100)], "v1 serves 100%")
        await self.service_ready()
        await self.wait(lambda: self.status().get("phase") == "Serving", "phase is Serving")


@pytest_asyncio.fixture
async def world(kube_emulator, tmp_path, design_cr):
    emulator, kube_url = kube_emulator
    prometheus = FakePrometheus()
    async with prometheus.handler, kmock.Server(prometheus.handler) as prometheus_server:
        operator = KmockOperator(kube_url, str(prometheus_server.url).rstrip("/"), tmp_path)
        operator.start()
        world = World(emulator, kube_url, prometheus, operator)
        try:
            yield world
        finally:
            operator.stop()
            await world.kube.close()


def cr(design_cr: dict[str, Any], steps: list[int], interval: int = 1) -> dict[str, Any]:
    doc = copy.deepcopy(design_cr)
    doc["spec"]["version"] = "v1"
    # kmock keeps no resourceVersion of its own; kopf adds its finalizer with a JSON patch that tests it.
    doc["metadata"]["resourceVersion"] = "1"
    doc["spec"]["training"].pop("schedule")
    doc["spec"]["rollout"].update(steps=steps, stepIntervalSeconds=interval)
    doc["spec"]["rollout"]["analysis"]["windowSeconds"] = 10
    return doc


@pytest.mark.slow
async def test_trains_serves_canaries_and_resumes_after_sigkill(world, design_cr):
    # 2 s per step leaves the test time to SIGKILL the operator while v2 sits at 30%.
    await world.kube.create(consts.FUSIONRECOMMENDERS, NS, cr(design_cr, [10, 30, 60, 100], interval=2))
    await world.serve_v1()
    job = world.get(consts.RAYJOBS, f"{NAME}-train-v1")
    assert job["metadata"]["ownerReferences"][0]["uid"] == design_cr["metadata"]["uid"]

    world.prometheus.numbers["v2"] = (25.0, 0.001, 0.012)  # good: 0.1% errors, p99 12 ms
    await world.set_spec(version="v2")
    await world.train("v2")
    await world.wait(lambda: world.served() == [ServedVersion("v1", 90), ServedVersion("v2", 10)], "v2 at 10%")
    await world.wait(lambda: world.served() == [ServedVersion("v1", 70), ServedVersion("v2", 30)], "v2 at 30%")
    world.operator.kill()
    assert world.status()["rolloutStep"] == 1 and world.status()["canaryWeight"] == 30
    killed_at = len(world.history(consts.RAYSERVICES, NAME))
    await asyncio.sleep(1.5)
    assert world.served()[1] == ServedVersion("v2", 30)  # nobody moves it while the operator is down

    world.operator.start()
    await world.wait(lambda: world.served() == [ServedVersion("v2", 100)], "v2 promoted", timeout=40)
    after = [served_versions(v) for v in world.history(consts.RAYSERVICES, NAME)[killed_at:]]
    weights = [dict((s.version, s.weight) for s in served).get("v2", 0) for served in after]
    assert weights == sorted(weights) and 10 not in weights, f"went back after restart: {weights}"
    assert 60 in weights
    await world.wait(lambda: world.status().get("phase") == "Serving" and
                     world.status().get("currentVersion") == "v2", "v2 is current")

    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"http://127.0.0.1:{world.operator.metrics_port}/metrics")).text
        health = await client.get(f"http://127.0.0.1:{world.operator.health_port}/healthz")
    assert health.status_code == 200
    assert 'fusionrec_operator_reconcile_total{result="ok",trigger="timer"}' in metrics
    assert 'fusionrec_operator_rollout_outcome_total{outcome="Promoted"}' in metrics


async def test_failed_training_keeps_serving_and_bad_metrics_roll_back(world, design_cr):
    await world.kube.create(consts.FUSIONRECOMMENDERS, NS, cr(design_cr, [10, 50, 100]))
    await world.serve_v1()

    await world.set_spec(version="v2")
    await world.train("v2", "FAILED", "Job entrypoint command failed with exit code 1")
    failed = await world.wait(lambda: world.condition("Trained").get("reason") == "TrainingFailed"
                              and world.condition("Trained"), "Trained=False TrainingFailed")
    assert "exit code 1" in failed["message"] and "v1 keeps serving" in failed["message"]
    assert world.served() == [ServedVersion("v1", 100)]
    assert world.status()["phase"] == "Degraded"

    world.prometheus.numbers["v3"] = (25.0, 0.2, 0.3)  # bad: 20% errors, p99 300 ms
    await world.set_spec(version="v3")
    await world.train("v3")
    await world.wait(lambda: ServedVersion("v3", 10) in world.served(), "v3 at 10%")
    await world.wait(lambda: world.condition("RolledOut").get("reason") == "RolledBack", "the rollback")
    # The status is written before the RayService changes (so a crash in between resumes, not repeats).
    await world.wait(lambda: world.served() == [ServedVersion("v1", 100)], "v1 takes 100% again")
    status = world.status()
    assert (status["failedVersion"], status["currentVersion"], status["phase"]) == ("v3", "v1", "Degraded")
    assert "error rate 0.2000 > maxErrorRate 0.01" in world.condition("RolledOut")["message"]

    def rolled_back_event() -> bool:
        # Read from the request log: kmock stores generateName objects under one key, so it keeps only
        # the first Event it is sent.
        posted = [r.data for r in list(world.emulator) if r.method == "POST" and r.url.path.endswith("/events")]
        return any(e.get("reason") == "RolledBack" and e.get("type") == "Warning" and
                   e["involvedObject"]["name"] == NAME for e in posted)

    await world.wait(rolled_back_event, "a Warning event RolledBack is posted")


async def test_ctr_gate_promotes_a_candidate_as_good_as_stable_and_rolls_back_a_worse_one(world, design_cr):
    """rollout.analysis.ctr through the real operator and its PromQL: v2 clicks like v1 and is promoted; v3, as
    fast and error-free, gets 30% fewer clicks and is rolled back with CtrBelowStable and the numbers."""
    doc = cr(design_cr, [10, 100])
    doc["spec"]["serving"]["live"] = {"events": True}
    doc["spec"]["rollout"]["analysis"]["ctr"] = {"enabled": True, "minImpressions": 1000}
    await world.kube.create(consts.FUSIONRECOMMENDERS, NS, doc)
    await world.serve_v1()

    world.prometheus.numbers.update({"v2": (25.0, 0.0, 0.012), "v3": (25.0, 0.0, 0.012)})
    world.prometheus.feedback.update({"v1": (20_000.0, 800.0), "v2": (5_000.0, 205.0), "v3": (5_000.0, 140.0)})
    await world.set_spec(version="v2")
    await world.train("v2")
    await world.wait(lambda: world.served() == [ServedVersion("v2", 100)], "v2 promoted")
    assert world.status()["metrics"]["ctr"]["reason"] == "CtrWithinMargin"

    await world.set_spec(version="v3")
    await world.train("v3")
    await world.wait(lambda: world.condition("RolledOut").get("reason") == "RolledBack", "the rollback")
    await world.wait(lambda: world.served() == [ServedVersion("v2", 100)], "v2 takes 100% again")
    message = world.condition("RolledOut")["message"]
    assert "CtrBelowStable" in message and "candidate v3 CTR 2.80% (140 clicks / 5000 impressions)" in message
    ctr = world.status()["metrics"]["ctr"]
    assert (ctr["stableVersion"], ctr["verdict"], ctr["reason"]) == ("v2", "Fail", "CtrBelowStable")


async def test_what_a_cluster_cannot_run_is_refused_with_a_condition_and_an_event(world, design_cr):
    """`evaluation.select: best` (singles fitted on the GPU-less head pod) and a prepared dataset with no
    path (no data home in the pods) are refused by the running operator: SpecValid=False naming the field
    and the fix, a Warning event, and no RayJob; fixing the spec lets training start."""
    doc = cr(design_cr, [100])
    doc["spec"]["evaluation"] = {"select": "best"}
    doc["spec"]["training"]["workers"] = 1  # several workers with select: best the schema refuses itself
    await world.kube.create(consts.FUSIONRECOMMENDERS, NS, doc)

    def refused(field: str) -> Callable[[], bool]:
        def check() -> bool:
            condition = world.condition("SpecValid")
            return condition.get("status") == "False" and field in condition.get("message", "")
        return check

    def warned(field: str) -> Callable[[], bool]:
        def check() -> bool:
            posted = [r.data for r in list(world.emulator) if r.method == "POST" and r.url.path.endswith("/events")]
            return any(e.get("reason") == "InvalidSpec" and e.get("type") == "Warning" and field in e["message"]
                       for e in posted)
        return check

    cases = [  # (field, words of the fix, spec that fixes it, version: a refused spec's next version)
        ("spec.evaluation.select", "select: fused", {"evaluation": {"select": "fused"}}, "v1"),
        ("spec.data.dataset", "pvc://<claim>/<folder>", {"data": {"path": "pvc://fusionrec-data/shop"}}, "v2"),
    ]
    for field, fix, fixed, version in cases:
        if version != "v1":  # the first case's spec is the one created above
            await world.set_spec(version=version, data={"dataset": "shop", "interactions": None, "items": None})
        await world.wait(refused(field), f"SpecValid=False names {field}")
        assert fix in world.condition("SpecValid")["message"]
        await world.wait(warned(field), "an InvalidSpec Warning event names the field")
        assert world.get(consts.RAYJOBS, f"{NAME}-train-{version}") is None
        await world.set_spec(**fixed)
        await world.wait(lambda v=version: world.get(consts.RAYJOBS, f"{NAME}-train-{v}"), "the RayJob once fixed")
        await world.wait(lambda: world.condition("SpecValid").get("status") == "True", "SpecValid=True again")


async def test_a_missing_credentials_secret_is_reported_then_training_starts_once_it_exists(world, design_cr):
    """The running operator: SpecValid=False, reason SecretMissing, naming spec.storage.credentialsSecret and
    the kubectl command that fixes it, a Warning event, and no RayJob; creating the Secret (no spec change) is
    enough for the periodic reconcile to start training, with the Secret as the pods' environment."""
    doc = cr(design_cr, [100])
    doc["spec"]["storage"] = {"uri": "s3://bucket/models", "credentialsSecret": "s3-creds"}
    await world.kube.create(consts.FUSIONRECOMMENDERS, NS, doc)

    await world.wait(lambda: world.condition("SpecValid").get("reason") == "SecretMissing", "SpecValid: SecretMissing")
    condition = world.condition("SpecValid")
    assert condition["status"] == "False" and "spec.storage.credentialsSecret" in condition["message"]
    assert "kubectl create secret generic s3-creds -n recs" in condition["message"]

    def warned() -> bool:
        posted = [r.data for r in list(world.emulator) if r.method == "POST" and r.url.path.endswith("/events")]
        return any(e.get("reason") == "SecretMissing" and e.get("type") == "Warning" and
                   "spec.storage.credentialsSecret" in e["message"] for e in posted)

    await world.wait(warned, "a SecretMissing Warning event")
    assert world.get(consts.RAYJOBS, f"{NAME}-train-v1") is None

    await world.kube.create(consts.SECRETS, NS, {"apiVersion": "v1", "kind": "Secret",
                                                 "metadata": {"name": "s3-creds", "namespace": NS},
                                                 "stringData": {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE"}})
    job = await world.wait(lambda: world.get(consts.RAYJOBS, f"{NAME}-train-v1"), "the RayJob once the Secret exists")
    for group in (job["spec"]["rayClusterSpec"]["headGroupSpec"], *job["spec"]["rayClusterSpec"]["workerGroupSpecs"]):
        assert group["template"]["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    await world.wait(lambda: world.condition("SpecValid").get("status") == "True", "SpecValid=True")
    assert "AKIDEXAMPLE" not in world.operator.tail(chars=1 << 30)
