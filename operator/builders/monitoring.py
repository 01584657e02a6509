"""Metrics plumbing for Prometheus Operator: a Service over the serving pods and a ServiceMonitor on it.

The Service exists so that Prometheus Operator, which scrapes the endpoints of Services, reaches every
serving pod: the Serve proxy's `/metrics` (fusionrec_requests_total, fusionrec_request_latency_seconds)
and Ray's own metrics port. Scraped through it, each series carries `namespace` and `service` labels,
which is what the operator's default Prometheus selector matches on.
"""

from __future__ import annotations

from typing import Any

from fusionrec.operator import consts
from fusionrec.operator.builders.common import labels, metrics_service_name


def _selector(name: str) -> dict[str, str]:
    return {consts.NAME_LABEL: name, consts.COMPONENT_LABEL: "serving"}


def build_metrics_service(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": metrics_service_name(name), "namespace": namespace, "labels": labels(name, "metrics")},
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(name),
            "ports": [
                {"name": "serve", "port": consts.SERVE_PORT, "targetPort": "serve", "protocol": "TCP"},
                {"name": "ray-metrics", "port": consts.RAY_METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def build_service_monitor(name: str, namespace: str, interval_seconds: int = 15) -> dict[str, Any]:
    return {
        "apiVersion": f"{consts.MONITORING_GROUP}/{consts.MONITORING_VERSION}",
        "kind": consts.SERVICE_MONITOR_KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": labels(name, "metrics")},
        "spec": {
            "selector": {"matchLabels": {consts.NAME_LABEL: name, consts.COMPONENT_LABEL: "metrics"}},
            "namespaceSelector": {"matchNames": [namespace]},
            "endpoints": [
                {"port": "serve", "path": "/metrics", "interval": f"{interval_seconds}s"},
                {"port": "ray-metrics", "path": "/metrics", "interval": f"{interval_seconds}s"},
            ],
        },
    }
