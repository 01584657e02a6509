"""The serving child: one KubeRay RayService per FusionRecommender.

Canary traffic is split inside the Serve application (one router, one deployment per model version), so
a rollout step only rewrites `serveConfigV2` in place; the Ray cluster spec stays byte-identical across
versions, which is what lets KubeRay apply the change without starting a second cluster.

Contract with fusionrec.serving: one application `fusionrec` at `/`, built by
`fusionrec.serving.app:build_app` from `args`, an `AppArgs` (`fusionrec.serving.config`, the only serving
module the operator imports: it needs neither Ray nor torch) written by `AppArgs.document()`; weights are
checked by the same `check_weights` the application and its router use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from fusionrec.operator import consts
from fusionrec.operator.builders.common import (
    artifact_uri,
    container_resources,
    labels,
    live_uri,
    pod_path,
    pod_template,
    pvc_volumes,
)
from fusionrec.operator.builders.credentials import pod_credentials
from fusionrec.operator.config import OperatorConfig
from fusionrec.serving.config import MOUNTED_WRITE_TOKENS_FILE, AppArgs, check_weights
from fusionrec.spec import Manifest


@dataclass(frozen=True)
class ServedVersion:
    version: str
    weight: int


def serving_args(manifest: Manifest, versions: Sequence[ServedVersion]) -> AppArgs:
    """The `args` of the Serve application; artifact paths are as the Ray pods see them.

    The weights here are only where a freshly built router starts (the stable version, listed first, takes
    everything); the live split is the router's `user_config` (see `build_serve_config`). So `args` change only
    when the set of versions does, and a canary step never makes Serve rebuild the application.
    """
    check_weights((v.version, v.weight) for v in versions)
    spec = manifest.spec
    serving = spec.serving.model_dump(by_alias=True, mode="json")
    if spec.serving.auth.secret_ref:
        # The pods cannot read Secrets through the API; the Secret is mounted and its file handed over.
        serving["auth"]["tokenFile"] = f"{consts.AUTH_DIR}/{consts.AUTH_TOKENS_KEY}"
        # The Secret's optional write-tokens key; absent, its file is too, and the read tokens may write.
        serving["auth"]["writeTokenFile"] = MOUNTED_WRITE_TOKENS_FILE  # the one path allowed to be missing
    live = live_uri(manifest)
    if live is not None:  # a claim is mounted read-write at LIVE_MOUNT, at the live folder (build_rayservice)
        serving["live"]["uri"] = consts.LIVE_MOUNT if live.startswith("pvc://") else live
    entries = []
    for position, served in enumerate(versions):
        artifact, _ = pod_path(artifact_uri(spec.storage.uri, manifest.metadata.name, served.version),
                               "spec.storage.uri")
        entries.append({"version": served.version, "artifact": artifact, "weight": 100 if position == 0 else 0})
    return AppArgs.model_validate({"name": manifest.metadata.name, "versions": entries, "serving": serving})


def build_serve_config(manifest: Manifest, versions: Sequence[ServedVersion]) -> dict[str, Any]:
    """The serveConfigV2 document (before it is dumped to the YAML string KubeRay expects).

    The canary split lives in the router's `user_config`, which Serve applies with `reconfigure`: moving
    traffic restarts no replica and reloads no model.
    """
    return {"applications": [{
        "name": consts.SERVE_APP_NAME,
        "route_prefix": "/",
        "import_path": consts.SERVE_IMPORT_PATH,
        "args": serving_args(manifest, versions).document(),
        "deployments": [{"name": consts.SERVE_INGRESS_DEPLOYMENT,
                         "user_config": {"weights": {v.version: v.weight for v in versions}}}],
    }]}


def _mount_live_claim(uri: str, volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]) -> None:
    """serving.live.uri on a claim: its folder mounted read-write at LIVE_MOUNT (a subPath, which the kubelet
    creates), while the artifacts stay read-only. The same claim as the artifacts' is one volume, writable at the
    pod level, with the artifacts' own mount still read-only."""
    _, volume = pod_path(uri, "spec.serving.live.uri")
    assert volume is not None  # a pvc:// URI
    folder = uri[len("pvc://"):].partition("/")[2].strip("/")
    existing = next((v for v in volumes if v["name"] == volume.name), None)
    if existing is None:
        volumes.append({"name": volume.name, "persistentVolumeClaim": {"claimName": volume.claim, "readOnly": False}})
    else:
        existing["persistentVolumeClaim"]["readOnly"] = False
    mounts.append({"name": volume.name, "mountPath": consts.LIVE_MOUNT, "readOnly": False,
                   **({"subPath": folder} if folder else {})})


def build_rayservice(manifest: Manifest, versions: Sequence[ServedVersion], config: OperatorConfig) -> dict[str, Any]:
    name = manifest.metadata.name
    spec = manifest.spec
    _, storage_volume = pod_path(spec.storage.uri, "spec.storage.uri")
    volumes, mounts = pvc_volumes([storage_volume] if storage_volume else [], read_only=True)
    if spec.serving.auth.secret_ref:
        # optional: the write-tokens key may be absent (then so is its file); a Secret without `tokens` still
        # fails the replicas, which refuse to start without their token file.
        volumes.append({"name": "auth-tokens", "secret": {
            "secretName": spec.serving.auth.secret_ref,
            "items": [{"key": key, "path": key} for key in (consts.AUTH_TOKENS_KEY, consts.AUTH_WRITE_TOKENS_KEY)],
            "optional": True,
        }})
        mounts.append({"name": "auth-tokens", "mountPath": consts.AUTH_DIR, "readOnly": True})
    live = live_uri(manifest)
    if live is not None and live.startswith("pvc://"):
        _mount_live_claim(live, volumes, mounts)
    credentials = pod_credentials(spec)  # the replicas fetch their artifacts from spec.storage.uri
    volumes += credentials.volumes
    mounts += credentials.mounts
    pod_labels = labels(name, "serving")
    res = spec.serving.resources
    head = pod_template(config=config, container_name="ray-head",
                        resources=container_resources(config.head_cpu, config.head_memory, 0),
                        pod_labels=pod_labels, volumes=volumes, mounts=mounts, head=True, serve=True,
                        env=credentials.env, env_from=credentials.env_from)
    worker = pod_template(config=config, container_name="ray-worker",
                          resources=container_resources(res.cpu, res.memory, res.gpu),
                          pod_labels=pod_labels, volumes=volumes, mounts=mounts, head=False, serve=True,
                          env=credentials.env, env_from=credentials.env_from)
    serve_config = yaml.safe_dump(build_serve_config(manifest, versions), sort_keys=False)
    return {
        "apiVersion": f"{consts.RAY_GROUP}/{consts.RAY_VERSION}",
        "kind": consts.RAYSERVICE_KIND,
        "metadata": {"name": name, "namespace": manifest.metadata.namespace, "labels": labels(name, "serving")},
        "spec": {
            "serveConfigV2": serve_config,
            "rayClusterConfig": {
                "enableInTreeAutoscaling": True,
                "headGroupSpec": {
                    "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                    "template": head,
                },
                "workerGroupSpecs": [{
                    "groupName": "serve",
                    "replicas": spec.serving.min_replicas,
                    "minReplicas": spec.serving.min_replicas,
                    "maxReplicas": spec.serving.max_replicas,
                    "rayStartParams": {},
                    "template": worker,
                }],
            },
        },
    }
