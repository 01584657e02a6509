"""Names the operator shares with the cluster: API groups, kinds, plurals, labels and in-pod paths.

Kept in one place (as mysql-operator's `controller/consts.py` does) because the CRD, the builders, the
handlers and the tests must agree on every one of them; a typo in a plural is a 404 at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

from fusionrec.spec import API_GROUP, API_VERSION, KIND

GROUP = API_GROUP
VERSION = API_VERSION
PLURAL = "fusionrecommenders"
SINGULAR = "fusionrecommender"
SHORT_NAMES = ("frec",)
CATEGORIES = ("fusionrec",)
CRD_NAME = f"{PLURAL}.{GROUP}"

# KubeRay (the CRDs vendored under tests/operator/kuberay-crds are v1.7.0; ray.io/v1 is the storage version).
RAY_GROUP = "ray.io"
RAY_VERSION = "v1"
RAYJOB_KIND = "RayJob"
RAYSERVICE_KIND = "RayService"

# Prometheus Operator.
MONITORING_GROUP = "monitoring.coreos.com"
MONITORING_VERSION = "v1"
SERVICE_MONITOR_KIND = "ServiceMonitor"

# Labels put on every child; `NAME_LABEL` also selects the serving pods for the metrics Service.
NAME_LABEL = f"{GROUP}/name"
VERSION_LABEL = f"{GROUP}/version"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY = "fusionrec-operator"
STANDARD_LABELS = {"app.kubernetes.io/name": "fusion-recommender", "app.kubernetes.io/managed-by": MANAGED_BY}

# Paths inside the Ray pods.
MANIFEST_DIR = "/etc/fusionrec"
MANIFEST_KEY = "manifest.yaml"
AUTH_DIR = "/etc/fusionrec/auth"
AUTH_TOKENS_KEY = "tokens"
MODELS_MOUNT_ROOT = "/mnt/models"
LIVE_MOUNT = "/mnt/live"  # the serving pods' read-write mount of serving.live.uri on a PersistentVolumeClaim
AUTH_WRITE_TOKENS_KEY = "write-tokens"  # optional key of the serving.auth.secretRef Secret
# spec.storage.credentialsSecret for gs://: mounted here (not under MANIFEST_DIR, a read-only ConfigMap mount in
# the training pods), GOOGLE_APPLICATION_CREDENTIALS naming this key (KServe's name for it).
STORAGE_CREDENTIALS_DIR = "/var/secrets/fusionrec-storage"
GCS_CREDENTIALS_KEY = "gcloud-application-credentials.json"

# The serving application inside serveConfigV2 (contract with fusionrec.serving).
SERVE_APP_NAME = "fusionrec"
# The app's ingress deployment; its `user_config.weights` is the live canary split (fusionrec.serving.config).
SERVE_INGRESS_DEPLOYMENT = "Router"
SERVE_IMPORT_PATH = "fusionrec.serving.app:build_app"
SERVE_PORT = 8000
RAY_METRICS_PORT = 8080

# The datasets a training pod fetches and prepares itself when `spec.data` names no files (the keys of
# fusionrec.data.datasets.BUILT_INS, which the operator does not import: tests/operator check they agree). Any
# other `data.dataset` needs its prepared folder on shared storage (`data.path`): the pods have no data home.
BUILT_IN_DATASETS = ("ml-100k", "ml-1m")

# KubeRay limits the RayJob name so that the names it derives (RayCluster, submitter Job, Services) stay
# valid DNS labels.
RAYJOB_NAME_MAX = 47


@dataclass(frozen=True)
class Resource:
    """A Kubernetes resource type as the REST API addresses it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        """The REST path, e.g. /apis/ray.io/v1/namespaces/recs/rayjobs/shop-train-v3."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
            if subresource:
                base += f"/{subresource}"
        return base


FUSIONRECOMMENDERS = Resource(GROUP, VERSION, PLURAL, KIND)
RAYJOBS = Resource(RAY_GROUP, RAY_VERSION, "rayjobs", RAYJOB_KIND)
RAYSERVICES = Resource(RAY_GROUP, RAY_VERSION, "rayservices", RAYSERVICE_KIND)
SERVICE_MONITORS = Resource(MONITORING_GROUP, MONITORING_VERSION, "servicemonitors", SERVICE_MONITOR_KIND)
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
SERVICES = Resource("", "v1", "services", "Service")
SECRETS = Resource("", "v1", "secrets", "Secret")
