"""The chart lints and renders, every object is valid Kubernetes, and the operator's Deployment is hardened,
probed and configured in a way the operator itself accepts."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest

from fusionrec.operator.__main__ import parse_args
from fusionrec.operator.config import OperatorConfig

from _chart_helpers import (
    CHART,
    CONFIGS,
    FULLNAME,
    MONITORING_ON,
    RELEASE,
    RELEASE_NAMESPACE,
    REPO,
    of_kind,
    one,
    render,
    run_helm,
    set_args,
)

# Prometheus Operator's kinds: kubernetes-validate has no schema for them (it only warns); test_chart_monitoring
# checks them.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}
STANDARD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/component", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by",
                   "helm.sh/chart")


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_helm_lint_strict(helm, config):
    result = run_helm(helm, "lint", "--strict", str(CHART), *set_args(CONFIGS[config]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("kube_version", ["1.30", "1.37"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_every_rendered_object_passes_kubernetes_validate_strict(helm, config, kube_version):
    docs = render(helm, *CONFIGS[config])
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        if doc["kind"] in CUSTOM_KINDS:
            with pytest.raises(kubernetes_validate.utils.SchemaNotFoundError):
                kubernetes_validate.validate(doc, kube_version, strict=True)
            continue
        kubernetes_validate.validate(doc, kube_version, strict=True)
    expected = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service"}
    if config != "default":
        expected |= {"ServiceMonitor", "PrometheusRule", "ConfigMap"}
    if config == "one-namespace":
        expected |= {"Role", "RoleBinding"}
    assert kinds == expected


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_standard_labels_and_namespaces(helm, config):
    for doc in render(helm, *CONFIGS[config]):
        labels = doc["metadata"]["labels"]
        missing = [key for key in STANDARD_LABELS if key not in labels]
        assert not missing, f"{doc['kind']} {doc['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
            assert doc["metadata"]["namespace"] == RELEASE_NAMESPACE, doc["kind"]


def _container(docs: list[dict]) -> dict:
    deployment = one(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_deployment_is_hardened(helm):
    docs = render(helm)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["serviceAccountName"] == FULLNAME
    container = _container(docs)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    # A read-only root needs a writable /tmp (tempfile, kopf's and httpx's scratch use).
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert one(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}


def test_probes_hit_kopfs_health_endpoint_that_the_args_turn_on(helm):
    container = _container(render(helm, "healthPort=9099"))
    args = parse_args(container["args"])
    assert args.liveness == "http://0.0.0.0:9099/healthz"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["health"] == 9099
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe


def _env(container: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"]}


def test_operator_env_is_what_the_operator_reads_and_accepts(helm):
    container = _container(render(
        helm, "operator.rayImage.repository=registry.example.com/fusionrec/ray-runtime",
        "operator.rayImage.digest=sha256:" + "a" * 64, "operator.rayImage.pullPolicy=Always",
        "operator.prometheus.url=http://prometheus.monitoring.svc:9090",
        "operator.prometheus.selector=job=\"serve\"\\,ns=\"{namespace}\"", "operator.head.memory=6Gi",
        "metrics.port=9100", extra=("--set-json", "operator.syncIntervalSeconds=2.5")))  # --set makes 2.5 a string
    env = _env(container)
    read_by_operator = set(re.findall(r'"(FUSIONREC_[A-Z_]+)"', (REPO / "operator" / "config.py").read_text()))
    chart_vars = {name for name in env if name.startswith("FUSIONREC_")}
    assert chart_vars <= read_by_operator, f"the operator ignores {sorted(chart_vars - read_by_operator)}"
    config = OperatorConfig.from_env(env)
    assert config.ray_image == "registry.example.com/fusionrec/ray-runtime@sha256:" + "a" * 64
    assert config.image_pull_policy == "Always"
    assert config.prometheus_url == "http://prometheus.monitoring.svc:9090"
    assert config.prometheus_selector == 'job="serve",ns="{namespace}"'
    assert (config.sync_interval, config.head_memory, config.metrics_port) == (2.5, "6Gi", 9100)
    assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in container["ports"]


def test_defaults_give_the_operators_defaults(helm):
    """An unset prometheus url/selector must leave the operator's own defaults in force."""
    env = _env(_container(render(helm)))
    assert "FUSIONREC_PROMETHEUS_URL" not in env and "FUSIONREC_PROMETHEUS_SELECTOR" not in env
    config, default = OperatorConfig.from_env(env), OperatorConfig()
    assert config.prometheus_selector == default.prometheus_selector
    assert config.ray_image == default.ray_image  # fusionrec/ray-runtime:<appVersion == package version>
    assert (config.sync_interval, config.job_ttl_seconds, config.head_cpu, config.head_memory,
            config.train_worker_memory, config.metrics_port) == (
        default.sync_interval, default.job_ttl_seconds, default.head_cpu, default.head_memory,
        default.train_worker_memory, default.metrics_port)


def test_image_tag_defaults_to_app_version_and_digest_wins(helm):
    assert _container(render(helm))["image"] == "fusionrec/operator:0.1.0"
    assert _container(render(helm, "image.tag=1.2.3"))["image"] == "fusionrec/operator:1.2.3"
    digest = "sha256:" + "b" * 64
    assert _container(render(helm, "image.tag=1.2.3", f"image.digest={digest}"))["image"] == \
        f"fusionrec/operator@{digest}"


@pytest.mark.parametrize(("sets", "namespaces", "all_namespaces"), [
    ((), [], True),
    (("watchNamespaces={recs}",), ["recs"], False),
    (("watchNamespaces={recs,shop}",), ["recs", "shop"], False),
])
def test_watch_mode_reaches_the_operator_cli(helm, sets, namespaces, all_namespaces):
    args = parse_args(_container(render(helm, *sets))["args"])
    assert args.namespace == namespaces and args.all_namespaces is all_namespaces


@pytest.mark.parametrize(("level", "flags"), [("warning", ("quiet",)), ("info", ()), ("debug", ("verbose",)),
                                               ("trace", ("debug",))])
def test_log_level_maps_to_the_cli_flags(helm, level, flags):
    args = parse_args(_container(render(helm, f"logLevel={level}"))["args"])
    assert {flag for flag in ("quiet", "verbose", "debug") if getattr(args, flag)} == set(flags)


def test_metrics_service_selects_the_operator_pod_and_port(helm):
    docs = render(helm, *MONITORING_ON)
    service = one(docs, "Service")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # The serving pods the operator creates carry app.kubernetes.io/name too: the component tells them apart.
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "operator"
    container_ports = {port["name"] for port in _container(docs)["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= container_ports


def test_metrics_off_removes_port_service_and_refuses_monitoring(helm):
    docs = render(helm, "metrics.enabled=false")
    assert of_kind(docs, "Service") == []
    assert _env(_container(docs))["FUSIONREC_METRICS_PORT"] == "0"
    result = run_helm(helm, "template", RELEASE, str(CHART), *set_args(("metrics.enabled=false", *MONITORING_ON)))
    assert result.returncode != 0 and "needs metrics.enabled" in result.stderr


def test_notes_say_kuberay_is_a_prerequisite_and_how_to_check(helm):
    result = run_helm(helm, "install", RELEASE, str(CHART), "--dry-run=client", "--namespace", RELEASE_NAMESPACE)
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "KubeRay" in notes and "prerequisite" in notes.lower()
    assert "kubectl get crd rayjobs.ray.io rayservices.ray.io" in notes
    readme = (CHART / "README.md").read_text()
    assert "## Prerequisite: KubeRay" in readme and "not** installed by this chart" in readme
