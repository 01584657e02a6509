"""The operator's own settings, read once from the environment (the Helm chart sets them on the Deployment).

Everything a cluster admin tunes lives here, typed and checked at start-up, so a bad value stops the
operator with a message naming the variable instead of surfacing later inside a reconcile.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from fusionrec import __version__
from fusionrec.errors import UserError

DEFAULT_SELECTOR = 'namespace="{namespace}",service="{name}-metrics"'


def _number(env: Mapping[str, str], key: str, default: float, minimum: float) -> float:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"{key}={raw!r} is not a number", field=key) from None
    if value < minimum:
        raise UserError(f"{key}={raw!r} must be >= {minimum}", field=key)
    return value


@dataclass(frozen=True)
class OperatorConfig:
    """Settings of one operator process.

    Attributes:
        ray_image: image of every Ray pod (train and serve); it must contain fusionrec.
        prometheus_url: base URL of the Prometheus HTTP API that gates rollout steps; None: no analysis
            (a canary then holds at its first step, reason AnalysisUnavailable, unless its
            spec.rollout.analysis.enabled is false).
        prometheus_selector: PromQL label matchers that pick one FusionRecommender's series, with
            `{namespace}` and `{name}` placeholders; the default matches the labels Prometheus Operator
            adds when it scrapes the `<name>-metrics` Service through the generated ServiceMonitor.
        sync_interval: seconds between two reconciles of one object by the timer.
        kube_server: an API server URL used without credentials (`kubectl proxy`, test servers); None
            logs in through the kubeconfig or the in-cluster service account.
        kubeconfig: a kubeconfig file used exclusively (FUSIONREC_KUBECONFIG); None looks for the in-cluster
            service account, then $KUBECONFIG or ~/.kube/config.
        metrics_port / metrics_host: where the operator's own /metrics listen; port 0 turns them off.
        keep_versions: how many retired versions keep their training RayJob and manifest ConfigMap (for
            their logs and manifests); older ones are deleted when a version leaves the rollout.
    """

    ray_image: str = f"fusionrec/ray-runtime:{__version__}"
    prometheus_url: str | None = None
    prometheus_selector: str = DEFAULT_SELECTOR
    prometheus_timeout: float = 10.0
    sync_interval: float = 15.0
    kube_server: str | None = None
    kubeconfig: str | None = None
    metrics_port: int = 8080
    metrics_host: str = "0.0.0.0"
    job_ttl_seconds: int = 3600
    keep_versions: int = 3
    head_cpu: str = "1"
    head_memory: str = "4Gi"
    train_worker_memory: str = "8Gi"
    image_pull_policy: str = "IfNotPresent"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        selector = env.get("FUSIONREC_PROMETHEUS_SELECTOR", DEFAULT_SELECTOR)
        try:
            selector.format(namespace="ns", name="n")
        except (KeyError, IndexError, ValueError) as exc:
            raise UserError(
                f"FUSIONREC_PROMETHEUS_SELECTOR={selector!r} has a bad placeholder ({exc}); "
                "only {namespace} and {name} are known",
                field="FUSIONREC_PROMETHEUS_SELECTOR",
            ) from None
        policy = env.get("FUSIONREC_IMAGE_PULL_POLICY", "IfNotPresent")
        if policy not in {"Always", "IfNotPresent", "Never"}:
            raise UserError(f"FUSIONREC_IMAGE_PULL_POLICY={policy!r}: use Always, IfNotPresent or Never",
                            field="FUSIONREC_IMAGE_PULL_POLICY")
        return cls(
            ray_image=env.get("FUSIONREC_RAY_IMAGE") or cls.ray_image,
            prometheus_url=(env.get("FUSIONREC_PROMETHEUS_URL") or None),
            prometheus_selector=selector,
            prometheus_timeout=_number(env, "FUSIONREC_PROMETHEUS_TIMEOUT", 10.0, 0.1),
            sync_interval=_number(env, "FUSIONREC_SYNC_INTERVAL", 15.0, 0.1),
            kube_server=(env.get("FUSIONREC_KUBE_SERVER") or None),
            kubeconfig=(env.get("FUSIONREC_KUBECONFIG") or None),
            metrics_port=int(_number(env, "FUSIONREC_METRICS_PORT", 8080, 0)),
            metrics_host=env.get("FUSIONREC_METRICS_HOST", "0.0.0.0"),
            job_ttl_seconds=int(_number(env, "FUSIONREC_JOB_TTL_SECONDS", 3600, 0)),
            keep_versions=int(_number(env, "FUSIONREC_KEEP_VERSIONS", 3, 0)),
            head_cpu=env.get("FUSIONREC_HEAD_CPU", "1"),
            head_memory=env.get("FUSIONREC_HEAD_MEMORY", "4Gi"),
            train_worker_memory=env.get("FUSIONREC_TRAIN_WORKER_MEMORY", "8Gi"),
            image_pull_policy=policy,
        )
