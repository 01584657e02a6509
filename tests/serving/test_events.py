"""POST /v1/events and the event store, without Ray or a model: validation, durability through the storage layer,
idempotency (retries and restarts), back-pressure, segments readable by the data readers, per-version counters,
and the request id that events name."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

import fusionrec.serving.events as events_module
from fusionrec.data.feedback import list_segments, read_events
from fusionrec.data.readers import read_files
from fusionrec.serving.api import create_api
from fusionrec.serving.auth import TokenAuth
from fusionrec.serving.events import EventStore, FeedbackEvent, compact_folder, events_location
from fusionrec.serving.events_api import feedback_counter
from fusionrec.serving.router import Router
from fusionrec.spec import ServingLimits

LIMITS = ServingLimits(max_body_bytes=1 << 20)


class Canned:
    """A version that answers from a fixed list (the request id is the API's, not the model's)."""

    def __init__(self, version: str) -> None:
        self.version = version

    async def call(self, method: str, query: dict[str, Any]) -> dict[str, Any]:
        if method == "recommend":
            return {"items": [{"item_id": "i1", "score": 1.0, "title": "one"}], "model_version": self.version}
        if method == "score":
            return {"scores": [{"item_id": i, "score": 0.5} for i in query["item_ids"]], "score": "ranking_score",
                    "model_version": self.version}
        if method == "ready":
            return {"ready": True, "version": self.version}
        return {"version": self.version}


def make_router() -> Router:
    return Router("shop", {"v1": Canned("v1"), "v2": Canned("v2")}, {"v1": 90, "v2": 10})


def event(i: int | str, **fields: Any) -> dict[str, Any]:
    return {"event_id": f"e{i}", "user_id": "u1", "item_id": f"i{i}", "type": "click", "timestamp": 1_700_000_000,
            **fields}


def series(router: Router) -> dict[tuple[str, str], float]:
    return {(s.labels["version"], s.labels["type"]): s.value
            for m in router.metrics.registry.collect() if m.name == "fusionrec_feedback_events"
            for s in m.samples if s.name.endswith("_total")}


def counts(router: Router) -> dict[tuple[str, str], float]:
    """The series counted above 0 (every served version's start at 0)."""
    return {key: value for key, value in series(router).items() if value}


@pytest.fixture
def live(tmp_path: Path) -> Path:
    return tmp_path / "_live"


class Api:
    """create_api with an event store, started and closed in the app's own event loop."""

    def __init__(self, live: Path, replica: str = "r1", **options: Any) -> None:
        self.router = make_router()
        self.store = EventStore(live, replica, on_stored=feedback_counter(self.router.metrics,
                                                                          lambda: self.router.clients), **options)
        self.client = TestClient(create_api(self.router, TokenAuth(), LIMITS, events=self.store))

    def __enter__(self) -> Api:
        self.client.__enter__()
        self.client.portal.call(self.store.start)  # type: ignore[union-attr]  # set by __enter__
        return self

    def __exit__(self, *exc: Any) -> None:
        self.client.portal.call(self.store.close)  # type: ignore[union-attr]
        self.client.__exit__(*exc)

    def post(self, *events: dict[str, Any]) -> Any:
        return self.client.post("/v1/events", json={"events": list(events)})


@pytest.fixture
def api(live: Path) -> Iterator[Api]:
    with Api(live) as running:
        yield running


# --- validation -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("bad", "field", "words"), [
    ({"type": "view"}, "events[3].type", "impression"),
    ({"type": "rating"}, "events[3].value", "rating needs its value"),
    ({"type": "rating", "value": 11}, "events[3].value", "0..10"),
    ({"value": -1.0}, "events[3].value", "0..1e+06"),
    ({"value": "5"}, "events[3].value", "valid number"),
    ({"timestamp": 1_700_000_000_000}, "events[3].timestamp", "not milliseconds"),
    ({"timestamp": "yesterday"}, "events[3].timestamp", "ISO-8601"),
    ({"timestamp": True}, "events[3].timestamp", "boolean"),
    ({"timestamp": -5}, "events[3].timestamp", "before 1970"),
    ({"user_id": ""}, "events[3].user_id", "1..256"),
    ({"item_id": "x" * 257}, "events[3].item_id", "1..256"),
    ({"event_id": None}, "events[3].event_id", "strings or integers"),
    ({"clicked": True}, "events[3].clicked", "unknown field"),
])
def test_a_bad_event_is_refused_naming_it_and_nothing_of_the_request_is_stored(api: Api, live: Path, bad: dict,
                                                                                field: str, words: str) -> None:
    answer = api.post(*(event(i) for i in range(3)), event(3, **bad), event(4))
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field
    assert words in answer.json()["error"]
    assert list_segments(events_location(live)) == []
    assert counts(api.router) == {}


