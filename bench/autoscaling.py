"""Autoscaling, live (issue 17): under a load ramp the model deployment scales from the CR's `minReplicas` up
(never past `maxReplicas`) and back down once the load stops.

    PYTHONSAFEPATH=1 HF_HUB_OFFLINE=1 nice .venv/bin/python bench/autoscaling.py [--step-seconds 30] \\
        [--ramp 1,4,16,32] [--down-wait 180]

What runs is what the operator would run: a manifest (the bench model's spec with the `serving` section below)
goes through the operator's own builder (`build_rayservice`), and the application in its `serveConfigV2` is
deployed as is, the way KubeRay applies it, to a local Ray Serve on loopback, with one addition: the
autoscaling tuning (`AppArgs.autoscaling`: how often replicas report and how far back the autoscaler looks),
which the operator leaves at Ray's defaults (10 s / 30 s) and which this bench shortens so that the run takes
minutes. The `serving` fields' part of the config (replica range, target, delays) is the CR's, unchanged.

Checked and written down before any load:
- `autoscaling_config(serving)`: what the CR's `serving` fields produce (fusionrec.serving.config);
- the model deployment's autoscaling config in the operator's RayService document (its serveConfigV2 args
  built into the Serve application by `build_app`, the config read off the bound deployment): it must equal
  the one above, key for key;
- the config Serve's controller reports as deployed: it must equal the RayService's except for the tuning keys.

Then a load ramp (`--ramp` concurrencies, `--step-seconds` each, then none) of /v1/recommend requests with
random histories (so the ingress's answer cache cannot absorb them: each one reaches the model deployment),
while the model deployment's replicas are sampled every second with `serve.status()`, until they are back at
`minReplicas` (bounded by `--down-wait`). The model is bench/serve_load.py's (MiniLM-L6 frozen, sequence tower,
MovieLens-100K, one epoch). Writes bench/results/autoscaling.{md,json} with the command and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (its helpers), never the repository root

from serve_load import (  # noqa: E402
    RESULTS,
    TOKEN_ENV,
    VERSION,
    Outcome,
    Request,
    bench_artifact,
    drive,
    ids_of,
    run_and_report,
    start,
)

NAME = "bench"
# The CR's `serving` section: a small replica range that fits two shared cores (half a CPU per replica), a
# small per-replica target so a few clients already ask for a second replica, and short delays.
SERVING = {"minReplicas": 1, "maxReplicas": 3, "targetOngoingRequests": 2, "upscaleDelayS": 2,
           "downscaleDelayS": 10, "maxBatchSize": 16, "batchWaitTimeoutMs": 5, "resources": {"cpu": "0.5"},
           "auth": {"tokenEnv": TOKEN_ENV}}
# The autoscaling tuning (AppArgs.autoscaling, camelCase as in serveConfigV2's args); Ray's defaults: 10 s / 30 s.
TUNING = {"metricsIntervalS": 0.5, "lookBackPeriodS": 3.0}
SAMPLE_S = 1.0


# --- the config: the CR's serving fields, the RayService, what Serve deployed -------------------------------------


def bench_manifest(artifact: Path, store: Path) -> Any:
    """The bench model's spec as a CR, with `SERVING` and a storage URI under which the operator's
    `<uri>/<name>/<version>` is the bench artifact (a symlink)."""
    from fusionrec.artifact import load_artifact
    from fusionrec.spec import Manifest

    (store / NAME).mkdir(parents=True, exist_ok=True)
    link = store / NAME / VERSION
    if not link.exists():
        link.symlink_to(artifact.resolve(), target_is_directory=True)
    spec = load_artifact(artifact, verify=False).spec.model_dump(by_alias=True, mode="json", exclude_none=True)
    spec.update(serving=SERVING, storage={"uri": str(store)})
    return Manifest.model_validate({"metadata": {"name": NAME, "namespace": "default"}, "spec": spec})


def configs(manifest: Any) -> dict[str, Any]:
    """The RayService the operator builds for `manifest`, the application document this bench deploys (its
    serveConfigV2 application plus the tuning), and the model deployment's autoscaling config three ways."""
    import yaml
    from ray.serve.config import AutoscalingConfig

    from fusionrec.operator.builders.serving import ServedVersion, build_rayservice
    from fusionrec.operator.config import OperatorConfig
    from fusionrec.ray_compat import bound_autoscaling
    from fusionrec.serving.app import build_app
    from fusionrec.serving.config import autoscaling_config, model_deployment_name

    service = build_rayservice(manifest, [ServedVersion(VERSION, 100)], OperatorConfig())
    document = yaml.safe_load(service["spec"]["serveConfigV2"])
    model = model_deployment_name(VERSION)
    from_fields = autoscaling_config(manifest.spec.serving)
    from_rayservice = bound_autoscaling(build_app(document["applications"][0]["args"]))[model]
    deployed = json.loads(json.dumps(document))
    deployed["applications"][0]["args"]["autoscaling"] = dict(TUNING)
    bench_bound = bound_autoscaling(build_app(deployed["applications"][0]["args"]))[model]
    return {"model_deployment": model, "from_serving_fields": from_fields,
            "from_serving_fields_full": AutoscalingConfig(**from_fields).model_dump(mode="json"),
            "rayservice": from_rayservice, "bench_bound": bench_bound, "serve_config": deployed,
            "worker_group": service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0] | {"template": "..."}}


