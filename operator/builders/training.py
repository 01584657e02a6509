"""The training children of one version: the manifest ConfigMap and the KubeRay RayJob.

Contract with fusionrec.train: the RayJob runs
`python -m fusionrec.train --manifest /etc/fusionrec/manifest.yaml --output <artifact dir>`, where the
manifest is the FusionRecommender rendered for the pod (pvc:// URIs rewritten to their mount paths under
/mnt/models, so the trainer only ever sees local paths or object-store URIs). A scheduled retrain of a shop with
serving.live.events on adds `--refresh`: the job first publishes the base data + the feedback events + the live
catalogue as a new dataset under serving.live.uri (fusionrec.data.refresh) and trains on it.
"""

from __future__ import annotations

import shlex
from typing import Any

import yaml

from fusionrec.operator import consts
from fusionrec.operator.builders.common import (
    URI_FIELDS,
    Volume,
    artifact_uri,
    container_resources,
    labels,
    live_uri,
    manifest_configmap_name,
    pod_path,
    pod_template,
    pvc_volumes,
    rayjob_name,
)
from fusionrec.operator.builders.credentials import pod_credentials
from fusionrec.operator.config import OperatorConfig
from fusionrec.spec import Manifest


def _rewrite(node: Any, path: tuple[str, ...], where: str, found: list[Volume]) -> None:
    if node is None or not path:
        return
    head, rest = path[0], path[1:]
    if head == "*":
        for index, item in enumerate(node):
            _rewrite(item, rest, f"{where}[{index}]", found)
        return
    if not isinstance(node, dict) or node.get(head) is None:
        return
    if rest:
        _rewrite(node[head], rest, f"{where}.{head}", found)
        return
    local, volume = pod_path(node[head], f"{where}.{head}")
    node[head] = local
    if volume is not None:
        found.append(volume)


def render_for_pod(manifest: Manifest, version: str) -> tuple[dict[str, Any], list[Volume]]:
    """The manifest document the pods read, for `version`, and the claims its paths need mounted."""
    spec = manifest.spec.model_dump(by_alias=True, mode="json")
    spec["version"] = version
    live = live_uri(manifest)
    if live is not None:  # resolved here, so the retraining job reads the events where serving writes them
        spec["serving"]["live"]["uri"] = live
    found: list[Volume] = []
    for path in URI_FIELDS:
        _rewrite(spec, path, "spec", found)
    document = {
        "apiVersion": f"{consts.GROUP}/{consts.VERSION}",
        "kind": consts.KIND,
        "metadata": {"name": manifest.metadata.name, "namespace": manifest.metadata.namespace},
        "spec": spec,
    }
    return document, found


def build_manifest_configmap(manifest: Manifest, version: str) -> dict[str, Any]:
    """ConfigMap `<name>-<version>-manifest` holding `manifest.yaml`, mounted at /etc/fusionrec."""
    name = manifest.metadata.name
    document, _ = render_for_pod(manifest, version)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": manifest_configmap_name(name, version),
            "namespace": manifest.metadata.namespace,
            "labels": labels(name, "train", version),
        },
        "data": {consts.MANIFEST_KEY: yaml.safe_dump(document, sort_keys=False)},
    }


def trains_on_feedback(manifest: Manifest, version: str) -> bool:
    """Whether `version` trains on the refreshed data (base + feedback events + live catalogue): a scheduled
    retrain (its version is derived, never spec.version) of a shop that records events, as `fusionrec retrain`
    does; a spec.version change trains on the spec's data, as `fusionrec run` does."""
    return manifest.spec.serving.live.events and version != manifest.spec.version


def training_entrypoint(manifest: Manifest, version: str) -> str:
    output, _ = pod_path(artifact_uri(manifest.spec.storage.uri, manifest.metadata.name, version), "spec.storage.uri")
    manifest_file = f"{consts.MANIFEST_DIR}/{consts.MANIFEST_KEY}"
    refresh = " --refresh" if trains_on_feedback(manifest, version) else ""  # the refresh step, then the training
    return f"python -m fusionrec.train --manifest {manifest_file} --output {shlex.quote(output)}{refresh}"


def build_rayjob(manifest: Manifest, version: str, config: OperatorConfig) -> dict[str, Any]:
    """A RayJob that trains, evaluates, compiles and writes `version`'s artifact, then tears its cluster down.

    One worker pod per Ray Train worker (`training.workers`), sized by cpusPerWorker/gpusPerWorker; the
    head only hosts the driver (num-cpus 0 keeps train workers off it). Both get the object-storage credentials
    (builders/credentials.py): the workers read data and checkpoints, the driver publishes the version.
    """
    name = manifest.metadata.name
    training = manifest.spec.training
    _, claims = render_for_pod(manifest, version)
    volumes, mounts = pvc_volumes(claims, read_only=False)
    configmap = manifest_configmap_name(name, version)
    volumes.append({"name": "manifest", "configMap": {"name": configmap}})
    mounts.append({"name": "manifest", "mountPath": consts.MANIFEST_DIR, "readOnly": True})
    credentials = pod_credentials(manifest.spec)
    volumes += credentials.volumes
    mounts += credentials.mounts
    pod_labels = labels(name, "train", version)

    head = pod_template(config=config, container_name="ray-head",
                        resources=container_resources(config.head_cpu, config.head_memory, 0),
                        pod_labels=pod_labels, volumes=volumes, mounts=mounts, head=True, serve=False,
                        env=credentials.env, env_from=credentials.env_from)
    worker = pod_template(config=config, container_name="ray-worker",
                          resources=container_resources(training.cpus_per_worker, config.train_worker_memory,
                                                        training.gpus_per_worker),
                          pod_labels=pod_labels, volumes=volumes, mounts=mounts, head=False, serve=False,
                          env=credentials.env, env_from=credentials.env_from)
    return {
        "apiVersion": f"{consts.RAY_GROUP}/{consts.RAY_VERSION}",
        "kind": consts.RAYJOB_KIND,
        "metadata": {
            "name": rayjob_name(name, version),
            "namespace": manifest.metadata.namespace,
            "labels": pod_labels,
        },
        "spec": {
            "entrypoint": training_entrypoint(manifest, version),
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": config.job_ttl_seconds,
            "rayClusterSpec": {
                "headGroupSpec": {
                    "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                    "template": head,
                },
                "workerGroupSpecs": [{
                    "groupName": "train",
                    "replicas": training.workers,
                    "minReplicas": training.workers,
                    "maxReplicas": training.workers,
                    "rayStartParams": {},
                    "template": worker,
                }],
            },
        },
    }
