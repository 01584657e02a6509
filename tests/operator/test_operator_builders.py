"""Spec -> manifests, each one checked against the schema its API server would apply.

Core kinds go through kubernetes-validate --strict (Kubernetes 1.37 schemas); RayJob and RayService
through the vendored KubeRay v1.7.0 CRD schemas with unknown fields refused, and the pod templates they
embed once more as strict core PodTemplates (KubeRay's CRD leaves pod specs loosely typed).
"""

from __future__ import annotations

import shlex
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from fusionrec.errors import UserError
from fusionrec.operator import consts
from fusionrec.operator.builders import (
    ServedVersion,
    build_manifest_configmap,
    build_metrics_service,
    build_rayjob,
    build_rayservice,
    build_serve_config,
    build_service_monitor,
)
from fusionrec.operator.builders.common import check_cluster_spec, dns_name, pod_path
from fusionrec.operator.builders.training import render_for_pod
from fusionrec.operator.config import OperatorConfig
from fusionrec.operator.controller import parse_manifest
from fusionrec.spec import AuthSpec, manifest_from_dict

from _operator_apiserver import strict
from _served import served_versions

K8S = "1.37.0"
CONFIG = OperatorConfig(ray_image="registry.example/fusionrec/ray-runtime:0.1.0")
SECURED = AuthSpec(secret_ref="recs-tokens")


def validate_core(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S, strict=True)


def validate_kuberay(obj: dict[str, Any], schema: dict[str, Any], cluster_key: str) -> None:
    jsonschema.Draft4Validator(strict(schema)).validate(obj)
    cluster = obj["spec"][cluster_key]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        validate_core({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                       "template": group["template"]})


def test_manifest_configmap_follows_the_training_contract(manifest):
    cm = build_manifest_configmap(manifest, "v3")
    validate_core(cm)
    assert cm["metadata"]["name"] == "shop-recs-v3-manifest"
    document = yaml.safe_load(cm["data"]["manifest.yaml"])
    rendered = manifest_from_dict(document)  # what fusionrec.train will parse
    assert rendered.spec.version == "v3" and rendered.metadata.name == "shop-recs"
    assert rendered.spec.encoders[0].source == "/mnt/models/models/minilm"  # pvc:// rewritten for the pod
    assert rendered.spec.encoders[1].source == "pkg://all_mpnet_base_v2"
    assert rendered.spec.storage.uri == "/mnt/models/fusionrec-artifacts/runs"
    assert rendered.spec.data.interactions == "s3://bucket/inter.parquet"
    assert rendered.spec.training.epochs == 5


def test_rayjob_trains_with_the_contract_entrypoint(manifest, rayjob_schema):
    job = build_rayjob(manifest, "v3", CONFIG)
    validate_kuberay(job, rayjob_schema, "rayClusterSpec")
    spec = job["spec"]
    assert shlex.split(spec["entrypoint"]) == [
        "python", "-m", "fusionrec.train", "--manifest", "/etc/fusionrec/manifest.yaml",
        "--output", "/mnt/models/fusionrec-artifacts/runs/shop-recs/v3"]
    assert spec["shutdownAfterJobFinishes"] is True
    workers = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 4
    container = workers["template"]["spec"]["containers"][0]
    assert container["image"] == CONFIG.ray_image
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "/etc/fusionrec" in mounts and not mounts["/mnt/models/fusionrec-artifacts"]["readOnly"]
    assert "/mnt/models/models" in mounts  # the pvc:// encoder's claim
    volumes = {v["name"]: v for v in workers["template"]["spec"]["volumes"]}
    assert volumes["manifest"]["configMap"]["name"] == "shop-recs-v3-manifest"
    assert job["metadata"]["labels"][consts.VERSION_LABEL] == "v3"


def test_rayjob_name_fits_kuberay_limit_for_long_versions(manifest):
    long = "release-2025.01.31-with-a-very-long-name"
    names = {build_rayjob(manifest, v, CONFIG)["metadata"]["name"] for v in (long, long + "x")}
    assert len(names) == 2
    for name in names:
        assert len(name) <= consts.RAYJOB_NAME_MAX and "." not in name


