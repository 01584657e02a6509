"""Live items through a real local Ray Serve: an item PUT through the proxy is recommended by every model replica
within the poll interval, a retired one by none, and both survive a restart (replicas replay the log before they
answer)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("ray.serve")

from fusionrec.serving.local import deploy, start_local_serve, stop_local_serve

pytestmark = [pytest.mark.slow, pytest.mark.ray]

READ, WRITE = "live-read-token", "live-write-token"


def app_args(artifact: Path, live: Path) -> dict:
    serving = {"minReplicas": 2, "maxReplicas": 2, "resources": {"cpu": "0.5"},
               "auth": {"tokenEnv": "LIVE_RAY_READ", "writeTokenEnv": "LIVE_RAY_WRITE"},
               "limits": {"maxK": 60, "maxHistory": 8},
               "live": {"items": True, "uri": str(live), "pollSeconds": 0.2}}
    return {"name": "shop-recs", "versions": [{"version": "v1", "artifact": str(artifact), "weight": 100}],
            "serving": serving}


def ranked(client: httpx.Client) -> list[list[str]]:
    """Twenty answers (Serve spreads them over both model replicas; the ingress caches none with live items)."""
    out = []
    for _ in range(20):
        answer = client.post("/v1/recommend", json={"history": ["i1"], "k": 60})
        assert answer.status_code == 200, answer.text
        out.append([i["item_id"] for i in answer.json()["items"]])
    return out


def wait_for(condition, seconds: float = 30.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if condition():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"not true within {seconds} s")


def test_a_put_item_is_recommended_by_every_replica_and_after_a_restart(artifacts, tmp_path):
    os.environ["LIVE_RAY_READ"], os.environ["LIVE_RAY_WRITE"] = READ, WRITE
    live = tmp_path / "_live"
    read, write = {"Authorization": f"Bearer {READ}"}, {"Authorization": f"Bearer {WRITE}"}
    for attempt in ("first", "restarted"):
        workdir = Path(tempfile.mkdtemp(prefix="frl-"))  # short: Ray's socket paths must stay under 107 bytes
        local = start_local_serve(workdir, num_cpus=4)
        try:
            deploy(app_args(artifacts["v1"], live))
            with httpx.Client(base_url=local.url, headers=read, timeout=60.0) as client:
                if attempt == "first":
                    body = {"fields": {"title": "star war king movie", "genres": "Action", "year": 1994}}
                    assert client.put("/v1/items/live-1", json=body).status_code == 403  # a read token
                    stored = client.put("/v1/items/live-1", json=body, headers=write)
                    assert stored.status_code == 200, stored.text
                    assert client.put("/v1/items/live-2", json=body, headers=write).status_code == 200
                    assert client.delete("/v1/items/i5", headers=write).status_code == 200
                    wait_for(lambda: all("live-1" in r for r in ranked(client)))
                    wait_for(lambda: all("i5" not in r for r in ranked(client)))
                    assert client.delete("/v1/items/live-2", headers=write).status_code == 200
                    wait_for(lambda: all("live-2" not in r for r in ranked(client)))
                answers = ranked(client)  # after a restart: replayed before the replicas answered
                assert all("live-1" in r and "live-2" not in r and "i5" not in r for r in answers)
                scored = client.post("/v1/score", json={"history": ["i1"], "item_ids": ["live-1", "i5"]}).json()
                assert [s["item_id"] for s in scored["scores"]] == ["live-1"]
        finally:
            stop_local_serve()
            shutil.rmtree(workdir, ignore_errors=True)