def tuning_keys() -> set[str]:
    from fusionrec.serving.config import AutoscalingTuning

    return set(AutoscalingTuning.model_validate(TUNING).model_dump(exclude_none=True))


def config_checks(c: dict[str, Any], deployed: dict[str, Any]) -> list[tuple[str, bool]]:
    tuned = tuning_keys()
    rayservice, fields = c["rayservice"] or {}, c["from_serving_fields"]
    return [
        ("RayService's model deployment carries exactly the serving fields' autoscaling_config",
         rayservice == c["from_serving_fields_full"] and all(rayservice.get(k) == v for k, v in fields.items())),
        ("deployed (controller) = the RayService's, except the tuning keys "
         f"({', '.join(sorted(tuned))})",
         {k: v for k, v in deployed.items() if k not in tuned} == {k: v for k, v in rayservice.items()
                                                                    if k not in tuned}),
        ("deployed (controller) = what this bench's args build",
         {k: deployed.get(k) for k in fields} == {k: (c["bench_bound"] or {}).get(k) for k in fields}
         and all(deployed.get(k) == (c["bench_bound"] or {}).get(k) for k in tuned)),
    ]


# --- load and sampling --------------------------------------------------------------------------------------------


def history_requests(items: list[str], seed: int) -> Any:
    """/v1/recommend with a random history of 5-30 items: each one is new to the ingress's answer cache."""
    rng = random.Random(seed)

    def make(n: int) -> Request:
        return Request("POST", "/v1/recommend", {"history": rng.sample(items, rng.randint(5, 30)), "k": 10},
                       name="history")

    return make


def replica_counts(model: str) -> dict[str, int]:
    """{state: replicas} of the model deployment (RUNNING, STARTING, STOPPING, ...), from `serve.status()`."""
    from ray import serve

    from fusionrec.serving.local import APP_NAME

    application = serve.status().applications.get(APP_NAME)
    deployment = application.deployments.get(model) if application else None
    if deployment is None:
        return {}
    return {str(getattr(state, "value", state)): int(n) for state, n in deployment.replica_states.items()}


def target_replicas(model: str) -> int | None:
    from fusionrec.ray_compat import deployed_deployments
    from fusionrec.serving.local import APP_NAME

    details = deployed_deployments(APP_NAME).get(model)
    return None if details is None else details.get("target_num_replicas")


async def sampler(model: str, t0: float, samples: list[dict[str, Any]], stop: asyncio.Event,
                  concurrency_now: list[int]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        counts = await asyncio.to_thread(replica_counts, model)
        target = await asyncio.to_thread(target_replicas, model)
        samples.append({"t": started - t0, "concurrency": concurrency_now[0], "running": counts.get("RUNNING", 0),
                        "total": sum(counts.values()), "states": counts, "target": target})
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, SAMPLE_S - (time.perf_counter() - started)))
        except TimeoutError:
            pass


