"""The HTTP API in-process (no Ray) on real artifacts: answers equal an offline computation with the same
artifact, every bad input gets its 4xx with `{error, field}`, auth, metrics, and the canary split."""

from __future__ import annotations

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
    assert scorers["v1"].describe()["user_tower_backend"] == "torch"
    histories = [compiled.stored_history(u) for u in range(8)]
    got, expected = compiled.user_vectors(histories), scorers["v1"].user_vectors(histories)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    client = make_client({"v1": compiled}, {"v1": 100})[0]
    for user in range(4):
        answer = client.post("/v1/recommend", json={"user_id": pd_user(compiled, user), "k": 5}).json()
        assert [i["item_id"] for i in answer["items"]] == offline_top_k(scorers["v1"], user, 5)


def test_a_torch_compiled_artifact_warms_its_cuda_graph_buckets_and_answers_the_same(artifacts, scorers, tmp_path):
    """On a GPU the torch backend replays bucketed CUDA graphs; here the same runner pads to the same buckets
    without capturing, so the warm-up sizes and the padded answers are checked on a CPU."""
    import shutil

    from fusionrec.compile import compile_artifact
    from fusionrec.compile.cuda_graphs import CudaGraphRunner

    path = tmp_path / "runs" / "v1"
    shutil.copytree(artifacts["v1"], path)
    compile_artifact(path, backend="torch", precision="fp32", report=lambda line: None)
    compiled = VersionScorer.load(path)
    engine = compiled.compiled.engine
    assert compiled.describe()["user_tower_backend"] == "torch fp32" and engine.cuda_graphs is None  # CPU: eager
    assert compiled.warm_up() == []
    engine.cuda_graphs = engine.module = CudaGraphRunner(engine.module, engine.signature, capture=False)
    assert compiled.warm_up(max_batch=6) == [1, 2, 4, 8]
    histories = [compiled.stored_history(u) for u in range(5)]  # 5 rows: padded to the bucket of 8
    np.testing.assert_allclose(compiled.user_vectors(histories), scorers["v1"].user_vectors(histories),
                               rtol=1e-4, atol=1e-5)
