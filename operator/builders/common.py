"""Pieces every child manifest shares: names, labels, volumes for pvc:// URIs and the Ray pod templates.

All functions here are pure (spec in, dicts out), so each child is tested as data and validated against
the Kubernetes and KubeRay schemas without a cluster.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

from fusionrec.errors import UserError
from fusionrec.operator import consts
from fusionrec.operator.config import OperatorConfig
from fusionrec.spec import LIVE_FOLDER, AuthSpec, FusionRecommenderSpec, Manifest

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_CLAIM = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
SHARED_SCHEMES = ("pvc://", "s3://", "gs://")
OBJECT_STORAGE_SCHEMES = ("s3://", "gs://")

# Every spec field that may hold a URI, as paths into the camelCase spec document ("*" = each list item).
URI_FIELDS: tuple[tuple[str, ...], ...] = (
    ("encoders", "*", "source"),
    ("merge", "base"),
    ("merge", "models", "*", "source"),
    ("data", "path"),
    ("data", "interactions"),
    ("data", "items"),
    ("data", "users"),
    ("storage", "uri"),
    ("training", "storagePath"),
    ("serving", "live", "uri"),
)


def dns_name(*parts: str, limit: int = 63) -> str:
    """Join parts into a DNS-1035 label of at most `limit` characters.

    Dots (allowed in versions) become dashes; a name that is too long keeps its head and gets a short hash
    of the whole, so two long versions never collide on one child name.
    """
    joined = "-".join(parts).lower().replace(".", "-").replace("_", "-")
    joined = re.sub(r"-+", "-", joined).strip("-")
    if len(joined) <= limit:
        return joined
    digest = hashlib.sha256(joined.encode()).hexdigest()[:8]
    return f"{joined[: limit - 9].rstrip('-')}-{digest}"


def labels(name: str, component: str, version: str | None = None) -> dict[str, str]:
    out = {**consts.STANDARD_LABELS, "app.kubernetes.io/instance": name, consts.NAME_LABEL: name,
           consts.COMPONENT_LABEL: component}
    if version is not None:
        out[consts.VERSION_LABEL] = version
    return out


def rayjob_name(name: str, version: str) -> str:
    return dns_name(name, "train", version, limit=consts.RAYJOB_NAME_MAX)


def manifest_configmap_name(name: str, version: str) -> str:
    """`<name>-<version>-manifest`, the contract with fusionrec.train (ConfigMap names may hold dots)."""
    return f"{name}-{version}-manifest"


def metrics_service_name(name: str) -> str:
    return f"{name}-metrics"


def serve_endpoint(name: str, namespace: str) -> str:
    """KubeRay names the serving Service `<rayservice>-serve-svc`."""
    return f"http://{name}-serve-svc.{namespace}.svc:{consts.SERVE_PORT}"


@dataclass(frozen=True)
class Volume:
    """One PersistentVolumeClaim mounted at /mnt/models/<claim>."""

    claim: str

    @property
    def name(self) -> str:
        return dns_name("pvc", self.claim)

    @property
    def mount_path(self) -> str:
        return f"{consts.MODELS_MOUNT_ROOT}/{self.claim}"


def pod_path(uri: str, field: str) -> tuple[str, Volume | None]:
    """Where a URI is read inside the Ray pods: pvc://claim/p -> /mnt/models/claim/p plus the volume;
    anything else (s3://, gs://, hf://, pkg://, paths baked into the image) passes through."""
    if not uri.startswith("pvc://"):
        return uri, None
    claim, _, rest = uri[len("pvc://"):].partition("/")
    if not _CLAIM.match(claim):
        raise UserError(f"{uri!r} does not start with a valid PersistentVolumeClaim name (pvc://<claim>/<path>)",
                        field=field)
    volume = Volume(claim)
    return (f"{volume.mount_path}/{rest}".rstrip("/") if rest else volume.mount_path), volume


def spec_uris(spec: FusionRecommenderSpec) -> list[str]:
    """Every URI the spec names (the fields of URI_FIELDS that are set), in URI_FIELDS order."""
    found: list[str] = []

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if node is None:
            return
        if not path:
            found.append(node)
        elif path[0] == "*":
            for item in node:
                walk(item, path[1:])
        elif isinstance(node, dict):
            walk(node.get(path[0]), path[1:])

    document = spec.model_dump(by_alias=True, mode="json")
    for path in URI_FIELDS:
        walk(document, path)
    return found


def artifact_uri(storage_uri: str, name: str, version: str) -> str:
    """`<spec.storage.uri>/<metadata.name>/<version>`: where the RayJob writes and serving reads."""
    return f"{storage_uri.rstrip('/')}/{name}/{version}"


def live_uri(manifest: Manifest) -> str | None:
    """Where item changes and events live when serving.live turns either on: the spec's uri, else the folder
    `_live` beside the versions (`<storage.uri>/<name>/_live`); None when both are off."""
    spec = manifest.spec
    live = spec.serving.live
    if not (live.items or live.events):
        return None
    return live.uri or f"{spec.storage.uri.rstrip('/')}/{manifest.metadata.name}/{LIVE_FOLDER}"


def check_cluster_live(manifest: Manifest) -> None:
    """The serving pods write item changes and events, and every replica (and the retraining job) must read them:
    a path inside one pod's image would lose them with the pod."""
    uri = live_uri(manifest)
    if uri is not None and not uri.startswith(SHARED_SCHEMES):
        raise UserError(f"{uri!r} is not shared storage; every serving replica writes and reads the live catalogue "
                        "and events there, and the retraining job reads them", field="spec.serving.live.uri",
                        fix="use pvc://<claim>/<path>, s3:// or gs:// (or leave it out: <storage.uri>/<name>/_live)")
    if uri is not None:
        pod_path(uri, "spec.serving.live.uri")


def container_resources(cpu: str | float, memory: str, gpu: float) -> dict[str, Any]:
    """Requests equal limits (Guaranteed QoS for serving); GPUs must be whole on a pod."""
    amounts: dict[str, Any] = {"cpu": str(cpu), "memory": memory}
    if gpu > 0:
        amounts["nvidia.com/gpu"] = str(math.ceil(gpu))
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _ports(serve: bool) -> list[dict[str, Any]]:
    ports = [{"name": "metrics", "containerPort": consts.RAY_METRICS_PORT, "protocol": "TCP"}]
    if serve:
        ports.append({"name": "serve", "containerPort": consts.SERVE_PORT, "protocol": "TCP"})
    return ports


def pod_template(
    *,
    config: OperatorConfig,
    container_name: str,
    resources: dict[str, Any],
    pod_labels: dict[str, str],
    volumes: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
    head: bool,
    serve: bool,
    env: list[dict[str, Any]] | None = None,
    env_from: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    ports = _ports(serve)
    if head:
        ports = [{"name": "gcs-server", "containerPort": 6379, "protocol": "TCP"},
                 {"name": "dashboard", "containerPort": 8265, "protocol": "TCP"},
                 {"name": "client", "containerPort": 10001, "protocol": "TCP"}, *ports]
    container: dict[str, Any] = {
        "name": container_name,
        "image": config.ray_image,
        "imagePullPolicy": config.image_pull_policy,
        "resources": resources,
        "ports": ports,
    }
    if env:
        container["env"] = env
    if env_from:
        container["envFrom"] = env_from
    if mounts:
        container["volumeMounts"] = mounts
    spec: dict[str, Any] = {"containers": [container]}
    if volumes:
        spec["volumes"] = volumes
    return {"metadata": {"labels": pod_labels}, "spec": spec}


def pvc_volumes(found: list[Volume], *, read_only: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, container mounts) for each distinct claim, in first-seen order."""
    unique = list(dict.fromkeys(found))
    volumes = [{"name": v.name, "persistentVolumeClaim": {"claimName": v.claim, "readOnly": read_only}}
               for v in unique]
    mounts = [{"name": v.name, "mountPath": v.mount_path, "readOnly": read_only} for v in unique]
    return volumes, mounts


def check_cluster_spec(name: str, storage_uri: str, auth: AuthSpec) -> None:
    """What a spec needs on a cluster beyond what the CLI needs; raises UserError naming the field.

    Auth is on by default: the serving pods read their tokens from `serving.auth.secretRef` (a Secret with a
    `tokens` key, mounted), so a FusionRecommender needs it unless `serving.auth.disabled` is true. A local
    tokenFile or tokenEnv names nothing inside the pods.
    """
    if not _DNS_LABEL.match(name) or len(name) > 47:
        raise UserError(f"{name!r} must be a DNS-1035 label (a lowercase letter first) of at most 47 characters, "
                        "as KubeRay requires of the RayService named after it", field="metadata.name")
    if not storage_uri.startswith(SHARED_SCHEMES):
        raise UserError(
            f"{storage_uri!r} is not shared storage; the training RayJob and the serving RayService run in "
            "different pods, so artifacts must live on pvc://<claim>/<path>, s3:// or gs://",
            field="spec.storage.uri",
        )
    pod_path(storage_uri, "spec.storage.uri")
    for value, field_name in ((auth.write_token_file, "writeTokenFile"), (auth.write_token_env, "writeTokenEnv")):
        if value:
            raise UserError(f"spec.serving.auth.{field_name} names a file or variable of this machine; the serving "
                            "pods read their write tokens from the secretRef Secret's `write-tokens` key",
                            field=f"spec.serving.auth.{field_name}",
                            fix="remove it and add the write tokens to the Secret: kubectl create secret generic "
                                "<name> --from-literal=tokens=... --from-literal=write-tokens=...")
    if not (auth.secret_ref or auth.disabled):
        raise UserError(
            "spec.serving.auth.secretRef is required on a cluster: the API is served with bearer-token auth, and "
            "the serving pods read their tokens from that Secret", field="spec.serving.auth.secretRef",
            fix="kubectl create secret generic <name> --from-literal=tokens=$(openssl rand -hex 32), then set "
                "spec.serving.auth.secretRef: <name>; or set spec.serving.auth.disabled: true to serve without "
                "auth (only behind an ingress that authenticates)")


def check_cluster_training(spec: FusionRecommenderSpec) -> None:
    """What the training RayJob cannot do yet that `fusionrec run` can; raises UserError naming the field and
    the fix (the pydantic spec accepts both, since the CLI supports them)."""
    if spec.evaluation.select == "best" and len(spec.encoders) >= 2:
        # train/candidates.py: with select best, the job fits each encoder alone in the Ray driver once the
        # workers are done; on a cluster the driver is the RayJob's head pod (builders/training.py: no GPU, the
        # operator's small headCpu/headMemory), which cannot train a language model.
        raise UserError(
            "spec.evaluation.select: best is not supported on a cluster yet: the training job fits each encoder "
            "alone in the Ray driver after the workers finish, and on a cluster the driver runs on the RayJob's "
            "head pod (no GPU, little CPU and memory)", field="spec.evaluation.select",
            fix="set spec.evaluation.select: fused (the report still says when one encoder alone validated "
                "better), or run the manifest locally with `fusionrec run`")
    data = spec.data
    if data.dataset is not None and data.dataset not in consts.BUILT_IN_DATASETS and not data.path \
            and not data.interactions:
        raise UserError(
            f"spec.data.dataset {data.dataset!r} is not a built-in dataset ({', '.join(consts.BUILT_IN_DATASETS)}) "
            "and spec.data names no files: the training pods have no prepared-data home to find it in",
            field="spec.data.dataset",
            fix=f"copy the prepared dataset (the folder `fusionrec data prepare {data.dataset} --out FOLDER` wrote) "
                "to object storage (`fusionrec data push NAME s3://bucket/prefix`) or a PersistentVolumeClaim and set "
                "spec.data.path to its URI (s3://, gs:// or pvc://<claim>/<folder>), or give "
                "spec.data.interactions (and items, users) on shared storage")