async def ramp_and_wait(url: str, model: str, items: list[str], ramp: list[int], step_s: float,
                        down_wait_s: float, min_replicas: int) -> dict[str, Any]:
    samples: list[dict[str, Any]] = []
    outcomes: list[tuple[int, Outcome]] = []  # (concurrency of its step, outcome)
    steps: list[dict[str, float]] = []
    concurrency_now = [0]
    stop = asyncio.Event()
    t0 = time.perf_counter()
    sampling = asyncio.create_task(sampler(model, t0, samples, stop, concurrency_now))
    for n, concurrency in enumerate(ramp):
        concurrency_now[0] = concurrency
        begin = time.perf_counter() - t0
        result = await drive(url, history_requests(items, seed=100 + n), concurrency=concurrency, seconds=step_s)
        outcomes += [(concurrency, o) for o in result]
        steps.append({"concurrency": concurrency, "from_s": begin, "to_s": time.perf_counter() - t0})
        print(f"step {concurrency:>3} clients: {len(result)} requests, replicas now "
              f"{samples[-1]['running'] if samples else '?'}", flush=True)
    concurrency_now[0] = 0
    load_stopped = time.perf_counter() - t0
    deadline = time.perf_counter() + down_wait_s
    while time.perf_counter() < deadline:
        await asyncio.sleep(SAMPLE_S)
        last = samples[-1] if samples else None
        if last and last["t"] > load_stopped and last["running"] == min_replicas and last["total"] == min_replicas:
            break
    await asyncio.sleep(3 * SAMPLE_S)  # a few samples at rest, to show it stays there
    stop.set()
    await sampling
    return {"samples": samples, "steps": steps, "load_stopped_s": load_stopped,
            "outcomes": [(c, o.started - t0, o.seconds, o.status) for c, o in outcomes]}


# --- analysis -----------------------------------------------------------------------------------------------------


def analyse(run: dict[str, Any], min_replicas: int, max_replicas: int, row_s: float) -> dict[str, Any]:
    samples, stopped = run["samples"], run["load_stopped_s"]
    above = next((s for s in samples if s["running"] > min_replicas), None)
    decided = next((s for s in samples if (s["target"] or 0) > min_replicas), None)
    peak = max((s["running"] for s in samples), default=0)
    peak_total = max((s["total"] for s in samples), default=0)
    at_peak = next((s for s in samples if s["running"] == peak), None)
    down = next((s for s in samples if s["t"] > stopped and s["running"] == min_replicas
                 and s["total"] == min_replicas), None)
    first_step = run["steps"][0]["from_s"] if run["steps"] else 0.0
    def step_of(sample: dict[str, Any] | None) -> dict[str, float] | None:
        return next((st for st in run["steps"] if sample and st["from_s"] <= sample["t"] < st["to_s"] + SAMPLE_S),
                    None)

    trigger, decided_in = step_of(above), step_of(decided)
    end = samples[-1]["t"] if samples else 0.0
    rows = []
    t = 0.0
    while t < end:
        window = [s for s in samples if t <= s["t"] < t + row_s]
        done = [(c, started + seconds, seconds, status) for c, started, seconds, status in run["outcomes"]
                if t <= started + seconds < t + row_s]
        ok = [seconds for _, _, seconds, status in done if 200 <= status < 300]
        if window:
            rows.append({"t": t, "concurrency": max(s["concurrency"] for s in window),
                         "running": window[-1]["running"], "running_max": max(s["running"] for s in window),
                         "target": window[-1]["target"], "total": window[-1]["total"],
                         "starting": window[-1]["states"].get("STARTING", 0),
                         "stopping": window[-1]["states"].get("STOPPING", 0),
                         "rps": len(done) / row_s, "p50_ms": 1000 * float(np.percentile(ok, 50)) if ok else None,
                         "p99_ms": 1000 * float(np.percentile(ok, 99)) if ok else None,
                         "errors": sum(1 for *_, status in done if not 200 <= status < 300)})
        t += row_s
    return {"scale_up_s": None if above is None else above["t"] - first_step,
            "target_up_s": None if decided is None else decided["t"] - first_step,
            "target_up_after_step_s": None if decided is None or decided_in is None else
            decided["t"] - decided_in["from_s"],
            "target_up_step_concurrency": None if decided_in is None else decided_in["concurrency"],
            "replica_start_s": None if above is None or decided is None else above["t"] - decided["t"],
            "scale_up_after_step_s": None if above is None or trigger is None else above["t"] - trigger["from_s"],
            "scale_up_step_concurrency": None if trigger is None else trigger["concurrency"],
            "peak_running": peak, "peak_total": peak_total,
            "peak_reached_s": None if at_peak is None else at_peak["t"] - first_step,
            "scale_down_s": None if down is None else down["t"] - stopped,
            "requests": len(run["outcomes"]),
            "errors": sum(1 for *_, status in run["outcomes"] if not 200 <= status < 300),
            "rows": rows}