def test_an_empty_or_missing_event_list_is_refused(api: Api) -> None:
    assert api.client.post("/v1/events", json={"events": []}).json()["field"] == "events"
    assert api.client.post("/v1/events", json={}).json()["field"] == "events"
    too_many = api.post(*(event(i) for i in range(1001)))
    assert (too_many.status_code, too_many.json()["field"]) == (422, "events")


def test_timestamps_as_seconds_or_iso_dates_and_defaults(api: Api, live: Path) -> None:
    before = int(time.time())
    answer = api.post(event(1, timestamp="2024-05-01T12:00:00Z"), event(2, timestamp="2024-05-01T12:00:00"),
                      event(3, timestamp=1_700_000_000.9), {"event_id": 4, "user_id": 7, "item_id": "i4",
                                                            "type": "rating", "value": 4})
    assert answer.status_code == 200, answer.text
    stored = read_events(live).set_index("event_id")
    assert stored.loc["e1", "timestamp"] == stored.loc["e2", "timestamp"] == 1_714_564_800
    assert stored.loc["e3", "timestamp"] == 1_700_000_000
    assert before <= stored.loc["4", "timestamp"] <= time.time()
    assert (stored.loc["4", "user_id"], stored.loc["4", "value"]) == ("7", 4.0)
    assert stored.loc["e1", "value"] == 1.0  # non-ratings default to 1


# --- storing and reading back -----------------------------------------------------------------------------------


def test_acknowledged_events_are_in_a_segment_the_interactions_reader_reads(api: Api, live: Path) -> None:
    answer = api.post(event(1, request_id="abc", model_version="v1"), event(2, type="impression"),
                      event(3, type="rating", value=4.5, timestamp=1_600_000_000))
    assert answer.json() == {"stored": 3, "duplicates": 0}
    segments = list_segments(events_location(live))
    assert len(segments) == 1 and segments[0].startswith("r1/")  # one flush, one segment, the replica's folder
    frame = read_events(live)
    assert list(frame["event_id"]) == ["e3", "e1", "e2"]  # sorted by timestamp, ties in stored order
    assert frame.loc[frame.event_id == "e1", "request_id"].item() == "abc"
    assert frame.loc[frame.event_id == "e2", "model_version"].isna().all()
    dataset = read_files(live / "events" / segments[0])  # the project's own reader: a Parquet interactions file
    assert sorted(dataset.interactions["item_id"]) == ["i1", "i2", "i3"]
    assert dataset.interactions["timestamp"].dtype == "int64"


def test_read_events_with_no_events_is_empty_with_the_columns(live: Path) -> None:
    frame = read_events(live)
    assert frame.empty and list(frame.columns) == ["event_id", "user_id", "item_id", "type", "value", "timestamp",
                                                   "request_id", "model_version"]


def test_events_are_off_unless_enabled(live: Path) -> None:
    client = TestClient(create_api(make_router(), TokenAuth(), LIMITS))
    answer = client.post("/v1/events", json={"events": [event(1)]})
    assert (answer.status_code, answer.json()["field"]) == (404, "serving.live.events")


# --- idempotency ------------------------------------------------------------------------------------------------


def test_a_retry_is_acknowledged_but_stored_and_counted_once(api: Api, live: Path) -> None:
    batch = [event(i, model_version="v1") for i in range(5)]
    assert api.post(*batch).json() == {"stored": 5, "duplicates": 0}
    assert api.post(*batch, event(5, model_version="v1")).json() == {"stored": 1, "duplicates": 5}
    assert api.post(event(9), event(9)).json() == {"stored": 1, "duplicates": 1}  # twice in one request
    assert len(read_events(live)) == 7
    assert counts(api.router) == {("v1", "click"): 6.0, ("unknown", "click"): 1.0}


