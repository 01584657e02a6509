"""Feedback-event ingestion over HTTP on loopback: events/s acknowledged (each one durable when acknowledged),
group commit (ours) against one fsync'd file per event (the naive durable way), plus the crash test's counts.

    python bench/events_ingest.py [--seconds 5] [--runs 3] [--clients 32]

Each configuration (batch of 1 and of 100 events per request, `--clients` concurrent keep-alive clients) runs
`--runs` times for `--seconds` against a fresh server process (bench/events_server.py) and a fresh local
folder; the medians are reported. The crash run streams events from 8 clients, SIGKILLs the server after 3,000
acknowledged events, restarts it on the same folder, and counts sent >= stored >= acknowledged, every stored
event exactly once in the segments, and that re-sending everything stores nothing twice.
Writes bench/results/events-ingest.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "bench" / "events_server.py"
RESULTS = ROOT / "bench" / "results"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """bench/events_server.py in its own process."""

    def __init__(self, live: Path, *, naive: bool = False, replica: str = "ingress-bench", flush_ms: float = 50):
        self.port = free_port()
        flags = ["--naive"] if naive else []
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--live", str(live), "--port", str(self.port), "--replica", replica,
             "--flush-ms", str(flush_ms), *flags],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONSAFEPATH": "1"})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.proc.kill()
            error = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"events server did not start: {line}{error}")
        self.url = f"http://127.0.0.1:{self.port}/v1/events"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def make_event(event_id: str, i: int) -> dict[str, Any]:
    return {"event_id": event_id, "user_id": f"u{i % 997}", "item_id": f"i{i % 4093}",
            "type": ("impression", "impression", "impression", "click")[i % 4], "timestamp": 1_700_000_000 + i,
            "model_version": "v1", "request_id": f"{i:032x}"}


async def _load(url: str, clients: int, batch: int, seconds: float, prefix: str) -> dict[str, Any]:
    """`clients` keep-alive clients posting batches for `seconds`: acknowledged events/s and request latency."""
    acked, latencies, errors = 0, [], collections.Counter()
    counter = 0
    stop_at = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal acked, counter
        while time.perf_counter() < stop_at:
            start = counter
            counter += batch
            body = {"events": [make_event(f"{prefix}-{i}", i) for i in range(start, start + batch)]}
            began = time.perf_counter()
            async with session.post(url, json=body) as response:
                await response.read()
                if response.status == 200:
                    acked += batch
                    latencies.append(time.perf_counter() - began)
                else:
                    errors[response.status] += 1

    began = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {"events_per_s": acked / elapsed, "acked": acked, "errors": dict(errors),
            "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None}


def throughput(naive: bool, batch: int, clients: int, seconds: float, work: Path, run: int) -> dict[str, Any]:
    live = work / f"{'naive' if naive else 'ours'}-b{batch}-r{run}"
    server = Server(live, naive=naive)
    try:
        asyncio.run(_load(server.url, clients, batch, 0.5, "warm"))  # connections, first segment, imports
        return asyncio.run(_load(server.url, clients, batch, seconds, f"run{run}"))
    finally:
        server.stop()


# --- the crash test ----------------------------------------------------------------------------------------------


def raw_event_ids(live: Path) -> collections.Counter[str]:
    """Every event id in every segment, with repeats (read_events de-duplicates; this must not)."""
    import pyarrow.parquet as pq

    ids: collections.Counter[str] = collections.Counter()
    for path in sorted((live / "events").rglob("*.parquet")):
        if not any(part.startswith(".") for part in path.relative_to(live).parts):
            ids.update(pq.read_table(path, columns=["event_id"]).column("event_id").to_pylist())
    return ids


async def _stream_until_killed(server: Server, clients: int, batch: int, kill_after: int) -> tuple[set[str], set[str]]:
    sent: set[str] = set()
    acked: set[str] = set()
    counter = 0
    killed = asyncio.Event()

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal counter
        while not killed.is_set():
            start = counter
            counter += batch
            ids = [f"crash-{i}" for i in range(start, start + batch)]
            sent.update(ids)
            try:
                async with session.post(server.url, json={"events": [make_event(e, start + k)
                                                                     for k, e in enumerate(ids)]}) as response:
                    await response.read()
                    if response.status == 200:
                        acked.update(ids)
            except (TimeoutError, aiohttp.ClientError, OSError):
                return  # the server is gone: this batch was not acknowledged
            if len(acked) >= kill_after and not killed.is_set():
                killed.set()
                server.kill()  # SIGKILL: no shutdown hook runs, requests in flight die with it

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return sent, acked


def crash_run(work: Path, *, clients: int = 8, batch: int = 10, kill_after: int = 3000) -> dict[str, Any]:
    """Kill the server mid-stream; count; restart; re-send everything (retries) and count again."""
    from fusionrec.data.feedback import read_events

    live = work / "crash"
    server = Server(live, replica="ingress-crash", flush_ms=20)
    sent, acked = asyncio.run(_stream_until_killed(server, clients, batch, kill_after))
    raw = raw_event_ids(live)
    stored = set(raw)
    restarted = Server(live, replica="ingress-crash", flush_ms=20)
    try:
        resend = sorted(sent, key=lambda e: int(e.split("-")[1]))
        answers = collections.Counter()

        async def retry_all() -> None:
            async with aiohttp.ClientSession() as session:
                for k in range(0, len(resend), 100):
                    chunk = resend[k:k + 100]
                    body = {"events": [make_event(e, int(e.split("-")[1])) for e in chunk]}
                    async with session.post(restarted.url, json=body) as response:
                        answer = await response.json()
                        answers["stored"] += answer["stored"]
                        answers["duplicates"] += answer["duplicates"]

        asyncio.run(retry_all())
    finally:
        restarted.stop()
    raw_after = raw_event_ids(live)
    return {
        "sent": len(sent), "acknowledged": len(acked), "stored": len(stored),
        "acknowledged_but_lost": len(acked - stored), "stored_but_never_sent": len(stored - sent),
        "stored_more_than_once": sum(1 for n in raw.values() if n > 1),
        "resent_after_restart": len(resend), "resend_stored": answers["stored"],
        "resend_duplicates": answers["duplicates"],
        "after_resend_stored": len(raw_after),
        "after_resend_more_than_once": sum(1 for n in raw_after.values() if n > 1),
        "read_events_rows": len(read_events(live)),
        "clients": clients, "batch": batch, "killed_after_acknowledged": kill_after,
    }


# --- main -------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    load_before = os.getloadavg()
    results: dict[str, Any] = {"command": "python " + " ".join(sys.argv), "clients": args.clients,
                               "seconds": args.seconds, "runs": args.runs, "flush_ms": 50,
                               "load_average_before": load_before, "configs": {}}
    with tempfile.TemporaryDirectory(prefix="events-bench-") as tmp:
        work = Path(tmp)
        for batch in (1, 100):
            per: dict[str, list[dict[str, Any]]] = {"ours": [], "naive": []}
            for run in range(args.runs):
                for name in ("ours", "naive"):  # interleaved: drifting load hits both alike
                    per[name].append(throughput(name == "naive", batch, args.clients, args.seconds, work, run))
                    print(f"batch {batch} run {run} {name}: {per[name][-1]}", flush=True)
            medians = {name: statistics.median(r["events_per_s"] for r in runs) for name, runs in per.items()}
            results["configs"][f"batch{batch}"] = {
                "runs": per, "median_events_per_s": medians, "ratio": medians["ours"] / medians["naive"],
                "median_p50_ms": {n: statistics.median(r["p50_ms"] for r in runs) for n, runs in per.items()},
                "median_p99_ms": {n: statistics.median(r["p99_ms"] for r in runs) for n, runs in per.items()}}
        results["crash"] = crash_run(work)
        print("crash:", results["crash"], flush=True)
        results["load_average_after"] = os.getloadavg()
        args.out.mkdir(parents=True, exist_ok=True)  # written before the (slow) removal of the bench's files
        (args.out / "events-ingest.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "events-ingest.md").write_text(markdown(results))
        print(markdown(results), flush=True)


def markdown(r: dict[str, Any]) -> str:
    lines = ["# Feedback-event ingestion (POST /v1/events, loopback HTTP, local disk)", "",
             f"Command: `{r['command']}` — {r['clients']} concurrent keep-alive clients (aiohttp), {r['seconds']} s "
             f"per run, median of {r['runs']} runs, a fresh server process and folder per run; server and clients "
             f"share this machine's {os.cpu_count()} cores. Load average before {r['load_average_before'][0]:.2f}, "
             f"after {r['load_average_after'][0]:.2f}.", "",
             "An event counts once acknowledged (200), i.e. once it is in a durable file. Ours: group commit, one "
             f"Parquet segment per flush (at most one flush per {r['flush_ms']} ms, sooner at 5,000 events; temp "
             "file, fsync, rename, folder fsync). Baseline: the same HTTP stack writing each event as its own "
             "fsync'd file.", "",
             "| events / request | ours (events/s) | one file per event (events/s) | ratio | p50 ms ours / naive "
             "| p99 ms ours / naive |", "|---|---|---|---|---|---|"]
    for name, c in r["configs"].items():
        m, p50, p99 = c["median_events_per_s"], c["median_p50_ms"], c["median_p99_ms"]
        lines.append(f"| {name.removeprefix('batch')} | {m['ours']:,.0f} | {m['naive']:,.0f} | {c['ratio']:.1f}x | "
                     f"{p50['ours']:.1f} / {p50['naive']:.1f} | {p99['ours']:.1f} / {p99['naive']:.1f} |")
    c = r["crash"]
    lines += ["", "## Crash test (SIGKILL mid-stream, restart on the same folder)", "",
              f"{c['clients']} clients, {c['batch']} events a request, killed after {c['killed_after_acknowledged']:,} "
              "acknowledged events.", "",
              "| sent | acknowledged | stored | acknowledged but lost | stored more than once |",
              "|---|---|---|---|---|",
              f"| {c['sent']:,} | {c['acknowledged']:,} | {c['stored']:,} | {c['acknowledged_but_lost']} | "
              f"{c['stored_more_than_once']} |", "",
              f"After the restart every sent event was sent again ({c['resent_after_restart']:,}): "
              f"{c['resend_duplicates']:,} answered as duplicates, {c['resend_stored']:,} newly stored; the segments "
              f"then hold {c['after_resend_stored']:,} events, {c['after_resend_more_than_once']} of them more than "
              "once.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
