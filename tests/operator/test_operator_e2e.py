"""The operator against a real API server, as a platform team would run it (needs FUSIONREC_E2E_KUBECONFIG).

`make test` / `make e2e` start a throw-away control plane (etcd, kube-apiserver and kube-controller-manager
on loopback, tools/kube/kube-up.sh) and set FUSIONREC_E2E_KUBECONFIG; elsewhere these tests skip. No kubelet
runs, so no pod ever starts: the tests play KubeRay's controller by writing the RayJob's and the RayService's
status, exactly the fields KubeRay writes. Everything else is real: the chart is installed with helm, the
CRD's schema and CEL rules are the server's, RBAC is enforced (the operator runs as the chart's
ServiceAccount, with a token from the TokenRequest API), and the garbage collector and the namespace
controller of kube-controller-manager remove what owner references and namespace deletion say.

The tests run in file order and share one helm release and one operator process (module fixtures); each
test works in a namespace of its own.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fusionrec.operator import consts
from fusionrec.operator.builders.common import manifest_configmap_name, rayjob_name
from fusionrec.operator.kube import METADATA_ONLY

from _e2e_cluster import (
    CHART,
    KUBECONFIG,
    NAMESPACES,
    ApiError,
    Kube,
    eventually,
    install_kuberay_crds,
    now,
    operator_as,
    run_tool,
)
from _operator_process import OperatorProcess
from _served import served_versions

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not KUBECONFIG, reason="set FUSIONREC_E2E_KUBECONFIG (make e2e starts a control plane)"),
]
RELEASE, RELEASE_NAMESPACE = "fusionrec", "fusionrec-system"
SERVICE_ACCOUNT = "fusionrec-fusion-recommender"
NAME = "shop-recs"
FR = consts.FUSIONRECOMMENDERS


# --- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kube() -> Iterator[Kube]:
    client = Kube(KUBECONFIG or "")
    yield client
    client.close()


@pytest.fixture(scope="module")
def chart(kube: Kube) -> Iterator[dict[str, str]]:
    """`helm install` of the chart (CRD included), KubeRay's CRDs, and the install's output."""
    run_tool("helm", "uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--ignore-not-found", check=False)
    installed = run_tool("helm", "install", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, "--create-namespace")
    install_kuberay_crds(kube)
    outputs = {"install": installed.stdout}
    yield outputs
    run_tool("helm", "uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def operator_kubeconfig(kube: Kube, chart: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart's ServiceAccount, as the operator's pod would be: RBAC is what the chart grants."""
    return kube.service_account_kubeconfig(RELEASE_NAMESPACE, SERVICE_ACCOUNT,
                                           tmp_path_factory.mktemp("operator") / "operator.kubeconfig")


