"""Serving faults, measured on loopback (issue 17): a replica killed, the only replica killed, a slow-client
storm, and a restart of the whole server.

    PYTHONSAFEPATH=1 nice .venv/bin/python bench/serving_faults.py [--seconds 30] [--concurrency 8] [--slow 200]

1. Two model replicas under load, one killed with `ray.kill` a third of the way in: error rate (target < 1%)
   and the time until Serve runs two replicas again.
2. One model replica under load, killed a quarter of the way in: the slowest answer of any request (target:
   within the ingress's model-call deadline plus a margin, none hangs) and how many got 503 or the popularity
   fallback. Half the requests allow the fallback (they send a history), half do not (a user id).
3. `--slow` clients trickle a request body a byte a second while normal load runs: normal requests' p99 and
   non-2xx, and how many trickling clients were cut off (408) within the body deadline.
4. The whole server stopped and started again on the same artifact: the same version answers the same
   requests with the same items.

Every load loop is bounded in time and count; all traffic goes to 127.0.0.1. The model is bench/serve_load.py's
(MiniLM-L6 frozen, sequence tower, MovieLens-100K, one epoch). Writes bench/results/serving-faults.{md,json}
with the command and the load average before and after.
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
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (its helpers), never the repository root

from fusionrec.serving.config import MODEL_CALL_DEADLINE_S  # noqa: E402
from fusionrec.serving.slow_clients import BODY_TIMEOUT_S  # noqa: E402

from serve_load import (  # noqa: E402
    AUTH,
    RESULTS,
    TOKEN,
    Outcome,
    Request,
    bench_args,
    bench_artifact,
    drive,
    ids_of,
    kill_during_load,
    model_replicas,
    run_and_report,
    start,
    summary,
    valid_requests,
)

MARGIN_S = 2.0  # what "within the deadline" allows beyond it: the proxy, the client and a loaded machine


# --- 2. the only replica killed ---------------------------------------------------------------------------------


def only_replica_requests(users: list[str], items: list[str], seed: int) -> Any:
    """Half user ids (a 503 while the replica is gone), half histories (the popularity fallback then)."""
    rng = random.Random(seed)

    def make(n: int) -> Request:
        if n % 2:
            return Request("POST", "/v1/recommend", {"user_id": rng.choice(users), "k": 10}, name="user")
        return Request("POST", "/v1/recommend", {"history": rng.sample(items, rng.randint(1, 20)), "k": 10},
                       name="history")

    return make


async def kill_only_replica(url: str, users: list[str], items: list[str], seconds: float,
                            concurrency: int) -> dict[str, Any]:
    """Load for `seconds` with the only replica killed at a quarter; every answer (and its body) recorded."""
    import ray

    answers: Counter[str] = Counter()
    log: list[tuple[float, float, str]] = []  # (started, answered, what the answer was)
    make = only_replica_requests(users, items, seed=5)
    load = asyncio.create_task(drive_recording(url, make, answers, log, concurrency=concurrency, seconds=seconds))
    await asyncio.sleep(seconds / 4)
    killed_at = time.perf_counter()
    for victim in model_replicas():
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    outcomes = await load
    after_kill = [o for o in outcomes if o.started >= killed_at - 0.5]
    slowest = max((o.seconds for o in outcomes), default=0.0)
    degraded = [answered - killed_at for _, answered, kind in log if kind in ("503", "fallback")]
    return {"requests": len(outcomes), "after_kill": len(after_kill), "max_latency_s": slowest,
            "degraded_from_s": min(degraded, default=None), "degraded_until_s": max(degraded, default=None),
            "statuses": dict(sorted(Counter(o.status for o in outcomes).items())),
            "answers": dict(answers), "no_answer": sum(1 for o in outcomes if o.status == 0),
            "deadline_s": MODEL_CALL_DEADLINE_S}


async def drive_recording(url: str, make: Any, answers: Counter[str], log: list[tuple[float, float, str]], *,
                          concurrency: int, seconds: float) -> list[Outcome]:
    """Like serve_load.drive, but also counts and logs what each answer was (model, fallback, 503)."""
    outcomes: list[Outcome] = []
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        async def worker() -> None:
            while time.perf_counter() < deadline:
                request = make(next(counter))
                t0 = time.perf_counter()
                try:
                    response = await client.post(request.path, json=request.json, headers=request.headers)
                    status = response.status_code
                    body = response.json() if status in (200, 503) else {}
                    kind = "503" if status == 503 else ("fallback" if body.get("fallback") else str(status))
                except httpx.HTTPError:
                    status, kind = 0, "no answer"
                answers[kind] += 1
                log.append((t0, time.perf_counter(), kind))
                outcomes.append(Outcome(t0, time.perf_counter() - t0, status, request.name))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


# --- 3. slow-client storm ---------------------------------------------------------------------------------------


async def trickle(host: str, port: int, body: bytes, give_up_s: float) -> tuple[str, float]:
    """Send headers, then the body a byte a second (never the last one); -> (status line or what ended it,
    seconds until the server answered or closed)."""
    t0 = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return f"connect failed: {type(exc).__name__}", 0.0
    writer.write(b"POST /v1/recommend HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n")
    try:
        for n in range(len(body) - 1):
            writer.write(body[n:n + 1])
            await writer.drain()
            try:
                line = await asyncio.wait_for(reader.readline(), 1.0)
            except TimeoutError:
                if time.perf_counter() - t0 > give_up_s:
                    return "never cut off", time.perf_counter() - t0
                continue
            return line.decode("latin-1").strip() or "closed", time.perf_counter() - t0
        return "sent all but the last byte", time.perf_counter() - t0
    except OSError:
        return "closed", time.perf_counter() - t0
    finally:
        writer.close()


async def slow_storm(url: str, host: str, port: int, users: list[str], items: list[str], n_slow: int,
                     seconds: float, concurrency: int) -> dict[str, Any]:
    body = json.dumps({"user_id": users[0], "k": 10, "exclude_seen": True, "pad": "x" * 40}).encode()
    slow = [asyncio.create_task(trickle(host, port, body, BODY_TIMEOUT_S + 20)) for _ in range(n_slow)]
    await asyncio.sleep(1.0)  # all of them connected and trickling
    outcomes = await drive(url, valid_requests(users, items, seed=11), concurrency=concurrency, seconds=seconds)
    cut = await asyncio.gather(*slow)
    normal = summary(outcomes, seconds)
    return {"slow_clients": n_slow, "normal": normal,
            "slow_outcomes": dict(Counter(line.split(" ", 2)[1] if line.startswith("HTTP/") else line
                                          for line, _ in cut)),
            "slow_max_s": max((s for _, s in cut), default=0.0), "body_deadline_s": BODY_TIMEOUT_S}


# --- 4. restart ---------------------------------------------------------------------------------------------------


def answers_of(url: str, users: list[str]) -> list[Any]:
    with httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        return [client.post("/v1/recommend", json={"user_id": u, "k": 5}).json() for u in users]


# --- the run --------------------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from fusionrec.serving.local import deploy, stop_local_serve

    artifact = bench_artifact()
    users, items = ids_of(artifact)
    load_before = os.getloadavg()
    result: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="frf-"))
    local = start(workdir)
    try:
        deploy(bench_args(artifact, replicas=2))
        await drive(local.url, valid_requests(users, items, seed=9), concurrency=4, total=100)  # warm-up
        killed = await kill_during_load(local.url, valid_requests(users, items, seed=3), args.seconds,
                                        concurrency=args.concurrency)
        result["replica_kill"] = {k: v for k, v in killed.items() if k != "killed_at"}
        print("replica kill:", json.dumps(result["replica_kill"]), flush=True)

        deploy(bench_args(artifact, replicas=1))
        await drive(local.url, valid_requests(users, items, seed=9), concurrency=4, total=50)
        await asyncio.sleep(3)  # the ingress has fetched the popular items
        result["only_replica_kill"] = await kill_only_replica(local.url, users, items, args.seconds,
                                                              args.concurrency)
        print("only replica kill:", json.dumps(result["only_replica_kill"]), flush=True)

        deploy(bench_args(artifact, replicas=1))  # a replica again (Serve may still be replacing the killed one)
        result["slow_storm"] = await slow_storm(local.url, local.host, local.port, users, items, args.slow,
                                                args.seconds, max(2, args.concurrency // 2))
        print("slow storm:", json.dumps(result["slow_storm"]), flush=True)

        sample = users[:20]
        before = answers_of(local.url, sample)
    finally:
        stop_local_serve()
        shutil.rmtree(workdir, ignore_errors=True)
    t0 = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="frf-"))
    local = start(workdir)
    try:
        deploy(bench_args(artifact, replicas=1))
        restarted_s = time.perf_counter() - t0
        after = answers_of(local.url, sample)
    finally:
        stop_local_serve()
        shutil.rmtree(workdir, ignore_errors=True)
    result["restart"] = {"seconds_to_serving": restarted_s, "requests": len(sample),
                         "same_version": all(a.get("model_version") == b.get("model_version") for a, b in
                                             zip(after, before)),
                         "same_answers": sum(a == b for a, b in zip(after, before))}
    print("restart:", json.dumps(result["restart"]), flush=True)
    result["load_average"] = (load_before[0], os.getloadavg()[0])
    return result


def write_report(result: dict[str, Any], args: argparse.Namespace, wall: float) -> Path:
    k, o, s, r = result["replica_kill"], result["only_replica_kill"], result["slow_storm"], result["restart"]
    bound = o["deadline_s"] + MARGIN_S
    checks = [
        ("2 replicas, one killed: error rate < 1%", k["error_rate"] < 0.01),
        (f"only replica killed: every request answered within {bound:g} s (none hangs)",
         o["max_latency_s"] < bound and o["no_answer"] == 0),
        ("only replica killed: answered by 503 or the fallback while it was gone",
         o["answers"].get("503", 0) + o["answers"].get("fallback", 0) > 0),
        ("slow-client storm: normal requests all 2xx", s["normal"]["non_2xx"] == 0),
        ("slow-client storm: every trickling client cut off (408)",
         s["slow_outcomes"].get("408", 0) == s["slow_clients"]),
        ("restart: same version, same answers", r["same_version"] and r["same_answers"] == r["requests"]),
    ]
    command = "PYTHONSAFEPATH=1 nice .venv/bin/python bench/serving_faults.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:])
    lines = [
        "# Serving faults (loopback)", "",
        "Produced by:", "", f"    {command.strip()}", "",
        f"Environment: {platform.platform()}, {os.cpu_count()} CPUs shared with other work (Ray, the replicas and "
        f"this load generator all run on them). Wall time {wall / 60:.1f} min. 1-minute load average "
        f"{result['load_average'][0]:.1f} before and {result['load_average'][1]:.1f} after the run.", "",
        "Model: bench/serve_load.py's (MiniLM-L6 frozen + weighted fusion + sequence user tower, ranking, "
        f"MovieLens-100K), bearer auth on. Model-call deadline {o['deadline_s']:g} s, body deadline "
        f"{s['body_deadline_s']:g} s.", "",
        "## Checks", "", "| check | result |", "|---|---|",
        *[f"| {name} | {'PASS' if ok else 'FAIL'} |" for name, ok in checks], "",
        f"## 1. Two replicas, one killed with `ray.kill` ({args.seconds:g} s of load at concurrency "
        f"{args.concurrency}, kill at 1/3)", "",
        "| requests | failed | error rate | p99 ms | replicas back to 2 after |", "|---|---|---|---|---|",
        f"| {k['requests']} | {k['non_2xx']} | {100 * k['error_rate']:.2f}% | {k['p99_ms']:.1f} | "
        f"{k['recovered_s']:.1f} s |", "",
        f"## 2. The only replica killed ({args.seconds:g} s of load, kill at 1/4; half the requests allow the "
        "fallback)", "",
        "| requests | after the kill | slowest answer | 503 | fallback | model answers (200) | no answer | "
        "503/fallback answered between |",
        "|---|---|---|---|---|---|---|---|",
        f"| {o['requests']} | {o['after_kill']} | {o['max_latency_s']:.2f} s | {o['answers'].get('503', 0)} | "
        f"{o['answers'].get('fallback', 0)} | {o['answers'].get('200', 0)} | {o['no_answer']} | "
        f"{_span(o['degraded_from_s'], o['degraded_until_s'])} |", "",
        "503 (with `Retry-After: 1`) answers requests naming a user id, the popularity fallback those that sent "
        "a history; model answers come from the replica before the kill and from Serve's replacement once it "
        "runs. The first 503/fallback comes a model-call deadline after the kill (the calls then in flight); "
        "the breaker answers the next ones at once.", "",
        f"## 3. Slow-client storm: {s['slow_clients']} clients trickling a body, {args.seconds:g} s of normal load",
        "", "| normal requests | non-2xx | p50 ms | p99 ms | trickling clients: outcome | last cut off after |",
        "|---|---|---|---|---|---|",
        f"| {s['normal']['requests']} | {s['normal']['non_2xx']} | {s['normal']['p50_ms']:.1f} | "
        f"{s['normal']['p99_ms']:.1f} | {', '.join(f'{k2}: {v}' for k2, v in s['slow_outcomes'].items())} | "
        f"{s['slow_max_s']:.1f} s |", "",
        "## 4. Restart of the whole server (Ray and Serve stopped, started, the same args deployed)", "",
        "| seconds until serving | same version | same answers |", "|---|---|---|",
        f"| {r['seconds_to_serving']:.1f} | {r['same_version']} | {r['same_answers']} of {r['requests']} |", "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "serving-faults.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    (RESULTS / "serving-faults.json").write_text(json.dumps(
        {"command": command.strip(), "wall_s": wall, "checks": dict(checks), **result}, indent=2, default=str),
        encoding="utf-8")
    return path


def _span(start: float | None, end: float | None) -> str:
    return "-" if start is None or end is None else f"{start:.1f} s and {end:.1f} s after the kill"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30, help="load per scenario")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--slow", type=int, default=200, help="trickling clients in the storm")
    run_and_report(run, write_report, parser.parse_args())


if __name__ == "__main__":
    main()