def test_rayjob_passes_s3_storage_through(design_cr, rayjob_schema):
    design_cr["spec"]["storage"] = {"uri": "s3://bucket/models"}
    job = build_rayjob(parse_manifest(design_cr), "v3", CONFIG)
    validate_kuberay(job, rayjob_schema, "rayClusterSpec")
    assert job["spec"]["entrypoint"].endswith("--output s3://bucket/models/shop-recs/v3")


def test_rayservice_serves_the_contract_application(manifest, rayservice_schema):
    versions = [ServedVersion("v2", 90), ServedVersion("v3", 10)]
    service = build_rayservice(manifest, versions, CONFIG)
    validate_kuberay(service, rayservice_schema, "rayClusterConfig")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    assert (app["name"], app["route_prefix"]) == ("fusionrec", "/")
    assert app["import_path"] == "fusionrec.serving.app:build_app"
    assert app["args"]["name"] == "shop-recs"
    # args: where a freshly built router starts (stable version first, all traffic); the live split is the
    # router's user_config, applied by reconfigure.
    assert app["args"]["versions"] == [
        {"version": "v2", "artifact": "/mnt/models/fusionrec-artifacts/runs/shop-recs/v2", "weight": 100},
        {"version": "v3", "artifact": "/mnt/models/fusionrec-artifacts/runs/shop-recs/v3", "weight": 0}]
    assert app["deployments"] == [{"name": "Router", "user_config": {"weights": {"v2": 90, "v3": 10}}}]
    serving = app["args"]["serving"]
    assert serving["maxReplicas"] == 8 and serving["maxBatchSize"] == 64  # spec.serving, by alias
    assert serving["auth"] == {"secretRef": "recs-tokens", "tokenFile": "/etc/fusionrec/auth/tokens", "tokenEnv": None,
                               "writeTokenFile": "/etc/fusionrec/auth/write-tokens", "writeTokenEnv": None,
                               "disabled": False}
    assert serving["live"]["uri"] is None  # neither live items nor events: nothing resolved, nothing mounted
    assert all(m["mountPath"] != consts.LIVE_MOUNT for m in _containers_mounts(service))
    assert served_versions(service) == versions
    workers = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert (workers["minReplicas"], workers["maxReplicas"]) == (1, 8)
    pod = workers["template"]["spec"]
    auth_mount = {"name": "auth-tokens", "mountPath": "/etc/fusionrec/auth", "readOnly": True}
    assert auth_mount in pod["containers"][0]["volumeMounts"]
    assert pod["containers"][0]["resources"]["requests"] == {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}


def test_canary_steps_change_only_the_routers_user_config(manifest):
    """Serve rebuilds an application whose args change; a weight step must touch the router's user_config only."""
    steps = [build_rayservice(manifest, [ServedVersion("v2", 100 - w), ServedVersion("v3", w)], CONFIG)
             for w in (10, 50, 90)]
    apps = [yaml.safe_load(s["spec"]["serveConfigV2"])["applications"][0] for s in steps]
    assert all(app["args"] == apps[0]["args"] for app in apps)
    assert [app["deployments"][0]["user_config"]["weights"]["v3"] for app in apps] == [10, 50, 90]
    assert [served_versions(s)[1].weight for s in steps] == [10, 50, 90]


