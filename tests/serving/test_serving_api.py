"""The HTTP API in-process (no Ray) on real artifacts: answers equal an offline computation with the same
artifact, every bad input gets its 4xx with `{error, field}`, auth, metrics, and the canary split."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from fusionrec.serving.api import create_api
from fusionrec.serving.auth import TokenAuth
from fusionrec.serving.engine import VersionEngine
from fusionrec.serving.router import LocalClient, Router
from fusionrec.serving.scorer import VersionScorer
from fusionrec.spec import ServingLimits

LIMITS = ServingLimits(max_k=20, max_history=8, max_candidates=10, max_body_bytes=4096)
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def scorers(artifacts):
    return {version: VersionScorer.load(path) for version, path in artifacts.items()}


def make_client(scorers, weights, auth: TokenAuth | None = None) -> tuple[TestClient, Router]:
    router = Router("shop-recs", {v: LocalClient(VersionEngine(scorers[v])) for v in weights}, weights)
    return TestClient(create_api(router, auth or TokenAuth(), LIMITS)), router


@pytest.fixture(scope="module")
def client(scorers):
    return make_client(scorers, {"v1": 100})[0]


def offline_top_k(scorer: VersionScorer, user: int, k: int, exclude_seen: bool = True) -> list[str]:
    """The ranking computed the way the evaluator does: full_sort_predict over the catalogue."""
    history = scorer.stored_history(user)
    with torch.no_grad():
        scores = scorer.model.full_sort_predict(torch.tensor([user]), [history])[0].numpy().copy()
    if exclude_seen:
        scores[history] = -np.inf
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
    return [str(scorer.item_ids[i]) for i in order]


def test_recommend_equals_the_offline_ranking(client, scorers):
    scorer = scorers["v1"]
    for user in range(6):
        user_id = str(pd_user(scorer, user))
        answer = client.post("/v1/recommend", json={"user_id": user_id, "k": 7}).json()
        assert answer["model_version"] == "v1" and "fallback" not in answer
        assert [i["item_id"] for i in answer["items"]] == offline_top_k(scorer, user, 7)
        seen = set(scorer.item_ids[scorer.stored_history(user)])
        assert not seen & {i["item_id"] for i in answer["items"]}
        assert all(i["title"].startswith(("star", "war", "king", "queen", "cat", "dog")) for i in answer["items"])
    unfiltered = client.post("/v1/recommend", json={"user_id": pd_user(scorer, 0), "k": 7, "exclude_seen": False})
    assert [i["item_id"] for i in unfiltered.json()["items"]] == offline_top_k(scorer, 0, 7, exclude_seen=False)


def test_every_item_a_user_has_seen_is_left_out_not_only_the_recent_ones(client, scorers, artifacts):
    """The tower reads the last historyLength items; the stored history (and what is excluded) is all of them."""
    scorer = scorers["v1"]
    users = pd.read_parquet(artifacts["v1"] / "users.parquet")
    longer = [n for n, h in enumerate(users["history"]) if len(h) > scorer.history_length]
    assert longer, "the shop's users must have more items than historyLength for this test to mean anything"
    user = longer[0]
    history = [str(i) for i in users["history"][user]]
    answer = client.post("/v1/recommend", json={"user_id": str(users["user_id"][user]), "k": 20}).json()
    assert not set(history) & {i["item_id"] for i in answer["items"]}
    assert len(answer["items"]) == 20


def pd_user(scorer: VersionScorer, position: int) -> str:
    return next(u for u, p in scorer._user_position.items() if p == position)


def test_a_given_history_is_used_and_an_integer_id_is_accepted(client, scorers):
    scorer = scorers["v1"]
    history = [str(scorer.item_ids[p]) for p in scorer.stored_history(0)]
    by_user = client.post("/v1/recommend", json={"user_id": pd_user(scorer, 0), "k": 5}).json()
    by_history = client.post("/v1/recommend", json={"history": history, "k": 5}).json()
    assert by_history["items"] == by_user["items"]  # the same history gives the same vector and ranking
    stranger = client.post("/v1/recommend", json={"user_id": 123456, "history": history, "k": 5}).json()
    assert stranger["items"] == by_user["items"] and "fallback" not in stranger


def test_unknown_users_without_history_get_popular_items_flagged(client, scorers):
    answer = client.post("/v1/recommend", json={"user_id": "nobody", "k": 4}).json()
    assert answer["fallback"] == "popularity"
    popularity = scorers["v1"].popularity
    expected = sorted(range(len(popularity)), key=lambda i: (-popularity[i], i))[:4]
    assert [i["item_id"] for i in answer["items"]] == [str(scorers["v1"].item_ids[i]) for i in expected]
    scored = client.post("/v1/score", json={"user_id": "nobody", "item_ids": ["i0", "i1"]}).json()
    assert scored["fallback"] == "popularity" and scored["score"] == "popularity"


def test_candidates_restrict_and_reorder(client, scorers):
    user = pd_user(scorers["v1"], 1)
    full = client.post("/v1/recommend", json={"user_id": user, "k": 20, "exclude_seen": False}).json()["items"]
    candidates = [full[5]["item_id"], full[0]["item_id"], full[12]["item_id"]]
    answer = client.post("/v1/recommend", json={"user_id": user, "k": 2, "exclude_seen": False,
                                                "candidates": candidates}).json()
    assert [i["item_id"] for i in answer["items"]] == [full[0]["item_id"], full[5]["item_id"]]


def test_score_returns_the_model_score_per_item(scorers):
    client, _ = make_client(scorers, {"c1": 100})
    scorer = scorers["c1"]
    user = 2
    items = ["i3", "i0", "i9"]
    answer = client.post("/v1/score", json={"user_id": pd_user(scorer, user), "item_ids": items}).json()
    assert answer["score"] == "probability" and answer["model_version"] == "c1"
    assert [s["item_id"] for s in answer["scores"]] == items
    history = scorer.stored_history(user)
    positions = scorer.positions_of(items, "item_ids")
    pad = scorer.model.pad
    row = np.full(scorer.history_length, pad)
    recent = history[-scorer.history_length:]
    row[len(row) - len(recent):] = recent
    batch = {"user": torch.full((3,), user), "item": torch.tensor(positions),
             "history": torch.tensor(np.tile(row, (3, 1)))}
    with torch.no_grad():
        expected = scorer.model.predict(batch).numpy()
    np.testing.assert_allclose([s["score"] for s in answer["scores"]], expected, rtol=1e-4, atol=1e-6)
    assert all(0.0 < s["score"] < 1.0 for s in answer["scores"])
    ranked = client.post("/v1/recommend", json={"user_id": pd_user(scorer, user), "k": 3}).json()["items"]
    assert [i["score"] for i in ranked] == sorted((i["score"] for i in ranked), reverse=True)


BAD_REQUESTS = [
    # (route, body or raw bytes, status, field)
    ("/v1/recommend", b"{not json", 400, None),
    ("/v1/recommend", [], 422, "body"),
    ("/v1/recommend", "user", 422, "body"),
    ("/v1/recommend", {}, 422, "user_id"),
    ("/v1/recommend", {"user_id": None}, 422, "user_id"),
    ("/v1/recommend", {"user_id": "u1", "k": 0}, 422, "k"),
    ("/v1/recommend", {"user_id": "u1", "k": 21}, 422, "k"),
    ("/v1/recommend", {"user_id": "u1", "k": "ten"}, 422, "k"),
    ("/v1/recommend", {"user_id": "u1", "k": True}, 422, "k"),
    ("/v1/recommend", {"user_id": "u1", "k": 2.5}, 422, "k"),
    ("/v1/recommend", {"user_id": "u1", "exclude_seem": True}, 422, "exclude_seem"),
    ("/v1/recommend", {"user_id": "u1", "exclude_seen": "maybe"}, 422, "exclude_seen"),
    ("/v1/recommend", {"user_id": ["u1"]}, 422, "user_id"),
    ("/v1/recommend", {"user_id": "x" * 300}, 422, "user_id"),
    ("/v1/recommend", {"user_id": ""}, 422, "user_id"),
    ("/v1/recommend", {"history": "i1"}, 422, "history"),
    ("/v1/recommend", {"history": ["i1", None]}, 422, "history[1]"),
    ("/v1/recommend", {"history": ["i1"] * 9}, 422, "history"),
    ("/v1/recommend", {"history": ["i1", "no-such-item"]}, 404, "history[1]"),
    ("/v1/recommend", {"user_id": "u1", "candidates": []}, 422, "candidates"),
    ("/v1/recommend", {"user_id": "u1", "candidates": [f"i{n}" for n in range(11)]}, 422, "candidates"),
    ("/v1/recommend", {"user_id": "u1", "candidates": ["i1", "zzz"]}, 404, "candidates[1]"),
    ("/v1/recommend", {"user_id": "u1", "pad": "x" * 5000}, 413, "body"),
    ("/v1/score", {"user_id": "u1"}, 422, "item_ids"),
    ("/v1/score", {"user_id": "u1", "item_ids": []}, 422, "item_ids"),
    ("/v1/score", {"user_id": "u1", "item_ids": ["i1", "i2", "nope"]}, 404, "item_ids[2]"),
    ("/v1/score", {"item_ids": ["i1"]}, 422, "user_id"),
    # JSON escapes of lone UTF-16 surrogates decode to strings that cannot be UTF-8 encoded (issue 17, item 1)
    ("/v1/recommend", b'{"user_id": "\\ud800"}', 422, "user_id"),
    ("/v1/recommend", b'{"history": ["i1", "x\\udfff"]}', 422, "history[1]"),
    ("/v1/recommend", b'{"user_id": "u1", "candidates": ["\\udbff"]}', 422, "candidates[0]"),
    ("/v1/score", b'{"user_id": "u1", "item_ids": ["\\ud83d"]}', 422, "item_ids[0]"),
]


@pytest.mark.parametrize("route, body, status, field", BAD_REQUESTS)
def test_bad_input_gets_its_status_and_field(client, route, body, status, field):
    if isinstance(body, bytes):
        response = client.post(route, content=body, headers={"Content-Type": "application/json"})
    else:
        response = client.post(route, json=body)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field and response.json()["error"]


def test_content_type_is_not_needed_and_routes_and_methods_are_json_errors(client):
    assert client.post("/v1/recommend", content=b'{"user_id": "u1", "k": 2}',
                       headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code == 200
    for response, status in ((client.get("/v1/nothing"), 404), (client.get("/v1/recommend"), 405),
                             (client.post("/healthz"), 405), (client.get("/other"), 404)):
        assert response.status_code == status and set(response.json()) == {"error", "field"}


def test_a_chunked_body_over_the_limit_is_refused(client):
    def chunks():
        yield b'{"user_id": "u1", "pad": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = client.post("/v1/recommend", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["field"] == "body"


def test_auth_cases(scorers, monkeypatch):
    monkeypatch.setenv("SHOP_TOKENS", f"other,{TOKEN}")
    secured, _ = make_client(scorers, {"v1": 100}, TokenAuth(token_env="SHOP_TOKENS"))
    body = {"user_id": "u1", "k": 2}
    missing = secured.post("/v1/recommend", json=body)
    assert missing.status_code == 401 and missing.json()["field"] == "Authorization"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert secured.post("/v1/recommend", json=body, headers={"Authorization": TOKEN}).status_code == 401
    wrong = secured.post("/v1/recommend", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and TOKEN not in wrong.text
    assert secured.post("/v1/recommend", json=body, headers=AUTH).status_code == 200
    # Auth comes first: an unauthenticated client learns nothing about its body or the limits.
    assert secured.post("/v1/recommend", content=b"{broken").status_code == 401
    assert secured.post("/v1/recommend", json={"pad": "x" * 5000}).status_code == 401
    assert secured.get("/v1/model").status_code == 401
    for open_route in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert secured.get(open_route).status_code == 200, open_route


def test_two_authorization_headers_are_refused_whichever_comes_last(scorers, monkeypatch):
    """Issue 17, item 6: the last of two headers used to win, so `Bearer wrong` then `Bearer <token>` passed."""
    monkeypatch.setenv("SHOP_TOKENS", TOKEN)
    secured, _ = make_client(scorers, {"v1": 100}, TokenAuth(token_env="SHOP_TOKENS"))
    body = {"user_id": "u1", "k": 2}
    for pair in (["Bearer nope", f"Bearer {TOKEN}"], [f"Bearer {TOKEN}", f"Bearer {TOKEN}"]):
        headers = [("authorization", value) for value in pair] + [("content-type", "application/json")]
        answer = secured.post("/v1/recommend", content=json.dumps(body).encode(), headers=headers)
        assert answer.status_code == 401, pair
        assert "2 Authorization headers" in answer.json()["error"] and TOKEN not in answer.text
        assert answer.json()["field"] == "Authorization"
    assert secured.post("/v1/recommend", json=body, headers=AUTH).status_code == 200


def test_model_health_and_openapi(client):
    model = client.get("/v1/model").json()
    (version,) = model["versions"]
    assert version["version"] == "v1" and version["weight"] == 100 and version["task"] == "ranking"
    assert [e["name"] for e in version["encoders"]] == ["bert", "mpnet", "llama"]
    assert set(version["fusion"]["weights"]["global"]) == {"bert", "mpnet", "llama"}
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True, "versions": {"v1": True}}
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/recommend", "/v1/score", "/v1/model", "/healthz", "/readyz", "/metrics"} <= set(paths)


def test_metrics_count_every_answer_by_route_code_and_version(scorers):
    client, _ = make_client(scorers, {"v1": 100})
    for _ in range(3):
        client.post("/v1/recommend", json={"user_id": "u2", "k": 2})
    client.post("/v1/recommend", json={"user_id": "u2", "k": 0})
    client.post("/v1/recommend", json={"history": ["nope"]})
    client.get("/v1/model")
    text = client.get("/metrics").text
    assert 'fusionrec_requests_total{code="200",route="/v1/recommend",version="v1"} 3.0' in text
    assert 'fusionrec_requests_total{code="422",route="/v1/recommend",version="none"} 1.0' in text
    assert 'fusionrec_requests_total{code="404",route="/v1/recommend",version="v1"} 1.0' in text
    assert 'fusionrec_request_latency_seconds_count{route="/v1/recommend",version="v1"} 4.0' in text
    assert 'fusionrec_batch_size_count{version="v1"} 1.0' in text  # one tower call: the others hit the cache
    assert 'fusionrec_model_info{score="ranking_score",task="ranking",version="v1"} 1.0' in text
    assert 'fusionrec_traffic_weight{version="v1"} 100.0' in text


def test_canary_split_is_weighted_sticky_and_switchable(scorers):
    client, router = make_client(scorers, {"v1": 80, "v2": 20})
    answers = {u: client.post("/v1/recommend", json={"user_id": f"u{u}", "k": 1}).json()["model_version"]
               for u in range(30)}
    counts = Counter(answers.values())
    assert counts["v1"] > counts["v2"] > 0
    assert all(client.post("/v1/recommend", json={"user_id": f"u{u}", "k": 1}).json()["model_version"] == v
               for u, v in list(answers.items())[:10])
    router.set_weights({"v1": 0, "v2": 100})
    assert {client.post("/v1/recommend", json={"user_id": f"u{u}", "k": 1}).json()["model_version"]
            for u in range(30)} == {"v2"}
    with pytest.raises(ValueError, match="deployed versions"):
        router.set_weights({"v1": 50, "v3": 50})


def test_the_engine_batches_distinct_histories_once(scorers):
    engine = VersionEngine(scorers["v1"])
    keys = [(1, 2), (3,), (1, 2), (4, 5, 6)]
    out = engine.embed_batch(keys)
    assert [size for _, size, _ in out] == [4] * 4 and [first for _, _, first in out] == [True, False, False, False]
    np.testing.assert_allclose(out[0][0], out[2][0])
    alone = scorers["v1"].user_vectors([(4, 5, 6)])[0]
    np.testing.assert_allclose(out[3][0], alone, rtol=1e-5, atol=1e-6)  # padding to the batch does not change it


def test_model_info_is_published_before_any_traffic(scorers):
    import asyncio

    client, router = make_client(scorers, {"v1": 60, "c1": 40})
    asyncio.run(router.refresh_info())
    text = client.get("/metrics").text
    assert 'fusionrec_model_info{score="ranking_score",task="ranking",version="v1"} 1.0' in text
    assert 'fusionrec_model_info{score="probability",task="ctr",version="c1"} 1.0' in text
    assert 'fusionrec_traffic_weight{version="c1"} 40.0' in text


def test_a_compiled_artifact_serves_its_user_tower_on_onnx_runtime_with_the_same_answers(artifacts, scorers, tmp_path):
    import shutil

    from fusionrec.compile import compile_artifact

    path = tmp_path / "runs" / "v1"
    shutil.copytree(artifacts["v1"], path)
    compile_artifact(path, threads=1, report=lambda line: None)
    compiled = VersionScorer.load(path)
    assert compiled.describe()["user_tower_backend"] == "onnxruntime fp32"
    assert compiled.model is None  # the replica keeps the ONNX session, the index and the head, not the LMs
    assert scorers["v1"].describe()["user_tower_backend"] == "torch"
    histories = [compiled.stored_history(u) for u in range(8)]
    got, expected = compiled.user_vectors(histories), scorers["v1"].user_vectors(histories)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    client = make_client({"v1": compiled}, {"v1": 100})[0]
    for user in range(4):
        answer = client.post("/v1/recommend", json={"user_id": pd_user(compiled, user), "k": 5}).json()
        assert [i["item_id"] for i in answer["items"]] == offline_top_k(scorers["v1"], user, 5)


def test_a_torch_compiled_artifact_warms_its_cuda_graph_buckets_and_answers_the_same(artifacts, scorers, tmp_path,
                                                                                       monkeypatch):
    """On a GPU the torch backend replays bucketed CUDA graphs; here the same runner pads to the same buckets
    without capturing, so the warm-up sizes and the padded answers are checked on a CPU."""
    import shutil

    import fusionrec.model.saved as saved
    from fusionrec.compile import compile_artifact
    from fusionrec.compile.cuda_graphs import CudaGraphRunner

    path = tmp_path / "runs" / "v1"
    shutil.copytree(artifacts["v1"], path)
    compile_artifact(path, backend="torch", precision="fp32", report=lambda line: None)
    loads = []
    real_load = saved.load_model
    monkeypatch.setattr(saved, "load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    compiled = VersionScorer.load(path)
    assert len(loads) == 1 and compiled.model is None  # the tower runs on the one loaded model's modules
    engine = compiled.compiled.engine
    assert compiled.describe()["user_tower_backend"] == "torch fp32" and engine.cuda_graphs is None  # CPU: eager
    assert compiled.warm_up() == []
    engine.cuda_graphs = engine.module = CudaGraphRunner(engine.module, engine.signature, capture=False)
    assert compiled.warm_up(max_batch=6) == [1, 2, 4, 8]
    histories = [compiled.stored_history(u) for u in range(5)]  # 5 rows: padded to the bucket of 8
    np.testing.assert_allclose(compiled.user_vectors(histories), scorers["v1"].user_vectors(histories),
                               rtol=1e-4, atol=1e-5)


# --- issue 17: hang-ups, slow clients, the OpenAPI document ------------------------------------------------


class _Stalled:
    """A version whose replica never answers (a model stuck behind a dead replica)."""

    def __init__(self) -> None:
        self.called = asyncio.Event()

    async def call(self, method: str, query: dict) -> dict:
        if method in ("describe", "ready"):
            return {"ready": True, "task": "ranking", "score": "ranking_score"}
        self.called.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def _asgi_scope(path: str, body: bytes) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}


def test_client_hang_ups_are_counted_as_499_not_500():
    """Issue 17 item 2: 40 hang-ups were counted as 22 "500"s. Two ways a client goes: a disconnect while the
    body is read (Starlette's ClientDisconnect), and Serve cancelling the ingress's request when the proxy sees
    the client go while the model works."""
    stalled = _Stalled()
    router = Router("shop-recs", {"v1": stalled}, {"v1": 100})
    app = create_api(router, TokenAuth(), LIMITS)
    body = b'{"user_id": "u1", "k": 2}'
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def scenario() -> None:
        async def gone() -> dict:
            return {"type": "http.disconnect"}

        await app(_asgi_scope("/v1/recommend", body), gone, send)

        delivered = False

        async def body_then_wait() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()
            return {"type": "http.disconnect"}

        task = asyncio.create_task(app(_asgi_scope("/v1/recommend", body), body_then_wait, send))
        await asyncio.wait_for(stalled.called.wait(), 10)
        task.cancel()  # what Serve does to the ingress's request when the proxy sees the client hang up
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    text = router.metrics.render().decode()
    assert 'fusionrec_requests_total{code="499",route="/v1/recommend",version="none"} 1.0' in text
    assert 'fusionrec_requests_total{code="499",route="/v1/recommend",version="v1"} 1.0' in text
    assert 'code="500"' not in text


def test_a_trickling_body_is_cut_off_while_other_requests_are_answered(scorers):
    """Issue 17 item 3: a client that sends its body a byte at a time must not hold the ingress."""
    router = Router("shop-recs", {"v1": LocalClient(VersionEngine(scorers["v1"]))}, {"v1": 100})
    # A 2 s deadline: the normal requests must be answered before any slow one is cut off, with room for a
    # loaded 2-core machine (a 0.5 s deadline flaked there).
    app = create_api(router, TokenAuth(), LIMITS, body_timeout_s=2.0)
    body = b'{"user_id": "u1", "k": 2}'

    async def run(receive) -> tuple[list[dict], float]:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        start = time.perf_counter()
        await asyncio.wait_for(app(_asgi_scope("/v1/recommend", body), receive, send), 10)
        return sent, time.perf_counter() - start

    def trickle() -> object:
        chunks = [body[n:n + 1] for n in range(len(body))]

        async def receive() -> dict:
            await asyncio.sleep(0.2)  # 25 bytes at 5 bytes/s: 5 s for the body, over the 2 s deadline
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

        return receive

    def at_once() -> object:
        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        return receive

    async def scenario() -> tuple[list, list]:
        slow = [asyncio.create_task(run(trickle())) for _ in range(20)]
        await asyncio.sleep(0.05)
        normal = [await run(at_once()) for _ in range(5)]
        return [await task for task in slow], normal

    slow, normal = asyncio.run(scenario())
    for sent, seconds in normal:
        assert sent[0]["status"] == 200 and seconds < 2.0  # answered while the slow bodies are held
    for sent, seconds in slow:
        assert sent[0]["status"] == 408 and seconds < 4.0  # cut off at the deadline, not after the body
        assert (b"connection", b"close") in sent[0]["headers"]
        assert json.loads(sent[1]["body"])["field"] == "body"
    text = router.metrics.render().decode()
    assert 'fusionrec_requests_total{code="408",route="/v1/recommend",version="none"} 20.0' in text
    assert 'fusionrec_request_latency_seconds_count{route="/v1/recommend",version="none"}' not in text


def test_oversized_headers_are_refused(client):
    response = client.post("/v1/recommend", json={"user_id": "u1"}, headers={"X-Pad": "x" * 20_000})
    assert response.status_code == 431 and response.json()["field"] == "headers"
    assert client.get("/healthz", headers={"X-Pad": "x" * 20_000}).status_code == 431
    assert client.post("/v1/recommend", json={"user_id": "u1"}, headers={"X-Pad": "x" * 1000}).status_code == 200


@pytest.mark.parametrize("value", ["no", 0, 1, "false", "true", None])
def test_exclude_seen_is_a_strict_boolean(client, value):
    response = client.post("/v1/recommend", json={"user_id": "u1", "exclude_seen": value})
    assert response.status_code == 422 and response.json()["field"] == "exclude_seen"


def test_the_openapi_document_says_what_the_api_does(scorers, monkeypatch):
    """Issue 17 item 7: bearer security, /metrics as text/plain, id lengths, the limits, and per route only
    the errors it can give."""
    monkeypatch.setenv("SHOP_TOKENS", TOKEN)
    secured, _ = make_client(scorers, {"v1": 100}, TokenAuth(token_env="SHOP_TOKENS"))
    document = secured.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": document["components"]["securitySchemes"]["bearer"][
            "description"]}
    paths = document["paths"]
    for path in ("/v1/recommend", "/v1/score"):
        operation = paths[path]["post"]
        assert operation["security"] == [{"bearer": []}]
        assert set(operation["responses"]) == {"200", "400", "401", "403", "404", "408", "413", "422", "503"}
        assert operation["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/ErrorResponse")
    assert paths["/v1/model"]["get"]["security"] == [{"bearer": []}]
    assert set(paths["/v1/model"]["get"]["responses"]) == {"200", "401", "403"}
    assert set(paths["/healthz"]["get"]["responses"]) == {"200"} and "security" not in paths["/healthz"]["get"]
    assert set(paths["/readyz"]["get"]["responses"]) == {"200", "503"}
    metrics = paths["/metrics"]["get"]["responses"]
    assert set(metrics) == {"200", "503"} and set(metrics["200"]["content"]) == {"text/plain"}
    assert "text/plain" in secured.get("/metrics").headers["content-type"]
    request = document["components"]["schemas"]["RecommendRequest"]["properties"]
    user_id = request["user_id"]["anyOf"][0]["anyOf"][0]
    assert user_id == {"type": "string", "minLength": 1, "maxLength": 256}
    assert request["k"]["maximum"] == LIMITS.max_k and request["exclude_seen"]["type"] == "boolean"
    assert request["history"]["anyOf"][0]["maxItems"] == LIMITS.max_history
    assert request["candidates"]["anyOf"][0]["maxItems"] == LIMITS.max_candidates
    score = document["components"]["schemas"]["ScoreRequest"]["properties"]
    assert score["item_ids"]["maxItems"] == LIMITS.max_candidates
    open_document, _ = make_client(scorers, {"v1": 100})
    open_paths = open_document.get("/openapi.json").json()["paths"]
    assert "security" not in open_paths["/v1/recommend"]["post"]
    assert not {"401", "403"} & set(open_paths["/v1/recommend"]["post"]["responses"])


class _Killable:
    """A version whose only replica can be killed: calls then wait, as Serve queues them for a replacement."""

    def __init__(self, inner: LocalClient) -> None:
        self.inner, self._alive = inner, asyncio.Event()
        self._alive.set()

    @property
    def dead(self) -> bool:
        return not self._alive.is_set()

    @dead.setter
    def dead(self, dead: bool) -> None:
        self._alive.clear() if dead else self._alive.set()  # a revived version answers the calls it queued

    async def call(self, method: str, query: dict) -> dict:
        await self._alive.wait()
        return await self.inner.call(method, query)


def test_a_version_without_a_live_replica_answers_503_or_the_popularity_fallback_fast(scorers):
    """Issue 17 item 4: with the only replica killed, requests hung until the client's timeout. Now each is
    answered within the deadline: 503 + Retry-After, or popular items where the request allows it."""
    import httpx

    version = _Killable(LocalClient(VersionEngine(scorers["v1"])))
    router = Router("shop-recs", {"v1": version}, {"v1": 100}, call_deadline_s=0.5,
                    popular_k=LIMITS.max_k + LIMITS.max_history)
    app = create_api(router, TokenAuth(), LIMITS)
    popularity = scorers["v1"].popularity
    by_popularity = [str(scorers["v1"].item_ids[i]) for i in sorted(range(len(popularity)),
                                                                    key=lambda i: (-popularity[i], i))]

    async def scenario() -> list[tuple[int, float, dict, httpx.Headers]]:
        await router.refresh_info()  # what the ingress does every 2 s: keeps each version's popular items
        version.dead = True
        out = []
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            for body in ({"user_id": "u1", "k": 3},  # first: waits out the deadline
                         {"user_id": "u2", "k": 3},  # then: fails fast
                         {"history": [by_popularity[0], by_popularity[2]], "k": 3},
                         {"user_id": "u1", "k": 3, "exclude_seen": False},
                         {"user_id": "u1", "k": 3, "exclude_seen": False, "candidates": ["i1", "i2"]}):
                start = time.perf_counter()
                response = await asyncio.wait_for(client.post("/v1/recommend", json=body), 5)
                out.append((response.status_code, time.perf_counter() - start, response.json(), response.headers))
            start = time.perf_counter()
            scored = await asyncio.wait_for(client.post("/v1/score", json={"user_id": "u1", "item_ids": ["i1"]}), 5)
            out.append((scored.status_code, time.perf_counter() - start, scored.json(), scored.headers))
            version.dead = False
            await asyncio.sleep(1.1)  # Retry-After
            healthy = await asyncio.wait_for(client.post("/v1/recommend", json={"user_id": "u1", "k": 3}), 5)
            out.append((healthy.status_code, 0.0, healthy.json(), healthy.headers))
        return out

    first, second, with_history, keep_seen, candidates, score, revived = asyncio.run(scenario())
    for status, _, body, headers in (first, second, candidates, score):
        assert status == 503 and headers["Retry-After"] == "1" and body["field"] is None, body
    assert 0.4 < first[1] < 2.0 and second[1] < 0.2 and candidates[1] < 0.2
    assert with_history[0] == 200 and with_history[2]["fallback"] == "popularity"
    assert [i["item_id"] for i in with_history[2]["items"]] == [by_popularity[1]] + by_popularity[3:5]
    assert keep_seen[0] == 200 and [i["item_id"] for i in keep_seen[2]["items"]] == by_popularity[:3]
    assert revived[0] == 200 and "fallback" not in revived[2]
    text = router.metrics.render().decode()
    assert 'fusionrec_unavailable_total{answer="503",version="v1"} 4.0' in text
    assert 'fusionrec_unavailable_total{answer="fallback",version="v1"} 2.0' in text


def test_a_version_being_deployed_is_waited_for_not_failed(scorers):
    """A deploy replaces a version's replicas stop-first; requests must wait for the new ones (the README's
    promise for a canary step), while a version that is not being deployed gets the deadline."""
    version = _Killable(LocalClient(VersionEngine(scorers["v1"])))
    router = Router("shop-recs", {"v1": version}, {"v1": 100}, call_deadline_s=0.3)
    app = create_api(router, TokenAuth(), LIMITS)

    async def scenario() -> tuple[int, float]:
        import httpx

        version.dead = True
        router.set_deploying({"v1"})
        loop = asyncio.get_running_loop()
        loop.call_later(1.0, setattr, version, "dead", False)  # the new replica has loaded
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            start = time.perf_counter()
            response = await asyncio.wait_for(client.post("/v1/recommend", json={"user_id": "u1", "k": 2}), 10)
        return response.status_code, time.perf_counter() - start

    status, seconds = asyncio.run(scenario())
    assert status == 200 and seconds > 0.9