@pytest.fixture(scope="module")
def operator(operator_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """One operator watching every namespace; FUSIONREC_KEEP_VERSIONS=1 so retention shows in two versions."""
    process = operator_as(operator_kubeconfig, tmp_path_factory.mktemp("operator-log") / "operator.log",
                          "--all-namespaces", FUSIONREC_KEEP_VERSIONS="1")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def namespace(kube: Kube, operator: OperatorProcess) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    kube.create(NAMESPACES, None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    print(f"--- operator log (tail) ---\n{operator.tail()}")  # pytest shows it only when the test failed
    kube.delete(NAMESPACES, None, name)


def _cr(design_cr: dict[str, Any], namespace: str, **spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(design_cr)
    doc["metadata"] = {"name": NAME, "namespace": namespace}
    doc["spec"]["version"] = "v1"
    doc["spec"]["storage"] = {"uri": "s3://fusionrec-e2e/models"}  # shared storage; no PVC needed
    doc["spec"]["monitoring"] = {"serviceMonitor": False}
    doc["spec"]["training"].pop("schedule")
    doc["spec"]["rollout"] = {"steps": [10, 50, 100], "stepIntervalSeconds": 2,
                              "analysis": {"enabled": False}}
    doc["spec"].update(spec)
    return doc


# --- playing KubeRay ---------------------------------------------------------------------------------------


def _finish_job(kube: Kube, namespace: str, version: str, *, succeeded: bool = True) -> None:
    job = rayjob_name(NAME, version)
    eventually(lambda: kube.get(consts.RAYJOBS, namespace, job), f"RayJob {job} exists")
    status = ({"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete"} if succeeded else
              {"jobStatus": "FAILED", "jobDeploymentStatus": "Failed", "reason": "AppFailed",
               "message": "Job entrypoint command failed with exit code 1"})
    kube.patch(consts.RAYJOBS, namespace, job, {"status": status}, subresource="status")


def _service_ready(kube: Kube, namespace: str) -> None:
    eventually(lambda: kube.get(consts.RAYSERVICES, namespace, NAME), "the RayService exists")
    kube.patch(consts.RAYSERVICES, namespace, NAME, {"status": {"conditions": [{
        "type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints", "message": "Serve is ready",
        "lastTransitionTime": now()}]}}, subresource="status")


def _weights(kube: Kube, namespace: str) -> dict[str, int]:
    service = kube.get(consts.RAYSERVICES, namespace, NAME)
    return {v.version: v.weight for v in served_versions(service)} if service else {}


def _status(kube: Kube, namespace: str) -> dict[str, Any]:
    return (kube.get(FR, namespace, NAME) or {}).get("status") or {}


def _condition(kube: Kube, namespace: str, type_: str) -> dict[str, Any]:
    return next((c for c in _status(kube, namespace).get("conditions") or [] if c["type"] == type_), {})


def _reasons(kube: Kube, namespace: str) -> list[str]:
    return [e.get("reason", "") for e in kube.events(namespace, NAME)]


def _serve_first_version(kube: Kube, namespace: str, doc: dict[str, Any]) -> dict[str, Any]:
    created = kube.create(FR, namespace, doc)
    _finish_job(kube, namespace, "v1")
    eventually(lambda: _weights(kube, namespace) == {"v1": 100}, "v1 takes all traffic")
    _service_ready(kube, namespace)
    eventually(lambda: _status(kube, namespace).get("phase") == "Serving", "phase is Serving")
    return created


def _new_version(kube: Kube, namespace: str, version: str, **spec: Any) -> None:
    kube.patch(FR, namespace, NAME, {"spec": {"version": version, **spec}})


# --- the tests ---------------------------------------------------------------------------------------------


def test_helm_install_accepted_by_the_api_server(kube: Kube, chart: dict[str, str]) -> None:
    assert "STATUS: deployed" in chart["install"], chart["install"]
    crd = kube.get(consts.Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CRD", False),
                   None, consts.CRD_NAME)
    assert crd is not None and any(c["type"] == "Established" and c["status"] == "True"
                                   for c in crd["status"]["conditions"])
    assert kube.get(consts.Resource("", "v1", "serviceaccounts", "ServiceAccount"), RELEASE_NAMESPACE,
                    SERVICE_ACCOUNT) is not None


def test_crd_objects_reject_what_the_spec_rejects(kube: Kube, namespace: str, design_cr: dict[str, Any]) -> None:
    """A smoke check that the installed CRD validates (the full table is tests/operator/test_invalid_specs.py)."""
    doc = _cr(design_cr, namespace)
    doc["spec"]["rollout"]["steps"] = [10, 50]
    with pytest.raises(ApiError) as refused:
        kube.create(FR, namespace, doc)
    assert refused.value.status == 422 and "spec.rollout.steps" in str(refused.value), str(refused.value)


def test_create_trains_then_serves_the_first_version(kube: Kube, namespace: str, design_cr: dict[str, Any]) -> None:
    created = kube.create(FR, namespace, _cr(design_cr, namespace))
    job_name = rayjob_name(NAME, "v1")
    job = eventually(lambda: kube.get(consts.RAYJOBS, namespace, job_name), "the RayJob exists", 30)
    assert job["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    assert kube.get(consts.CONFIGMAPS, namespace, manifest_configmap_name(NAME, "v1")) is not None
    body = eventually(lambda: (lambda b: b if (b.get("status") or {}).get("phase") == "Training" else None)(
        kube.get(FR, namespace, NAME) or {}), "phase is Training", 30)
    assert body["status"]["observedGeneration"] == body["metadata"]["generation"]
    assert not body["metadata"].get("finalizers"), "children go by owner reference: no finalizer"

    # What `kubectl get frec` prints: the CRD's printer columns, rendered by the server.
    table = kube.request("GET", FR.path(namespace, NAME), accept="application/json;as=Table;v=v1;g=meta.k8s.io")
    columns = [c["name"] for c in table["columnDefinitions"] if not c.get("priority")]
    assert columns == ["Name", "VERSION", "PHASE", "CANARY", "READY", "AGE"]
    printed = run_tool("kubectl", "get", "frec", "-n", namespace).stdout
    assert printed.split("\n")[0].split() == ["NAME", "VERSION", "PHASE", "CANARY", "READY", "AGE"], printed
    assert "Training" in printed, printed

    _finish_job(kube, namespace, "v1")
    eventually(lambda: _weights(kube, namespace) == {"v1": 100}, "the RayService serves v1", 30)
    _service_ready(kube, namespace)
    status = eventually(lambda: (lambda s: s if s.get("phase") == "Serving" else None)(_status(kube, namespace)),
                        "phase is Serving", 30)
    assert status["currentVersion"] == "v1" and status["endpoint"].startswith(f"http://{NAME}-serve-svc.")
    assert {"TrainingStarted", "TrainingSucceeded"} <= set(_reasons(kube, namespace))


def test_new_version_rolls_out_as_a_canary_to_100(kube: Kube, namespace: str, design_cr: dict[str, Any]) -> None:
    _serve_first_version(kube, namespace, _cr(design_cr, namespace))
    _new_version(kube, namespace, "v2")
    _finish_job(kube, namespace, "v2")
    seen: list[int] = []

    def promoted() -> bool:
        weights = _weights(kube, namespace)
        if weights.get("v2") is not None and (not seen or seen[-1] != weights["v2"]):
            seen.append(weights["v2"])
        # The status is written before the RayService (a crash in between resumes the step): wait for both.
        return _status(kube, namespace).get("currentVersion") == "v2" and weights == {"v2": 100}

    eventually(promoted, "v2 is promoted and takes all traffic", 60, interval=0.2)
    assert seen == sorted(seen) and 10 in seen, f"the candidate's weight must only rise: {seen}"
    rolled = _condition(kube, namespace, "RolledOut")
    assert rolled["status"] == "True" and rolled["reason"] == "Promoted", rolled
    assert "not gated" in rolled["message"]  # analysis.enabled false says so in the status
    assert {"RolloutStep", "Promoted"} <= set(_reasons(kube, namespace))


def test_failed_training_keeps_the_old_version_and_old_jobs_are_retired(
        kube: Kube, namespace: str, design_cr: dict[str, Any]) -> None:
    _serve_first_version(kube, namespace, _cr(design_cr, namespace))
    _new_version(kube, namespace, "v2")
    _finish_job(kube, namespace, "v2", succeeded=False)
    trained = eventually(lambda: (lambda c: c if c.get("reason") == "TrainingFailed" else None)(
        _condition(kube, namespace, "Trained")), "Trained=False, TrainingFailed", 30)
    assert "exit code 1" in trained["message"] and "v1 keeps serving" in trained["message"]
    assert "TrainingFailed" in _reasons(kube, namespace)
    assert _weights(kube, namespace) == {"v1": 100}
    assert _status(kube, namespace).get("failedVersion") == "v2"

    # A third version fails too: with FUSIONREC_KEEP_VERSIONS=1 only the newest retired version keeps its
    # RayJob and manifest ConfigMap; the serving version's stay.
    _new_version(kube, namespace, "v3")
    _finish_job(kube, namespace, "v3", succeeded=False)
    eventually(lambda: kube.get(consts.RAYJOBS, namespace, rayjob_name(NAME, "v2")) is None
               and kube.get(consts.CONFIGMAPS, namespace, manifest_configmap_name(NAME, "v2")) is None,
               "v2's RayJob and manifest ConfigMap are deleted", 30)
    assert kube.get(consts.RAYJOBS, namespace, rayjob_name(NAME, "v3")) is not None
    assert kube.get(consts.RAYJOBS, namespace, rayjob_name(NAME, "v1")) is not None
    assert _weights(kube, namespace) == {"v1": 100}


def test_without_metrics_a_gated_canary_holds_and_a_killed_operator_resumes_where_it_was(
        kube: Kube, namespace: str, design_cr: dict[str, Any], operator: OperatorProcess) -> None:
    doc = _cr(design_cr, namespace)
    doc["spec"]["rollout"]["analysis"] = {"enabled": True}  # the default; the operator has no Prometheus
    _serve_first_version(kube, namespace, doc)
    _new_version(kube, namespace, "v2")
    _finish_job(kube, namespace, "v2")
    held = eventually(lambda: (lambda c: c if c.get("reason") == "AnalysisUnavailable" else None)(
        _condition(kube, namespace, "RolledOut")), "RolledOut=False, AnalysisUnavailable", 30)
    assert "analysis.enabled: false" in held["message"], held
    assert _weights(kube, namespace) == {"v1": 90, "v2": 10}
    assert "AnalysisUnavailable" in _reasons(kube, namespace)
    job_uid = kube.get(consts.RAYJOBS, namespace, rayjob_name(NAME, "v2"))["metadata"]["uid"]

    operator.kill()  # mid-rollout, no clean-up
    kube.patch(FR, namespace, NAME, {"spec": {"rollout": {"analysis": {"enabled": False}}}})
    assert _weights(kube, namespace) == {"v1": 90, "v2": 10}
    operator.start()
    seen: list[int] = []

    def promoted() -> bool:
        weights = _weights(kube, namespace)
        seen.append(weights.get("v2", 100))
        return _status(kube, namespace).get("currentVersion") == "v2" and weights == {"v2": 100}

    eventually(promoted, "v2 is promoted after the restart", 60, interval=0.2)
    assert min(seen) >= 10, f"the restarted operator went back below the recorded step: {seen}"
    assert kube.get(consts.RAYJOBS, namespace, rayjob_name(NAME, "v2"))["metadata"]["uid"] == job_uid, \
        "the restart must not train v2 again"


def test_a_spec_only_the_operator_can_refuse_gets_a_condition_and_an_event(
        kube: Kube, namespace: str, design_cr: dict[str, Any]) -> None:
    doc = _cr(design_cr, namespace)
    doc["spec"]["storage"] = {"uri": "./runs"}  # valid for the CLI; pods on other nodes cannot share it
    kube.create(FR, namespace, doc)
    condition = eventually(lambda: (lambda c: c if c.get("status") == "False" else None)(
        _condition(kube, namespace, "SpecValid")), "SpecValid=False", 20)
    assert condition["reason"] == "InvalidSpec" and "spec.storage.uri" in condition["message"], condition
    assert "InvalidSpec" in _reasons(kube, namespace)
    assert _status(kube, namespace).get("phase") == "Failed"
    assert kube.get(consts.RAYJOBS, namespace, rayjob_name(NAME, "v1")) is None

    # Fixing the spec is enough: the next reconcile trains.
    kube.patch(FR, namespace, NAME, {"spec": {"storage": {"uri": "s3://fusionrec-e2e/models"}}})
    eventually(lambda: kube.get(consts.RAYJOBS, namespace, rayjob_name(NAME, "v1")), "the RayJob exists", 30)
    eventually(lambda: _condition(kube, namespace, "SpecValid").get("status") == "True", "SpecValid=True", 20)


def test_a_missing_credentials_secret_is_reported_and_the_pods_get_it_by_reference(
        kube: Kube, namespace: str, operator: OperatorProcess, design_cr: dict[str, Any]) -> None:
    """spec.storage.credentialsSecret against the real server, with the chart's RBAC: the operator's
    metadata-only check of the Secret (RBAC `get` on secrets) reports a missing one before any RayJob; once it
    exists the RayJob and RayService the server accepts (KubeRay's CRDs) take it by envFrom, and its value is in
    no object, event or log line of the operator's."""
    secret_value = f"e2e-{uuid.uuid4().hex}"
    kube.create(FR, namespace, _cr(design_cr, namespace,
                                   storage={"uri": "s3://fusionrec-e2e/models", "credentialsSecret": "s3-creds"}))
    condition = eventually(lambda: (lambda c: c if c.get("status") == "False" else None)(
        _condition(kube, namespace, "SpecValid")), "SpecValid=False", 30)
    assert condition["reason"] == "SecretMissing", condition
    assert "spec.storage.credentialsSecret" in condition["message"]
    assert f"kubectl create secret generic s3-creds -n {namespace}" in condition["message"]
    assert "SecretMissing" in _reasons(kube, namespace)
    assert kube.get(consts.RAYJOBS, namespace, rayjob_name(NAME, "v1")) is None

    kube.create(consts.SECRETS, namespace, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds"},
                                            "stringData": {"AWS_ACCESS_KEY_ID": "AKIDE2E",
                                                           "AWS_SECRET_ACCESS_KEY": secret_value}})
    job = eventually(lambda: kube.get(consts.RAYJOBS, namespace, rayjob_name(NAME, "v1")), "the RayJob exists", 45)
    eventually(lambda: _condition(kube, namespace, "SpecValid").get("status") == "True", "SpecValid=True", 20)
    _finish_job(kube, namespace, "v1")
    service = eventually(lambda: kube.get(consts.RAYSERVICES, namespace, NAME), "the RayService exists", 30)
    for obj, key in ((job, "rayClusterSpec"), (service, "rayClusterConfig")):
        cluster = obj["spec"][key]
        for group in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"]):
            assert group["template"]["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    written = [job, service, kube.get(FR, namespace, NAME), kube.events(namespace, NAME),
               kube.get(consts.CONFIGMAPS, namespace, manifest_configmap_name(NAME, "v1"))]
    assert secret_value not in str(written) and "AKIDE2E" not in str(written)
    assert secret_value not in operator.tail(chars=1 << 30)
    # What the operator's check receives from the server: the Secret's metadata, not its data.
    seen = kube.request("GET", consts.SECRETS.path(namespace, "s3-creds"), accept=METADATA_ONLY)
    assert seen["kind"] == "PartialObjectMetadata" and "data" not in seen and secret_value not in str(seen)


def test_a_living_shop_on_a_claim_serves_with_a_writable_live_folder(kube: Kube, namespace: str,
                                                                     design_cr: dict[str, Any]) -> None:
    """serving.live on a PersistentVolumeClaim, with the click-through gate: the API server takes the CR, the
    RayJob's manifest names the live folder (retraining reads the events there) and the RayService the server
    stores mounts that folder read-write beside read-only artifacts, with the optional write-tokens key."""
    doc = _cr(design_cr, namespace, storage={"uri": "pvc://shop-data/runs"},
              serving={**design_cr["spec"]["serving"], "live": {"items": True, "events": True}},
              rollout={"steps": [50, 100], "stepIntervalSeconds": 2,
                       "analysis": {"ctr": {"enabled": True, "minImpressions": 100}}})
    kube.create(FR, namespace, doc)
    eventually(lambda: kube.get(consts.RAYJOBS, namespace, rayjob_name(NAME, "v1")), "the RayJob exists", 30)
    configmap = kube.get(consts.CONFIGMAPS, namespace, manifest_configmap_name(NAME, "v1"))
    pod_manifest = yaml.safe_load(next(iter(configmap["data"].values())))
    assert pod_manifest["spec"]["serving"]["live"]["uri"] == f"{consts.MODELS_MOUNT_ROOT}/shop-data/runs/{NAME}/_live"
    _finish_job(kube, namespace, "v1")
    service = eventually(lambda: kube.get(consts.RAYSERVICES, namespace, NAME), "the RayService exists", 30)
    pod = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts[consts.LIVE_MOUNT]["subPath"] == f"runs/{NAME}/_live" and not mounts[consts.LIVE_MOUNT]["readOnly"]
    assert mounts[f"{consts.MODELS_MOUNT_ROOT}/shop-data"]["readOnly"] is True
    (tokens,) = [v["secret"] for v in pod["volumes"] if "secret" in v and v["name"] == "auth-tokens"]
    assert tokens["optional"] is True and [i["key"] for i in tokens["items"]] == ["tokens", "write-tokens"]
    args = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]["serving"]
    assert args["live"]["uri"] == consts.LIVE_MOUNT and args["auth"]["writeTokenFile"].endswith("/write-tokens")


def test_service_monitor_without_its_crd_is_reported(kube: Kube, namespace: str, design_cr: dict[str, Any]) -> None:
    kube.create(FR, namespace, _cr(design_cr, namespace, monitoring={"serviceMonitor": True}))
    condition = eventually(lambda: (lambda c: c if c.get("reason") else None)(
        _condition(kube, namespace, "MonitoringReady")), "MonitoringReady is set", 30)
    assert condition["status"] == "False" and condition["reason"] == "ServiceMonitorCRDMissing", condition
    assert kube.get(consts.SERVICES, namespace, f"{NAME}-metrics") is not None
    assert _reasons(kube, namespace).count("ServiceMonitorCRDMissing") == 1


def test_delete_collects_the_children_and_a_namesake_starts_clean(
        kube: Kube, namespace: str, design_cr: dict[str, Any]) -> None:
    first = _serve_first_version(kube, namespace, _cr(design_cr, namespace))
    kube.delete(FR, namespace, NAME)
    eventually(lambda: kube.get(FR, namespace, NAME) is None, "the FusionRecommender is gone (no finalizer)", 10)

    # Created again at once, under the same name, while the old children may still wait for the collector.
    second = kube.create(FR, namespace, _cr(design_cr, namespace))
    assert second["metadata"]["uid"] != first["metadata"]["uid"]

    def owned_by_second() -> bool:
        job = kube.get(consts.RAYJOBS, namespace, rayjob_name(NAME, "v1")) or {}
        return second["metadata"]["uid"] in {r["uid"] for r in job.get("metadata", {}).get("ownerReferences", [])}

    eventually(owned_by_second, "the new FusionRecommender owns a new RayJob", 60)
    assert _condition(kube, namespace, "SpecValid").get("status") == "True"
    assert _status(kube, namespace).get("phase") != "Failed"

    kube.delete(FR, namespace, NAME)
    children = [(consts.RAYJOBS, rayjob_name(NAME, "v1")), (consts.CONFIGMAPS, manifest_configmap_name(NAME, "v1"))]
    eventually(lambda: all(kube.get(kind, namespace, name) is None for kind, name in children),
               "the garbage collector removed the RayJob and the ConfigMap", 90)


def test_helm_upgrade_to_watched_namespaces(kube: Kube, chart: dict[str, str], operator: OperatorProcess,
                                            operator_kubeconfig: Path, namespace: str, design_cr: dict[str, Any],
                                            tmp_path: Path) -> None:
    operator.stop()  # its cluster-wide grant goes with the upgrade
    upgraded = run_tool("helm", "upgrade", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE,
                        "--set", f"watchNamespaces={{{namespace}}}")
    chart["upgrade"] = upgraded.stdout
    assert "STATUS: deployed" in upgraded.stdout and "REVISION: 2" in upgraded.stdout, upgraded.stdout
    role = consts.Resource("rbac.authorization.k8s.io", "v1", "roles", "Role")
    assert kube.get(role, namespace, SERVICE_ACCOUNT) is not None
    watched = operator_as(operator_kubeconfig, tmp_path / "watched.log", "--namespace", namespace)
    watched.start()
    try:
        kube.create(FR, namespace, _cr(design_cr, namespace))
        eventually(lambda: kube.get(consts.RAYJOBS, namespace, rayjob_name(NAME, "v1")), "the RayJob exists", 30)
        log = watched.tail(100_000)
        assert "403" not in log and "Forbidden" not in log and "Not enough permissions" not in log, log
    finally:
        watched.stop()


def test_helm_uninstall_then_delete_does_not_hang(kube: Kube, chart: dict[str, str], namespace: str,
                                                  design_cr: dict[str, Any]) -> None:
    kube.create(FR, namespace, _cr(design_cr, namespace))  # no operator runs any more
    uninstalled = run_tool("helm", "uninstall", RELEASE, "-n", RELEASE_NAMESPACE)
    chart["uninstall"] = uninstalled.stdout
    assert "uninstalled" in uninstalled.stdout, uninstalled.stdout
    run_tool("kubectl", "delete", "frec", NAME, "-n", namespace, "--timeout=20s")
    assert kube.get(FR, namespace, NAME) is None
    for kind, text in chart.items():
        print(f"--- helm {kind} ---\n{text}")
