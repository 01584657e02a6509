"""Autoscaling (issue 17): the CR's `serving` fields make one autoscaling config, the same whether
`fusionrec serve` or the operator's RayService deploys it, and on a live Serve a burst scales the model
deployment above minReplicas (never past maxReplicas) and back down. bench/autoscaling.py measures the same
on a real model and a load ramp (bench/results/autoscaling.md)."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import yaml

from fusionrec.cli.serve_cmd import local_args
from fusionrec.operator.builders.serving import ServedVersion, build_rayservice
from fusionrec.operator.config import OperatorConfig
from fusionrec.serving.config import AutoscalingTuning, autoscaling_config, model_deployment_name, parse_args
from fusionrec.spec import Manifest

# Every autoscaling field away from its default, so a field that one path drops or renames shows.
SERVING = {"minReplicas": 2, "maxReplicas": 5, "targetOngoingRequests": 3.5, "upscaleDelayS": 7,
           "downscaleDelayS": 45}


def manifest_with(serving: dict, *, version: str = "v2", uri: str = "/models", spec: dict | None = None) -> Manifest:
    spec = dict(spec or {"version": version, "encoders": [{"name": "a", "source": "/x"}]})
    spec.update(serving=serving, storage={"uri": uri})
    return Manifest.model_validate({"apiVersion": "fusionrec.io/v1alpha1", "kind": "FusionRecommender",
                                    "metadata": {"name": "shop-recs", "namespace": "default"}, "spec": spec})


def rayservice_args(manifest: Manifest, version: str) -> dict:
    """The application args in the operator's RayService document, read back from its serveConfigV2 YAML."""
    service = build_rayservice(manifest, [ServedVersion(version, 100)], OperatorConfig())
    return yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]


def served_config(args) -> dict:
    parsed = parse_args(args)
    return autoscaling_config(parsed.serving, parsed.autoscaling)


def test_fusionrec_serve_and_the_rayservice_carry_the_same_autoscaling_config(monkeypatch, tmp_path):
    manifest = manifest_with(SERVING)
    # `fusionrec serve` reads the spec the artifact was trained with; the artifact itself is not needed here.
    monkeypatch.setattr("fusionrec.artifact.load_artifact",
                        lambda path, verify=True: SimpleNamespace(spec=manifest.spec, version="v2"))
    local = local_args(tmp_path, token_env="FUSIONREC_TEST_TOKENS")
    cluster = rayservice_args(manifest, "v2")

    expected = autoscaling_config(manifest.spec.serving)
    assert expected == {"min_replicas": 2, "max_replicas": 5, "initial_replicas": 2, "target_ongoing_requests": 3.5,
                        "upscale_delay_s": 7.0, "downscale_delay_s": 45.0}
    assert served_config(local.document()) == served_config(cluster) == expected
    assert "autoscaling" not in cluster  # the operator leaves the tuning at Ray's defaults, as `serve` does