# --- the run ------------------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from fusionrec.ray_compat import deploy_apps, deployed_deployments
    from fusionrec.serving.local import APP_NAME, stop_local_serve, wait_until_running

    artifact = bench_artifact()
    _, items = ids_of(artifact)
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="fra-"))
    manifest = bench_manifest(artifact, workdir / "store")
    serving = manifest.spec.serving
    local = start(workdir)
    try:
        c = configs(manifest)
        print("autoscaling_config from the CR's serving fields:", json.dumps(c["from_serving_fields"]), flush=True)
        print("RayService's model deployment autoscaling_config:", json.dumps(c["rayservice"]), flush=True)
        deploy_apps(c["serve_config"])
        wait_until_running()
        deployed = deployed_deployments(APP_NAME)[c["model_deployment"]]["deployment_config"]["autoscaling_config"]
        print("deployed (controller):", json.dumps(deployed), flush=True)
        checks = config_checks(c, deployed)
        for name, ok in checks:
            print(("PASS " if ok else "FAIL ") + name, flush=True)
        await drive(local.url, history_requests(items, seed=1), concurrency=1, total=20)  # warm-up, one client
        await asyncio.sleep(2)
        ramp = [int(x) for x in args.ramp.split(",")]
        measured = await ramp_and_wait(local.url, c["model_deployment"], items, ramp, args.step_seconds,
                                       args.down_wait, serving.min_replicas)
    finally:
        stop_local_serve()
        shutil.rmtree(workdir, ignore_errors=True)
    analysis = analyse(measured, serving.min_replicas, serving.max_replicas, args.row_seconds)
    return {"serving": SERVING, "tuning": TUNING, "configs": {k: v for k, v in c.items() if k != "serve_config"},
            "serve_config": c["serve_config"], "deployed": deployed, "config_checks": checks,
            "ramp": ramp, "step_seconds": args.step_seconds, **analysis, "samples": measured["samples"],
            "steps": measured["steps"], "load_stopped_s": measured["load_stopped_s"],
            "min_replicas": serving.min_replicas, "max_replicas": serving.max_replicas,
            "load_average": (load_before[0], os.getloadavg()[0])}


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def write_report(result: dict[str, Any], args: argparse.Namespace, wall: float) -> Path:
    lo, hi = result["min_replicas"], result["max_replicas"]
    checks = [
        *result["config_checks"],
        (f"scaled up from minReplicas {lo} under load", result["scale_up_s"] is not None),
        (f"never above maxReplicas {hi} (peak running {result['peak_running']}, peak incl. starting/stopping "
         f"{result['peak_total']})", result["peak_total"] <= hi),
        (f"back to minReplicas {lo} within {args.down_wait:g} s of the load stopping",
         result["scale_down_s"] is not None),
    ]
    command = "PYTHONSAFEPATH=1 HF_HUB_OFFLINE=1 nice .venv/bin/python bench/autoscaling.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:])
    configs = result["configs"]
    tuned = sorted(tuning_keys())
    group = {k: v for k, v in configs["worker_group"].items() if k != "template"}
    lines = [
        "# Autoscaling, live (loopback)", "",
        "Produced by:", "", f"    {command.strip()}", "",
        f"Environment: {platform.platform()}, {os.cpu_count()} CPUs shared with other work (Ray, the replicas and "
        f"this load generator all run on them). Wall time {wall / 60:.1f} min. 1-minute load average "
        f"{result['load_average'][0]:.1f} before and {result['load_average'][1]:.1f} after the run.", "",
        "Model: bench/serve_load.py's (MiniLM-L6 frozen + weighted fusion + sequence user tower, ranking, "
        "MovieLens-100K), bearer auth on. Requests: /v1/recommend with a random 5-30 item history each (never "
        "in the ingress's answer cache, so every one reaches the model deployment).", "",
        "## Checks", "", "| check | result |", "|---|---|",
        *[f"| {name} | {'PASS' if ok else 'FAIL'} |" for name, ok in checks], "",
        "## The config", "",
        "The CR's `serving` section (the manifest's; everything else is the bench model's spec):", "",
        f"    {json.dumps(result['serving'])}", "",
        "`autoscaling_config(serving)` (serving/config.py), what those fields produce:", "",
        f"    {json.dumps(configs['from_serving_fields'])}", "",
        f"The model deployment `{configs['model_deployment']}` in the operator's RayService (`build_rayservice`: "
        "its serveConfigV2 args built by `build_app`, the bound deployment's config, Ray's defaults filled in):",
        "", f"    {json.dumps(configs['rayservice'])}", "",
        f"The RayService's worker group: {json.dumps(group)} (its Ray pods range with the same fields).", "",
        f"Deployed here, as Serve's controller reports it (the RayService's application plus the tuning "
        f"`args.autoscaling: {json.dumps(result['tuning'])}`, which changes only {', '.join(tuned)}; the operator "
        "leaves them at Ray's defaults, 10 s and 30 s, so on a cluster the same fields react more slowly):", "",
        f"    {json.dumps(result['deployed'])}", "",
        f"## Replicas over time ({result['step_seconds']:g} s per step, clients "
        f"{' -> '.join(str(c) for c in result['ramp'])} -> 0; a row per {args.row_seconds:g} s)", "",
        "t is seconds since the ramp began; running = RUNNING model replicas at the end of the row (the most "
        "during it), target = the autoscaler's target then; requests/s, p50/p99 and errors of the requests that "
        "ended in the row.", "",
        "| t (s) | clients | running (max) | starting | stopping | target | requests/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {r['t']:.0f} | {r['concurrency']} | {r['running']} ({r['running_max']}) | {r['starting']} | "
          f"{r['stopping']} | {r['target']} | "
          f"{r['rps']:.1f} | {_ms(r['p50_ms'])} | {_ms(r['p99_ms'])} | {r['errors']} |" for r in result["rows"]], "",
        "## Summary", "",
        "| autoscaler's target above min | first replica above min RUNNING | replica start (target -> running) | "
        "peak running replicas | peak reached | back at minReplicas after the load stopped | requests | errors |",
        "|---|---|---|---|---|---|---|---|",
        f"| {_s(result['target_up_s'])} ({_s(result['target_up_after_step_s'])} into the "
        f"{result['target_up_step_concurrency']}-client step) | {_s(result['scale_up_s'])} "
        f"({_s(result['scale_up_after_step_s'])} into the {result['scale_up_step_concurrency']}-client step) | "
        f"{_s(result['replica_start_s'])} | "
        f"{result['peak_running']} (max {hi}) | "
        f"{_s(result['peak_reached_s'])} | {_s(result['scale_down_s'])} | {result['requests']} | "
        f"{result['errors']} |", "",
        "Times count from the first request of the ramp (after a 20-request warm-up), sampled every ~1 s. "
        "Serve's default policy wants about ceil(ongoing requests / targetOngoingRequests) replicas, within the "
        "range: with "
        f"targetOngoingRequests {result['serving']['targetOngoingRequests']}, one client needs one replica, a few "
        "need two, and 16 or more need more than maxReplicas, which caps them. The target rises when the "
        "autoscaler decides (the look-back window's average of ongoing requests per replica above "
        "targetOngoingRequests for upscaleDelayS); a replica counts once it is RUNNING: a new Ray worker has "
        "imported torch and loaded the artifact, most of the scale-up time on these shared cores. Scale-down "
        "counts from the last request to the first sample with exactly minReplicas replicas in any state "
        "(downscaleDelayS, the look-back, and the draining of the stopped replicas).", "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "autoscaling.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    (RESULTS / "autoscaling.json").write_text(json.dumps(
        {"command": command.strip(), "wall_s": wall, "checks": dict(checks), **result}, indent=2, default=str),
        encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ramp", default="1,4,16,32", help="client counts, one step each")
    parser.add_argument("--step-seconds", type=float, default=30)
    parser.add_argument("--down-wait", type=float, default=180, help="longest wait for minReplicas after the load")
    parser.add_argument("--row-seconds", type=float, default=5, help="the table's row width")
    run_and_report(run, write_report, parser.parse_args())


if __name__ == "__main__":
    main()
