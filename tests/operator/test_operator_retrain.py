"""Re-fusion on the cluster: a scheduled retrain of a shop that records feedback events runs the refresh step (base
data + events + live catalogue, `fusionrec.data.refresh`) in its RayJob before training; a spec.version change
trains on the spec's data, as `fusionrec run` does on a laptop."""

from __future__ import annotations

import copy
import shlex
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from fusionrec.operator import consts
from fusionrec.operator.builders import build_manifest_configmap, build_rayjob
from fusionrec.operator.builders.training import trains_on_feedback
from fusionrec.operator.config import OperatorConfig
from fusionrec.operator.controller import parse_manifest
from fusionrec.operator.cron import retrain_version
from fusionrec.spec import VERSION_MAX, manifest_from_dict

from test_operator_controller import Harness, serve_v1

CONFIG = OperatorConfig(ray_image="registry.example/fusionrec/ray-runtime:0.1.0")
SCHEDULED = retrain_version("v3", datetime(2025, 1, 2, 3, 0, tzinfo=UTC))
LIVE_POD_PATH = "/mnt/models/fusionrec-artifacts/runs/shop-recs/_live"


def _live(design_cr: dict[str, Any], **live: Any) -> dict[str, Any]:
    doc = copy.deepcopy(design_cr)
    doc["spec"]["serving"]["live"] = live
    return doc


def _mounts(job: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    cluster = job["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    return [(pod["spec"]["containers"][0]["name"], m) for pod in pods for m in pod["spec"]["containers"][0]
            ["volumeMounts"]]


def test_a_scheduled_retrain_with_events_refreshes_the_data_before_training(design_cr, rayjob_schema):
    from test_operator_builders import validate_kuberay

    manifest = parse_manifest(_live(design_cr, items=True, events=True))
    job = build_rayjob(manifest, SCHEDULED, CONFIG)
    validate_kuberay(job, rayjob_schema, "rayClusterSpec")
    assert SCHEDULED == "v3-r202501020300" and len(SCHEDULED) <= VERSION_MAX
    assert shlex.split(job["spec"]["entrypoint"]) == [
        "python", "-m", "fusionrec.train", "--manifest", "/etc/fusionrec/manifest.yaml",
        "--output", f"/mnt/models/fusionrec-artifacts/runs/shop-recs/{SCHEDULED}", "--refresh"]
    # The job reads the events where serving writes them, and publishes the refreshed dataset beside them: the
    # live folder's claim is mounted writable in the driver (head) and every worker, at the path the manifest names.
    document = yaml.safe_load(build_manifest_configmap(manifest, SCHEDULED)["data"][consts.MANIFEST_KEY])
    rendered = manifest_from_dict(document)
    assert rendered.spec.version == SCHEDULED and rendered.spec.serving.live.uri == LIVE_POD_PATH
    claim_mounts = [(pod, m) for pod, m in _mounts(job) if m["mountPath"] == "/mnt/models/fusionrec-artifacts"]
    assert {pod for pod, _ in claim_mounts} == {"ray-head", "ray-worker"}
    assert all(m["readOnly"] is False for _, m in claim_mounts)


def test_a_spec_version_change_trains_on_the_spec_data(design_cr):
    manifest = parse_manifest(_live(design_cr, events=True))
    assert not trains_on_feedback(manifest, manifest.spec.version)
    assert "--refresh" not in build_rayjob(manifest, manifest.spec.version, CONFIG)["spec"]["entrypoint"]


@pytest.mark.parametrize("live", [{}, {"items": True}], ids=["live-off", "items-only"])
def test_without_recorded_events_a_scheduled_retrain_trains_as_before(design_cr, live):
    manifest = parse_manifest(_live(design_cr, **live))
    assert not trains_on_feedback(manifest, SCHEDULED)
    assert shlex.split(build_rayjob(manifest, SCHEDULED, CONFIG)["spec"]["entrypoint"])[-1] != "--refresh"


def test_in_object_storage_the_job_reads_the_bucket_live_folder(design_cr, rayjob_schema):
    from test_operator_builders import validate_kuberay

    doc = _live(design_cr, events=True)
    doc["spec"]["storage"] = {"uri": "s3://bucket/models"}
    manifest = parse_manifest(doc)
    job = build_rayjob(manifest, SCHEDULED, CONFIG)
    validate_kuberay(job, rayjob_schema, "rayClusterSpec")
    assert job["spec"]["entrypoint"].endswith(f"--output s3://bucket/models/shop-recs/{SCHEDULED} --refresh")
    document = yaml.safe_load(build_manifest_configmap(manifest, SCHEDULED)["data"][consts.MANIFEST_KEY])
    assert document["spec"]["serving"]["live"]["uri"] == "s3://bucket/models/shop-recs/_live"


@pytest.mark.asyncio
async def test_the_schedule_fires_a_refreshing_retrain(kube_emulator, design_cr):
    h = Harness(*kube_emulator)
    try:
        cr = copy.deepcopy(design_cr)
        cr["spec"]["version"] = "v1"
        cr["spec"]["training"]["schedule"] = "0 13 * * *"
        cr["spec"]["serving"]["live"] = {"items": True, "events": True}
        await serve_v1(h, cr)
        first = h.get(consts.RAYJOBS, "shop-recs-train-v1")
        assert first is not None and "--refresh" not in first["spec"]["entrypoint"]
        h.now = datetime(2025, 1, 1, 13, 0, 30, tzinfo=UTC)
        status = await h.reconcile()
        assert status.candidate_version == "v1-r202501011300"
        job = h.get(consts.RAYJOBS, "shop-recs-train-v1-r202501011300")
        assert job is not None and shlex.split(job["spec"]["entrypoint"])[-1] == "--refresh"
    finally:
        await h.kube.close()