def test_the_rayservice_worker_group_ranges_with_the_same_fields():
    group = build_rayservice(manifest_with(SERVING), [ServedVersion("v2", 100)],
                             OperatorConfig())["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert (group["minReplicas"], group["maxReplicas"]) == (2, 5)


def test_the_built_application_deploys_the_rayservice_config_on_the_model_deployment():
    """Through `build_app` (no cluster): the model deployment's bound config is the fields' config, and the
    tuning, when args carry one, changes only its own keys."""
    pytest.importorskip("ray.serve")
    from ray.serve.config import AutoscalingConfig

    from fusionrec.ray_compat import bound_autoscaling
    from fusionrec.serving.app import build_app

    manifest = manifest_with({**SERVING, "auth": {"tokenEnv": "FUSIONREC_TEST_TOKENS"}})
    args = rayservice_args(manifest, "v2")
    model = model_deployment_name("v2")
    expected = AutoscalingConfig(**autoscaling_config(manifest.spec.serving)).model_dump(mode="json")
    assert bound_autoscaling(build_app(args))[model] == expected
    tuned = bound_autoscaling(build_app({**args, "autoscaling": {"metricsIntervalS": 0.5,
                                                                 "lookBackPeriodS": 2}}))[model]
    assert tuned == {**expected, "metrics_interval_s": 0.5, "look_back_period_s": 2.0}


# --- live: a burst scales the model deployment up and it comes back down ------------------------------------------

# downscaleDelayS outlasts a replica's start: a lull in a burst (requests on a tiny model finish in
# milliseconds) must not cancel the replica being started, as a 2 s delay did on a loaded machine.
LIVE_SERVING = {"minReplicas": 1, "maxReplicas": 2, "targetOngoingRequests": 1, "upscaleDelayS": 0,
                "downscaleDelayS": 30, "maxBatchSize": 4, "batchWaitTimeoutMs": 2, "resources": {"cpu": "0.25"},
                "auth": {"tokenEnv": "FUSIONREC_TEST_TOKENS"}}
LIVE_TUNING = {"metricsIntervalS": 0.5, "lookBackPeriodS": 2}
IN_FLIGHT = 16  # calls kept in flight during the burst: 16x the per-replica target
# Bounds, not durations: the autoscaler decides within ~2 s; a new replica (a Ray worker importing torch and
# loading the artifact) takes ~15 s on a quiet 2-core machine, 30 s or more on a busy one.
UP_WAIT_S, DOWN_WAIT_S = 90.0, 90.0


def replica_states(model: str) -> dict[str, int]:
    from ray import serve

    from fusionrec.serving.local import APP_NAME

    deployment = serve.status().applications[APP_NAME].deployments[model]
    return {str(getattr(state, "value", state)): int(n) for state, n in deployment.replica_states.items()}


@pytest.mark.ray
def test_a_burst_scales_the_model_deployment_up_within_max_and_back_down(artifacts, monkeypatch):
    pytest.importorskip("ray.serve")

    from fusionrec.artifact import load_artifact
    from fusionrec.ray_compat import deploy_apps, deployed_deployments
    from fusionrec.serving.local import APP_NAME, start_local_serve, stop_local_serve, wait_until_running

    monkeypatch.setenv("FUSIONREC_TEST_TOKENS", "autoscaling-test-token")
    workdir = Path(tempfile.mkdtemp(prefix="fra-"))  # short: Ray's socket paths must stay under 107 bytes
    store = workdir / "store"
    (store / "shop-recs").mkdir(parents=True)
    (store / "shop-recs" / "v1").symlink_to(Path(artifacts["v1"]).resolve(), target_is_directory=True)
    spec = load_artifact(artifacts["v1"], verify=False).spec.model_dump(by_alias=True, mode="json", exclude_none=True)
    manifest = manifest_with(LIVE_SERVING, uri=str(store), spec=spec)
    # What the operator writes into the RayService, plus the fast tuning, applied the way KubeRay applies it.
    document = yaml.safe_load(build_rayservice(manifest, [ServedVersion("v1", 100)],
                                               OperatorConfig())["spec"]["serveConfigV2"])
    document["applications"][0]["args"]["autoscaling"] = LIVE_TUNING
    model = model_deployment_name("v1")
    items = [f"i{i}" for i in range(40)]

    t0 = time.monotonic()
    local = start_local_serve(workdir, num_cpus=4)
    try:
        deploy_apps(document)
        wait_until_running(120)
        timeline: list[tuple[float, dict[str, int], int | None]] = []  # (s since start, states, target): failures

        def sample() -> dict[str, int]:
            states = replica_states(model)
            timeline.append((round(time.monotonic() - t0, 1), states,
                             deployed_deployments(APP_NAME)[model].get("target_num_replicas")))
            return states

        deployed = deployed_deployments(APP_NAME)[model]["deployment_config"]["autoscaling_config"]
        want = autoscaling_config(manifest.spec.serving, AutoscalingTuning.model_validate(LIVE_TUNING))
        assert {key: deployed[key] for key in want} == want, json.dumps(deployed)
        assert replica_states(model) == {"RUNNING": 1}

        # Over HTTP through the ingress, as clients call it: a DeploymentHandle held by this process would keep
        # pushing metrics after the local Ray is stopped, into the next test's Ray session.
        stop = threading.Event()
        answered: list[bool] = []

        def client(n: int) -> None:
            rng = random.Random(n)  # a new history each call: no cache answers it, every call reaches a replica
            with httpx.Client(base_url=local.url, timeout=30,
                              headers={"Authorization": "Bearer autoscaling-test-token"}) as http:
                while not stop.is_set():
                    response = http.post("/v1/recommend", json={"history": rng.sample(items, 6), "k": 5})
                    answered.append(response.status_code == 200 and "items" in response.json())

        peak, states = 0, {}
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            futures = [pool.submit(client, n) for n in range(IN_FLIGHT)]
            deadline = time.monotonic() + UP_WAIT_S
            try:
                while time.monotonic() < deadline:
                    states = sample()
                    peak = max(peak, sum(states.values()))
                    if states.get("RUNNING", 0) >= 2:
                        break
                    time.sleep(0.5)
            finally:
                stop.set()
            for future in futures:
                future.result()
        assert states.get("RUNNING", 0) == 2, f"not scaled up within {UP_WAIT_S:g} s: {timeline}"
        assert peak <= LIVE_SERVING["maxReplicas"], timeline
        assert answered and all(answered)

        deadline = time.monotonic() + DOWN_WAIT_S
        while time.monotonic() < deadline:
            states = sample()
            if states == {"RUNNING": 1}:
                break
            time.sleep(0.5)
        assert states == {"RUNNING": 1}, f"not back at minReplicas {DOWN_WAIT_S:g} s after the burst: {timeline}"
    finally:
        stop_local_serve()
        shutil.rmtree(workdir, ignore_errors=True)
