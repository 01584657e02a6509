"""The events ingress alone, over HTTP: the real `create_api` (auth, limits, metrics, POST /v1/events) with a
router that serves no model, under uvicorn. Used by bench/events_ingest.py and the crash test
(tests/serving/test_events_crash.py), which kill it with SIGKILL mid-stream.

    python bench/events_server.py --live DIR --port 8123 [--replica NAME] [--flush-ms 50] [--naive]

--naive is the bench's baseline: the same HTTP stack, but each event is written as its own fsync'd file (named by
its event id, so retries are idempotent too): the obvious durable way, one storage round trip per event.

Prints `READY <port>` once the store has started (its recent ids rebuilt) and the socket listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from typing import Any, cast

import uvicorn

from fusionrec.serving.api import create_api
from fusionrec.serving.auth import TokenAuth
from fusionrec.serving.events import Appended, EventStore, FeedbackEvent
from fusionrec.serving.events_api import feedback_counter
from fusionrec.serving.router import BackendUnavailable, Router
from fusionrec.spec import ServingLimits
from fusionrec.storage import resolve, write_object


class NoModel:
    """A version with no model behind it: this process only takes events."""

    async def call(self, method: str, query: dict[str, Any]) -> dict[str, Any]:
        raise BackendUnavailable("this server only records events")


class NaiveStore:
    """The baseline: one durable write (temp file, fsync, rename, folder fsync) per event, in threads."""

    def __init__(self, live: str, replica: str) -> None:
        self.folder = resolve(live).child("naive-events", replica)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def append(self, events: Sequence[FeedbackEvent]) -> Appended:
        for event in events:
            await asyncio.to_thread(write_object, self.folder.child(f"{event.event_id}.json"),
                                    json.dumps(event.model_dump()).encode())
        return Appended(stored=len(events), duplicates=0)


async def serve(live: str, port: int, replica: str, flush_ms: float, max_pending: int, naive: bool) -> None:
    router = Router("events", {"v1": NoModel()}, {"v1": 100})
    store = cast(EventStore, NaiveStore(live, replica)) if naive else \
        EventStore(live, replica, flush_interval_s=flush_ms / 1000, max_pending=max_pending,
                   on_stored=feedback_counter(router.metrics, lambda: router.clients))
    await store.start()
    app = create_api(router, TokenAuth(), ServingLimits(), events=store)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                            loop="uvloop", http="httptools")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            return
        await asyncio.sleep(0.02)
    print(f"READY {port}", flush=True)
    try:
        await task
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--live", required=True, help="serving.live.uri (a folder, s3://...)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--replica", default="ingress-bench")
    parser.add_argument("--flush-ms", type=float, default=50.0)
    parser.add_argument("--max-pending", type=int, default=20_000)
    parser.add_argument("--naive", action="store_true", help="the baseline: one fsync'd file per event")
    args = parser.parse_args()
    asyncio.run(serve(args.live, args.port, args.replica, args.flush_ms, args.max_pending, args.naive))


if __name__ == "__main__":
    main()
