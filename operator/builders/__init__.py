"""Pure builders: a parsed manifest (and the operator's config) in, Kubernetes manifests out."""

from fusionrec.operator.builders.monitoring import build_metrics_service, build_service_monitor
from fusionrec.operator.builders.serving import ServedVersion, build_rayservice, build_serve_config
from fusionrec.operator.builders.training import build_manifest_configmap, build_rayjob

__all__ = [
    "ServedVersion",
    "build_manifest_configmap",
    "build_metrics_service",
    "build_rayjob",
    "build_rayservice",
    "build_serve_config",
    "build_service_monitor",
]