def test_a_retry_after_a_restart_is_not_stored_again(live: Path) -> None:
    with Api(live, "r1") as first:
        assert first.post(event(1), event(2)).json()["stored"] == 2
    with Api(live, "r1") as again:  # the same replica restarted
        assert again.post(event(1), event(2), event(3)).json() == {"stored": 1, "duplicates": 2}
    with Api(live, "r2") as other:  # a new replica (Serve's ids are new per start) remembers every replica's ids
        assert other.post(event(3)).json() == {"stored": 0, "duplicates": 1}
        assert counts(other.router) == {}
    assert sorted(read_events(live)["event_id"]) == ["e1", "e2", "e3"]


def test_a_retry_that_races_its_first_attempt_waits_for_it(live: Path) -> None:
    async def run() -> list[Any]:
        store = EventStore(live, "r1", flush_interval_s=0.2)
        await store.start()
        one = [FeedbackEvent.model_validate(event(1))]
        results = await asyncio.gather(store.append(one), store.append(one))
        await store.close()
        return results

    first, retry = asyncio.run(run())
    assert (first.stored, retry.stored, retry.duplicates) == (1, 0, 1)
    assert len(read_events(live)) == 1


def test_readers_deduplicate_events_stored_by_two_replicas(live: Path) -> None:
    async def run() -> None:
        a, b = EventStore(live, "a"), EventStore(live, "b")
        await a.start()
        await b.start()  # started together: neither has seen the other's ids
        batch = [FeedbackEvent.model_validate(event(i)) for i in range(3)]
        await asyncio.gather(a.append(batch), b.append(batch))
        await a.close()
        await b.close()

    asyncio.run(run())
    assert len(list_segments(events_location(live))) == 2
    assert sorted(read_events(live)["event_id"]) == ["e0", "e1", "e2"]


def test_the_recent_id_window_is_bounded(live: Path) -> None:
    async def run() -> EventStore:
        store = EventStore(live, "r1", recent_ids=10, flush_interval_s=0.001)
        await store.start()
        for i in range(25):
            await store.append([FeedbackEvent.model_validate(event(i))])
        await store.close()
        return store

    store = asyncio.run(run())
    assert len(store.recent) == 10 and "e24" in store.recent and "e0" not in store.recent


# --- failures and back-pressure ---------------------------------------------------------------------------------