def test_the_serving_app_accepts_the_operators_serve_config(manifest):
    """The operator and the serving app agree on the application's names and the args contract."""
    from fusionrec.serving.config import INGRESS_NAME, parse_args

    service = build_rayservice(manifest, [ServedVersion("v2", 70), ServedVersion("v3", 30)], CONFIG)
    (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    assert app["deployments"][0]["name"] == INGRESS_NAME
    parsed = parse_args(app["args"])
    assert [v.version for v in parsed.versions] == ["v2", "v3"]


def test_canary_steps_change_only_the_serve_config(manifest):
    """KubeRay updates serveConfigV2 in place only while the cluster spec is unchanged."""
    before = build_rayservice(manifest, [ServedVersion("v2", 100)], CONFIG)
    after = build_rayservice(manifest, [ServedVersion("v2", 50), ServedVersion("v3", 50)], CONFIG)
    assert before["spec"]["rayClusterConfig"] == after["spec"]["rayClusterConfig"]
    assert before["spec"]["serveConfigV2"] != after["spec"]["serveConfigV2"]


@pytest.mark.parametrize("weights", [
    [("v2", 60), ("v3", 30)],  # sums to 90
    [("v2", 100), ("v2", 0)],  # a version twice
    [],
    [("v2", 101), ("v3", -1)],  # negative
])
def test_serve_config_refuses_bad_weights(manifest, weights):
    with pytest.raises(ValueError):
        build_serve_config(manifest, [ServedVersion(v, w) for v, w in weights])


def test_metrics_service_and_service_monitor_line_up(manifest):
    service = build_metrics_service("shop-recs", "recs")
    validate_core(service)
    monitor = build_service_monitor("shop-recs", "recs")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "ServiceMonitor"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    # The Service must select the serving pods, not the training ones.
    serving_pod = build_rayservice(manifest, [ServedVersion("v3", 100)], CONFIG)["spec"]["rayClusterConfig"]
    pod_labels = serving_pod["workerGroupSpecs"][0]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    training_labels = build_rayjob(manifest, "v3", CONFIG)["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    assert not service["spec"]["selector"].items() <= training_labels["metadata"]["labels"].items()
    target_ports = {p["targetPort"] for p in service["spec"]["ports"]}
    container_ports = {p["name"] for p in serving_pod["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]}
    assert target_ports <= container_ports


def test_cluster_checks_name_the_field():
    with pytest.raises(UserError, match="spec.storage.uri: './runs' is not shared storage"):
        check_cluster_spec("shop-recs", "./runs", SECURED)
    with pytest.raises(UserError, match="metadata.name"):
        check_cluster_spec("9-shop", "s3://b/x", SECURED)
    with pytest.raises(UserError, match="spec.storage.uri: 'pvc:///x' does not start with a valid"):
        check_cluster_spec("shop", "pvc:///x", SECURED)


def test_a_cluster_spec_needs_an_auth_secret_unless_auth_is_disabled(design_cr):
    """Issue 17, item 6: auth is on by default; without secretRef the RayService used to serve /v1/* open."""
    for auth in (AuthSpec(), AuthSpec(token_file="/tokens"), AuthSpec(token_env="TOKENS")):
        with pytest.raises(UserError) as exc:
            check_cluster_spec("shop-recs", "s3://b/x", auth)
        assert exc.value.field == "spec.serving.auth.secretRef"
        assert "spec.serving.auth.secretRef" in exc.value.fix and "disabled: true" in exc.value.fix
    check_cluster_spec("shop-recs", "s3://b/x", SECURED)
    check_cluster_spec("shop-recs", "s3://b/x", AuthSpec(disabled=True))
    design_cr["spec"]["serving"]["auth"] = {}
    with pytest.raises(UserError, match="spec.serving.auth.secretRef is required on a cluster"):
        parse_manifest(design_cr)


def test_auth_disabled_serves_open_and_mounts_no_secret(design_cr):
    design_cr["spec"]["serving"]["auth"] = {"disabled": True}
    service = build_rayservice(parse_manifest(design_cr), [ServedVersion("v3", 100)], CONFIG)
    app = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]
    assert app["args"]["serving"]["auth"] == {"secretRef": None, "tokenFile": None, "tokenEnv": None,
                                              "writeTokenFile": None, "writeTokenEnv": None, "disabled": True}
    assert "auth-tokens" not in yaml.safe_dump(service["spec"]["rayClusterConfig"])


def test_pod_paths_and_names():
    assert pod_path("pvc://models/a/b", "f")[0] == "/mnt/models/models/a/b"
    assert pod_path("pvc://models", "f")[0] == "/mnt/models/models"
    assert pod_path("s3://b/k", "f") == ("s3://b/k", None)
    assert dns_name("shop", "train", "v1.2") == "shop-train-v1-2"
    assert len(dns_name("x" * 80, limit=47)) == 47


# --- object-storage credentials (spec.storage.credentialsSecret) ----------------------------------------------


def _containers(obj: dict[str, Any], cluster_key: str) -> list[dict[str, Any]]:
    cluster = obj["spec"][cluster_key]
    return [group["template"]["spec"]["containers"][0]
            for group in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"])]


def _children(design_cr: dict[str, Any], rayjob_schema, rayservice_schema) -> list[tuple[dict[str, Any], str]]:
    """The RayJob and the RayService of the spec, validated; with the key of their Ray cluster."""
    manifest = parse_manifest(design_cr)
    job, service = build_rayjob(manifest, "v3", CONFIG), build_rayservice(manifest, [ServedVersion("v3", 100)], CONFIG)
    validate_kuberay(job, rayjob_schema, "rayClusterSpec")
    validate_kuberay(service, rayservice_schema, "rayClusterConfig")
    return [(job, "rayClusterSpec"), (service, "rayClusterConfig")]


def test_s3_credentials_reach_every_ray_container_by_reference(design_cr, rayjob_schema, rayservice_schema):
    """Training (head: the driver that publishes; workers) and serving (head and workers fetch the artifacts)
    all get the Secret as their environment; the objects name the Secret and hold no value."""
    design_cr["spec"]["storage"] = {"uri": "s3://bucket/models", "credentialsSecret": "s3-creds"}
    children = _children(design_cr, rayjob_schema, rayservice_schema)
    for obj, key in children:
        containers = _containers(obj, key)
        assert len(containers) == 2
        for container in containers:
            assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}], obj["kind"]
            assert "env" not in container  # no value, and no per-key list to drift from fusionrec.storage
            assert "storage-credentials" not in {m["name"] for m in container["volumeMounts"]}
    configmap = build_manifest_configmap(parse_manifest(design_cr), "v3")
    assert yaml.safe_load(configmap["data"]["manifest.yaml"])["spec"]["storage"] == {
        "uri": "s3://bucket/models", "credentialsSecret": "s3-creds"}  # the name, passed through as it is


def test_gcs_credentials_are_a_mounted_key_file(design_cr, rayjob_schema, rayservice_schema):
    """fusionrec.storage reads GCS credentials from a key file only: the Secret is mounted (not put in the
    environment) and GOOGLE_APPLICATION_CREDENTIALS names its key."""
    design_cr["spec"]["storage"] = {"uri": "gs://bucket/models", "credentialsSecret": "gcs-key"}
    design_cr["spec"]["data"] = {"interactions": "gs://bucket/inter.parquet", "items": "gs://bucket/items.parquet"}
    for obj, key in _children(design_cr, rayjob_schema, rayservice_schema):
        pod_volumes = {v["name"]: v for v in obj["spec"][key]["headGroupSpec"]["template"]["spec"]["volumes"]}
        assert pod_volumes["storage-credentials"] == {"name": "storage-credentials",
                                                      "secret": {"secretName": "gcs-key"}}
        for container in _containers(obj, key):
            assert "envFrom" not in container
            assert container["env"] == [{"name": "GOOGLE_APPLICATION_CREDENTIALS",
                                         "value": "/var/secrets/fusionrec-storage/gcloud-application-credentials.json"}]
            assert {"name": "storage-credentials", "mountPath": "/var/secrets/fusionrec-storage",
                    "readOnly": True} in container["volumeMounts"]


def test_s3_and_gcs_together_get_both(design_cr):
    design_cr["spec"]["storage"] = {"uri": "gs://bucket/models", "credentialsSecret": "creds"}
    (container, *_) = _containers(build_rayjob(parse_manifest(design_cr), "v3", CONFIG), "rayClusterSpec")
    assert container["envFrom"] == [{"secretRef": {"name": "creds"}}]  # data.interactions is on s3://
    assert container["env"][0]["name"] == "GOOGLE_APPLICATION_CREDENTIALS"


def test_s3_without_a_secret_adds_nothing_for_the_pods_own_identity(design_cr, rayjob_schema, rayservice_schema):
    """IRSA / EKS Pod Identity: the pods' service account carries the role; the operator adds nothing."""
    design_cr["spec"]["storage"] = {"uri": "s3://bucket/models"}
    for obj, key in _children(design_cr, rayjob_schema, rayservice_schema):
        for container in _containers(obj, key):
            assert "envFrom" not in container and "env" not in container


def test_a_credentials_secret_nothing_would_use_is_refused(design_cr):
    """On a PVC with every data file on it too, no pod reads object storage: the Secret would be ignored."""
    design_cr["spec"]["storage"] = {"uri": "pvc://fusionrec-artifacts/runs", "credentialsSecret": "s3-creds"}
    design_cr["spec"]["data"] = {"interactions": "pvc://data/inter.parquet"}
    with pytest.raises(UserError) as refused:
        parse_manifest(design_cr)
    assert refused.value.field == "spec.storage.credentialsSecret"
    assert "s3-creds" in refused.value.message and "remove spec.storage.credentialsSecret" in refused.value.fix
    design_cr["spec"]["training"]["storagePath"] = "s3://bucket/checkpoints"  # checkpoints do use it
    job = build_rayjob(parse_manifest(design_cr), "v3", CONFIG)
    assert _containers(job, "rayClusterSpec")[0]["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]


def _containers_mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    return [m for pod in pods for c in pod["spec"]["containers"] for m in c.get("volumeMounts", [])]


def _volumes(service: dict[str, Any]) -> list[dict[str, Any]]:
    return service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["volumes"]


def test_live_folder_on_the_artifacts_claim_is_mounted_writable_beside_read_only_artifacts(design_cr,
                                                                                          rayservice_schema):
    design_cr["spec"]["serving"]["live"] = {"items": True, "events": True}
    manifest = parse_manifest(design_cr)
    service = build_rayservice(manifest, [ServedVersion("v2", 100)], CONFIG)
    validate_kuberay(service, rayservice_schema, "rayClusterConfig")
    (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    assert app["args"]["serving"]["live"]["uri"] == consts.LIVE_MOUNT
    claim = design_cr["spec"]["storage"]["uri"][len("pvc://"):].partition("/")
    (volume,) = [v for v in _volumes(service) if v.get("persistentVolumeClaim", {}).get("claimName") == claim[0]]
    assert volume["persistentVolumeClaim"]["readOnly"] is False  # one volume; each mount says what it may do
    mounts = [m for m in _containers_mounts(service) if m["name"] == volume["name"]]
    live = [m for m in mounts if m["mountPath"] == consts.LIVE_MOUNT]
    artifacts = [m for m in mounts if m["mountPath"] != consts.LIVE_MOUNT]
    assert live and all(m["readOnly"] is False and m["subPath"] == f"{claim[2].strip('/')}/shop-recs/_live"
                        for m in live)
    assert artifacts and all(m["readOnly"] is True for m in artifacts)


def test_live_uri_in_object_storage_passes_through_and_reaches_the_training_pods(design_cr):
    design_cr["spec"]["storage"] = {"uri": "s3://bucket/models"}
    design_cr["spec"]["serving"]["live"] = {"events": True}
    manifest = parse_manifest(design_cr)
    service = build_rayservice(manifest, [ServedVersion("v2", 100)], CONFIG)
    (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    assert app["args"]["serving"]["live"]["uri"] == "s3://bucket/models/shop-recs/_live"
    assert all(m["mountPath"] != consts.LIVE_MOUNT for m in _containers_mounts(service))
    document, _ = render_for_pod(manifest, "v3")  # the retraining job reads the events where serving writes them
    assert document["spec"]["serving"]["live"]["uri"] == "s3://bucket/models/shop-recs/_live"


def test_write_tokens_key_is_optional_in_the_auth_secret(manifest):
    from fusionrec.serving.config import MOUNTED_WRITE_TOKENS_FILE

    # The serving side tolerates a missing write-token file at this one path: where the Secret's key is mounted.
    assert MOUNTED_WRITE_TOKENS_FILE == f"{consts.AUTH_DIR}/{consts.AUTH_WRITE_TOKENS_KEY}"
    service = build_rayservice(manifest, [ServedVersion("v2", 100)], CONFIG)
    (secret,) = [v["secret"] for v in _volumes(service) if "secret" in v and v["name"] == "auth-tokens"]
    assert [item["key"] for item in secret["items"]] == ["tokens", "write-tokens"] and secret["optional"] is True


def test_a_live_folder_inside_the_image_is_refused_on_a_cluster(design_cr):
    design_cr["spec"]["serving"]["live"] = {"items": True, "uri": "/var/live"}
    with pytest.raises(UserError) as caught:
        parse_manifest(design_cr)
    assert caught.value.field == "spec.serving.live.uri" and "shared storage" in caught.value.message


@pytest.mark.parametrize("field_name,value", [("writeTokenFile", "/etc/write"), ("writeTokenEnv", "WRITE_TOKENS")])
def test_local_write_token_sources_are_refused_on_a_cluster(design_cr, field_name, value):
    design_cr["spec"]["serving"]["auth"][field_name] = value
    with pytest.raises(UserError) as caught:
        parse_manifest(design_cr)
    assert caught.value.field == f"spec.serving.auth.{field_name}" and "write-tokens" in caught.value.message