def test_a_failed_flush_is_a_503_stores_nothing_and_the_retry_succeeds(api: Api, live: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(location: Any, data: bytes) -> None:
        raise events_module.StorageError("writing: connection reset")

    real = events_module.write_object
    monkeypatch.setattr(events_module, "write_object", broken)
    answer = api.post(event(1))
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    assert read_events(live).empty
    monkeypatch.setattr(events_module, "write_object", real)
    assert api.post(event(1)).json() == {"stored": 1, "duplicates": 0}


def test_a_burst_beyond_the_queue_gets_429_and_pending_events_stay_bounded(live: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    real = events_module.write_object

    def slow(location: Any, data: bytes) -> None:
        gate.wait(10)  # storage stalls: events pile up until the queue is full
        real(location, data)

    monkeypatch.setattr(events_module, "write_object", slow)
    with Api(live, max_pending=1000, max_batch=200) as running:
        results: list[Any] = [None] * 12

        def send(n: int) -> None:
            results[n] = running.post(*(event(f"{n}-{i}") for i in range(200)))

        threads = [threading.Thread(target=send, args=(n,)) for n in range(12)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while sum(r is not None for r in results) < 7 and time.monotonic() < deadline:
            time.sleep(0.01)  # the refused requests answer at once, while the rest wait for storage
        gate.set()
        for thread in threads:
            thread.join(20)
        statuses = sorted(r.status_code for r in results)
        assert statuses.count(429) >= 7 and statuses.count(200) >= 1, statuses
        refused = next(r for r in results if r.status_code == 429)
        assert refused.json()["field"] == "events" and refused.headers["Retry-After"] == "1"
        assert running.store.peak_pending <= 1000
        stored = read_events(live)
        assert len(stored) == 200 * statuses.count(200)  # refused requests stored nothing, not even a part
        assert running.post(*(event(f"0-{i}") for i in range(200))).status_code == 200  # the retry later


# --- compaction ---------------------------------------------------------------------------------------------------


def test_compaction_merges_small_segments_and_keeps_every_event_once(live: Path) -> None:
    async def run() -> None:
        store = EventStore(live, "r1", flush_interval_s=0.001, compact_every=1000)
        await store.start()
        for i in range(20):
            await store.append([FeedbackEvent.model_validate(event(i)), FeedbackEvent.model_validate(event(i + 1))])
        await store.close()

    asyncio.run(run())
    events = events_location(live)
    before = read_events(live)
    assert len(list_segments(events)) == 20
    assert compact_folder(events, "r1", min_segments=16) == 20
    assert len(list_segments(events)) == 1
    pd.testing.assert_frame_equal(read_events(live), before)
    assert len(before) == 21


# --- metrics and request ids --------------------------------------------------------------------------------------


def test_counters_by_version_and_type_with_bounded_labels(api: Api) -> None:
    # Every served version's series exist at 0 from the start: increase() would miss a series' first count.
    served = sorted(api.router.clients)
    assert series(api.router) == {(v, kind): 0.0 for v in served for kind in ("impression", "click", "purchase",
                                                                            "rating")}
    api.post(event(1, model_version="v1", type="impression"), event(2, model_version="v1", type="impression"),
             event(3, model_version="v1"), event(4, model_version="v2", type="impression"),
             event(5, model_version="not-served"), event(6, type="purchase"))
    assert counts(api.router) == {("v1", "impression"): 2.0, ("v1", "click"): 1.0, ("v2", "impression"): 1.0,
                                  ("other", "click"): 1.0, ("unknown", "purchase"): 1.0}
    text = api.client.get("/metrics").text
    assert 'fusionrec_feedback_events_total{type="click",version="v1"} 1.0' in text
    assert 'fusionrec_requests_total{code="200",route="/v1/events",version="none"}' in text


def test_segments_are_encoded_off_the_event_loop(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from fusionrec.serving import events as events_module

    loops: list[bool] = []
    real = events_module.encode_segment

    def encode(rows: Any) -> bytes:
        try:
            asyncio.get_running_loop()
            loops.append(True)
        except RuntimeError:  # a worker thread runs no loop
            loops.append(False)
        return real(rows)

    monkeypatch.setattr(events_module, "encode_segment", encode)
    assert api.post(event(1)).status_code == 200
    assert loops == [False]


def test_every_answer_has_its_own_request_id_in_body_and_header(api: Api) -> None:
    ids = set()
    for _ in range(2):  # the second answer comes from the response cache: still a new id
        answer = api.client.post("/v1/recommend", json={"user_id": "u1"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["request_id"] == answer.headers["X-Request-Id"]
        ids.add(answer.json()["request_id"])
    scored = api.client.post("/v1/score", json={"user_id": "u1", "item_ids": ["i1"]})
    assert scored.json()["request_id"] == scored.headers["X-Request-Id"]
    ids.add(scored.json()["request_id"])
    assert len(ids) == 3 and all(len(i) == 32 for i in ids)


def test_writing_events_needs_the_write_scope(live: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTS_READ_TOKENS", "reader")
    monkeypatch.setenv("EVENTS_WRITE_TOKENS", "writer")
    router = make_router()
    store = EventStore(live, "r1")
    auth = TokenAuth(token_env="EVENTS_READ_TOKENS", write_token_env="EVENTS_WRITE_TOKENS")
    with TestClient(create_api(router, auth, LIMITS, events=store)) as client:
        client.portal.call(store.start)  # type: ignore[union-attr]
        body = {"events": [event(1)]}
        assert client.post("/v1/events", json=body).status_code == 401
        assert client.post("/v1/events", json=body, headers={"Authorization": "Bearer reader"}).status_code == 403
        answer = client.post("/v1/events", json=body, headers={"Authorization": "Bearer writer"})
        assert answer.json() == {"stored": 1, "duplicates": 0}
        client.portal.call(store.close)  # type: ignore[union-attr]
    assert list(read_events(live)["event_id"]) == ["e1"]
