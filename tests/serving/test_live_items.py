"""Live items in-process (no Ray) on real tiny artifacts: a replica replays and follows the item log, a new item
with text like an existing one's gets that item's vector and is ranked beside it, retired items are never
returned, the HTTP routes check fields on every version before storing, and the write scope is enforced."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from fusionrec.data.item_log import ItemChange, ItemLog
from fusionrec.data.text import ItemTextTemplate
from fusionrec.retrieval.ann import IndexPlan, build_index
from fusionrec.retrieval.topk import InnerProductIndex
from fusionrec.serving.api import create_api
from fusionrec.serving.auth import TokenAuth
from fusionrec.serving.engine import VersionEngine
from fusionrec.serving.items_api import ItemWriter
from fusionrec.serving.live_items import LiveItems
from fusionrec.serving.router import LocalClient, Router
from fusionrec.serving.scorer import VersionScorer
from fusionrec.spec import ServingLimits

LIMITS = ServingLimits(max_k=50, max_history=8, max_candidates=10, max_body_bytes=8192)
READ, WRITE = "reader-token", "writer-token"


def item_fields(artifact: Path, item_id: str) -> dict:
    """An item's fields as the shop's items.csv has them (the test shop: title, genres, year)."""
    shop = next(folder / "shop" for folder in artifact.parents if (folder / "shop").is_dir())
    items = pd.read_csv(shop / "items.csv", dtype=str)
    row = items[items["item_id"] == item_id].iloc[0]
    return {"title": row["title"], "genres": row["genres"], "year": row["year"]}


def live_replica(artifact: Path, live_uri: str, template: ItemTextTemplate | None = None
                 ) -> tuple[VersionScorer, LiveItems, VersionEngine]:
    scorer = VersionScorer.load(artifact, live_items=True)
    live = LiveItems(scorer, ItemLog(live_uri), template)
    live.replay()
    return scorer, live, VersionEngine(scorer, live=live)


def recommend(engine: VersionEngine, **query) -> list[str]:
    answer = asyncio.run(engine.recommend({"k": 10, "exclude_seen": True, **query}))
    assert "error" not in answer, answer
    return [i["item_id"] for i in answer["items"]]


def test_a_new_item_with_an_existing_items_text_gets_its_vector_and_ranks_beside_it(artifacts, tmp_path):
    live_uri = str(tmp_path / "_live")
    scorer, live, engine = live_replica(artifacts["v1"], live_uri)
    n = scorer.n_items
    twin = "i7"
    ItemLog(live_uri).write([ItemChange("new-7", item_fields(artifacts["v1"], twin))])
    counts = asyncio.run(live.poll_once())
    assert counts == {"added": 1, "updated": 0, "retired": 0, "unchanged": 0} and scorer.n_items == n + 1
    position = scorer.positions_of(["new-7"], "x")[0]
    own = scorer.index.catalogue[scorer.positions_of([twin], "x")[0]]
    np.testing.assert_allclose(scorer.index.catalogue[position], own, atol=1e-4)  # the item tower, batched alike
    for user in range(12):  # wherever the twin is recommended, the new item is right beside it
        history = [str(i) for i in scorer.item_ids[scorer.stored_history(user)]]
        ranked = recommend(engine, history=history, k=n + 1)
        if twin not in history:
            assert abs(ranked.index(twin) - ranked.index("new-7")) == 1
    # histories may name the new item: the user tower reads its row of the grown catalogue
    same = scorer.user_vectors([scorer.positions_of(["i1", twin], "h")])
    grown = scorer.user_vectors([scorer.positions_of(["i1", "new-7"], "h")])
    np.testing.assert_allclose(same, grown, atol=1e-4)
    answer = asyncio.run(engine.score({"history": ["i1"], "item_ids": ["new-7", twin]}))
    assert answer["scores"][0]["score"] == pytest.approx(answer["scores"][1]["score"], abs=1e-3)


def test_retired_items_are_never_returned_and_a_changed_text_is_re_embedded(artifacts, tmp_path):
    live_uri = str(tmp_path / "_live")
    scorer, live, engine = live_replica(artifacts["v1"], live_uri)
    n = scorer.n_items
    ItemLog(live_uri).write([ItemChange("i3", None)])
    # a retirement alone
    assert asyncio.run(live.poll_once()) == {"added": 0, "updated": 0, "retired": 1, "unchanged": 0}
    ItemLog(live_uri).write([ItemChange("i5", item_fields(artifacts["v1"], "i8"))])
    asyncio.run(live.poll_once())
    np.testing.assert_allclose(scorer.index.catalogue[5], scorer.index.catalogue[8], atol=1e-4)
    for user in range(10):
        assert "i3" not in recommend(engine, user_id=list(scorer._user_position)[user], k=n)
    assert "i3" not in recommend(engine, history=["i3", "i1"], k=n, exclude_seen=False)  # a history may name it
    assert "i3" not in recommend(engine, history=["i1"], candidates=["i3", "i4"], k=5)
    assert recommend(engine, history=["i1"], candidates=["i3"], k=5) == []
    assert "i3" not in [i["item_id"] for i in engine.popular({"k": n})["items"]]
    assert "i3" not in recommend(engine, user_id="nobody", k=n)  # the popularity fallback
    scored = asyncio.run(engine.score({"history": ["i1"], "item_ids": ["i3", "i4"]}))
    assert [s["item_id"] for s in scored["scores"]] == ["i4"]  # a retired item is left out, not scored
    ItemLog(live_uri).write([ItemChange("i3", item_fields(artifacts["v1"], "i3"))])  # a PUT brings it back
    asyncio.run(live.poll_once())
    assert "i3" in recommend(engine, history=["i1"], k=n)
    # a replica that starts later replays everything to the same catalogue
    later, _, _ = live_replica(artifacts["v1"], live_uri)
    np.testing.assert_allclose(later.index.catalogue, scorer.index.catalogue, atol=1e-5)
    assert len(later.index.hidden) == 0 and later.n_items == n


def test_a_hybrid_ctr_model_embeds_new_items_from_text_alone(artifacts, tmp_path):
    live_uri = str(tmp_path / "_live")
    scorer, live, engine = live_replica(artifacts["c1"], live_uri)
    assert scorer.item_embedder is not None and scorer.item_embedder.backend == "torch"
    ItemLog(live_uri).write([ItemChange("fresh", {"title": "king queen movie", "genres": "Drama"})])
    asyncio.run(live.poll_once())
    answer = asyncio.run(engine.score({"history": ["i1", "i2"], "item_ids": ["fresh", "i4"]}))
    assert answer["score"] == "probability" and all(0 < s["score"] < 1 for s in answer["scores"])
    assert "fresh" in recommend(engine, history=["i1"], k=scorer.n_items)


def test_a_failed_poll_is_logged_and_retried(artifacts, tmp_path, monkeypatch, caplog):
    live_uri = str(tmp_path / "_live")
    scorer, live, _ = live_replica(artifacts["v1"], live_uri)
    ItemLog(live_uri).write([ItemChange("later", {"title": "star movie"})])
    calls = {"n": 0}
    real = live.item_log.read_new

    def flaky(seen):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("storage is down")
        return real(seen)

    monkeypatch.setattr(live.item_log, "read_new", flaky)

    async def follow_briefly() -> None:
        task = asyncio.ensure_future(live.follow(0.01))
        for _ in range(300):
            await asyncio.sleep(0.01)
            if "later" in scorer._item_position:
                break
        task.cancel()

    asyncio.run(follow_briefly())
    assert "later" in scorer._item_position and calls["n"] >= 2
    assert "storage is down" in caplog.text


def test_the_index_grows_replaces_and_hides_exactly_and_approximately():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # each vector's best match is itself
    for approximate in (None, build_index(vectors, IndexPlan("hnsw", "test", {"m": 8, "ef_construction": 40,
                                                                               "ef_search": 64}))):
        index = InnerProductIndex(vectors.copy(), use_faiss=False, approximate=approximate)
        query = vectors[10] * 5
        assert index.search(query, 1)[0][0] == 10
        added = index.add(query[None, :] * 2)  # a new item pointing the same way, longer: the best now
        assert added.tolist() == [300] and index.search(query, 1)[0][0] == 300
        index.hide(added)
        assert index.search(query, 1)[0][0] == 10
        index.replace(np.array([10]), -vectors[10:11])  # item 10 now points away
        found = index.search(query, 300)[0]
        assert found[-1] == 10 and 300 not in found and len(found) == 300
        index.show(added)
        assert index.search(query, 2)[0].tolist()[0] == 300


def test_a_put_that_leaves_the_text_as_it_is_neither_embeds_nor_grows_the_index(artifacts, tmp_path):
    live_uri = str(tmp_path / "_live")
    scorer, live, _ = live_replica(artifacts["v1"], live_uri)
    before = scorer.index.catalogue.copy()
    ItemLog(live_uri).write([ItemChange("i5", item_fields(artifacts["v1"], "i5"))])  # its training fields again
    assert asyncio.run(live.poll_once()) == {"added": 0, "updated": 0, "retired": 0, "unchanged": 1}
    np.testing.assert_array_equal(scorer.index.catalogue, before)  # the training vector stands, not re-embedded
    ItemLog(live_uri).write([ItemChange("new-1", {"title": "star movie"})])
    asyncio.run(live.poll_once())
    ItemLog(live_uri).write([ItemChange("new-1", {"title": "star movie"})])  # a live item PUT again as it is
    assert asyncio.run(live.poll_once())["unchanged"] == 1


def test_replaced_vectors_do_not_pile_up_in_a_faiss_index(caplog):
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(200, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    approximate = build_index(vectors, IndexPlan("hnsw", "test", {"m": 8, "ef_construction": 40, "ef_search": 64}))
    index = InnerProductIndex(vectors.copy(), use_faiss=False, approximate=approximate)
    caplog.set_level("INFO", logger="fusionrec.retrieval.topk")
    for n in range(100):  # the same item's text changes again and again
        index.replace(np.array([7]), vectors[(n % 50) + 50][None, :])
        assert index._faiss.ntotal <= 200 / (1 - 0.1) + 1  # dead rows stay under 10% of them
    assert "rebuilt" in caplog.text and index.approximate is not None and index.approximate.index is index._faiss
    index.replace(np.array([7]), vectors[3][None, :] * 3)  # now the best match of item 3's direction
    assert index.search(vectors[3], 2)[0].tolist() == [7, 3]
    assert index.search(vectors[120], 1, np.array([7]))[0].tolist() == [120]  # rows map to positions again


def test_a_poll_applies_changes_off_the_event_loop(artifacts, tmp_path, monkeypatch):
    """faiss adds and array copies run in the poll's worker thread: the replica's loop keeps answering."""
    live_uri = str(tmp_path / "_live")
    scorer, live, _ = live_replica(artifacts["v1"], live_uri)
    on_loop: list[bool] = []
    real = scorer.apply_items

    def apply_items(*args, **kwargs):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return real(*args, **kwargs)

    monkeypatch.setattr(scorer, "apply_items", apply_items)
    ItemLog(live_uri).write([ItemChange("new-1", {"title": "star movie"})])
    assert asyncio.run(live.poll_once())["added"] == 1 and on_loop == [False]


@pytest.mark.parametrize("version", ["v1", "c1"])
def test_readers_never_see_more_items_than_the_arrays_behind_them(artifacts, tmp_path, monkeypatch, version):
    """`apply_items` runs in a worker thread while requests read the scorer: after each of its assignments,
    everything a request does must still work (a longer id list than popularity or the catalogue = a 500)."""
    scorer, live, _ = live_replica(artifacts[version], str(tmp_path / "_live"))
    fields = [("new-a", {"title": "star movie"}), ("new-b", {"title": "king queen", "genres": "Drama"})]
    prepared = live._prepare([ItemChange(item, f, "0") for item, f in fields])
    vector = scorer.index.catalogue[:3].mean(axis=0)
    probes = {"n": 0}

    def read() -> None:
        for ranked in (scorer.popular(scorer.n_items), scorer.recommend(vector, None, scorer.n_items),
                       scorer.recommend(vector, None, 5, candidates=np.arange(scorer.n_items))):
            assert [str(scorer.item_ids[p]) + str(scorer.titles[p]) for p in ranked.positions]
        known = [item for item, _ in fields if item in scorer._item_position]
        if known:
            scorer.user_vectors([scorer.positions_of(known, "history")])
        probes["n"] += 1

    real = type(scorer).__setattr__

    def probing(self, name, value):
        real(self, name, value)
        if self is scorer:
            read()

    monkeypatch.setattr(type(scorer), "__setattr__", probing)
    live.apply(prepared)
    read()
    assert probes["n"] > 3 and scorer.positions_of(["new-a", "new-b"], "h").tolist() == [scorer.n_items - 2,
                                                                                         scorer.n_items - 1]


# --- the HTTP routes -----------------------------------------------------------------------------------------


@pytest.fixture
def api(artifacts, tmp_path):
    live_uri = str(tmp_path / "_live")
    replicas = {v: live_replica(artifacts[v], live_uri) for v in ("v1", "c1")}
    router = Router("shop-recs", {v: LocalClient(engine) for v, (_, _, engine) in replicas.items()},
                    {"v1": 100, "c1": 0}, live_catalogue=True)

    def client(auth: TokenAuth, writer: bool = True) -> TestClient:
        return TestClient(create_api(router, auth, LIMITS, items=ItemWriter(ItemLog(live_uri)) if writer else None))

    return client, replicas, live_uri


def test_put_then_recommend_and_delete_through_the_api(api, monkeypatch):
    monkeypatch.setenv("LIVE_READ", READ)
    monkeypatch.setenv("LIVE_WRITE", WRITE)
    make, replicas, live_uri = api
    client = make(TokenAuth(token_env="LIVE_READ", write_token_env="LIVE_WRITE"))
    read, write = {"Authorization": f"Bearer {READ}"}, {"Authorization": f"Bearer {WRITE}"}
    body = {"fields": {"title": "star war movie", "genres": ["Action", "Drama"], "year": 1999}}
    assert client.put("/v1/items/brand-new", json=body).status_code == 401
    refused = client.put("/v1/items/brand-new", json=body, headers=read)
    assert refused.status_code == 403 and "write token" in refused.json()["error"]
    stored = client.put("/v1/items/brand-new", json=body, headers=write)
    assert stored.status_code == 200, stored.text
    assert stored.json()["accepted"] == 1 and stored.json()["versions"] == ["c1", "v1"]
    assert stored.json()["change"] in [p.name for p in (Path(live_uri) / "items").iterdir()]
    for _, live, _ in replicas.values():
        asyncio.run(live.poll_once())
    ranked = client.post("/v1/recommend", json={"history": ["i1"], "k": 50}, headers=read).json()["items"]
    assert "brand-new" in [i["item_id"] for i in ranked]
    assert client.post("/v1/recommend", json={"history": ["i1"], "k": 5}, headers=write).status_code == 200
    batch = {"items": [{"item_id": f"b{n}", "fields": {"title": f"cat dog {n}"}} for n in range(3)]}
    assert client.put("/v1/items", json=batch, headers=write).json()["accepted"] == 3
    assert client.delete("/v1/items/brand-new", headers=read).status_code == 403
    assert client.delete("/v1/items/brand-new", headers=write).status_code == 200
    for _, live, _ in replicas.values():
        asyncio.run(live.poll_once())
    ranked = client.post("/v1/recommend", json={"history": ["i1"], "k": 50}, headers=read).json()["items"]
    assert "brand-new" not in [i["item_id"] for i in ranked] and "b1" in [i["item_id"] for i in ranked]


@pytest.mark.parametrize("route, body, field", [
    ("/v1/items/x", {"fields": {}}, "fields"),  # renders to no text
    ("/v1/items/x", {"fields": {"title": "  ", "colour": "red"}}, "fields"),
    ("/v1/items/x", {"fields": {"title": "ok", "rating": "high"}}, "fields.rating"),  # {rating:.1f} fails
    ("/v1/items/x", {"fields": {"title": {"nested": 1}}}, "fields.title"),
    ("/v1/items/x", {"fields": {"title": "a", "item_id": "b"}}, "fields"),
    ("/v1/items/x", {"fields": {"title": "a"}, "extra": 1}, "extra"),
    ("/v1/items", {"items": [{"item_id": "a", "fields": {"title": "a"}},
                             {"item_id": "b", "fields": {"year": 1990}}]}, "items[1].fields"),
    ("/v1/items", {"items": [{"item_id": "a", "fields": {"title": "a"}}, {"item_id": "a", "fields": {"title": "b"}}]},
     "items[1].item_id"),
    ("/v1/items", {"items": [{"item_id": f"a{n}", "fields": {"title": "a"}} for n in range(11)]}, "items"),
    ("/v1/items", {"items": []}, "items"),
])
def test_bad_items_are_422_naming_the_field_and_nothing_is_stored(artifacts, tmp_path, route, body, field):
    live_uri = str(tmp_path / "_live")
    template = ItemTextTemplate("{title}. Rating: {rating:.1f}")
    _, _, engine = live_replica(artifacts["v1"], live_uri, template)
    router = Router("shop-recs", {"v1": LocalClient(engine)}, {"v1": 100}, live_catalogue=True)
    client = TestClient(create_api(router, TokenAuth(), LIMITS, items=ItemWriter(ItemLog(live_uri))))
    answer = client.put(route, json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field, answer.json()
    assert not (Path(live_uri) / "items").exists() or not list((Path(live_uri) / "items").iterdir())
    assert client.put("/v1/items/x", json={"fields": {"title": "ok", "rating": 4}}).status_code == 200


def test_routes_say_live_items_are_off_and_read_tokens_write_without_write_tokens(api, monkeypatch):
    monkeypatch.setenv("LIVE_READ", READ)
    make, _, _ = api
    read = {"Authorization": f"Bearer {READ}"}
    off = make(TokenAuth(token_env="LIVE_READ"), writer=False)
    answer = off.put("/v1/items/x", json={"fields": {"title": "a"}}, headers=read)
    assert answer.status_code == 404 and answer.json()["field"] == "serving.live.items"
    assert off.delete("/v1/items/x", headers=read).status_code == 404
    on = make(TokenAuth(token_env="LIVE_READ"))
    assert on.put("/v1/items/x", json={"fields": {"title": "a"}}, headers=read).status_code == 200
    assert on.delete("/v1/items/x", headers=read).status_code == 200


def test_a_version_that_does_not_follow_live_items_refuses_writes_with_409(artifacts, tmp_path):
    live_uri = str(tmp_path / "_live")
    _, _, follows = live_replica(artifacts["v1"], live_uri)
    static = VersionEngine(VersionScorer.load(artifacts["v2"]))
    router = Router("shop-recs", {"v1": LocalClient(follows), "v2": LocalClient(static)}, {"v1": 100, "v2": 0})
    client = TestClient(create_api(router, TokenAuth(), LIMITS, items=ItemWriter(ItemLog(live_uri))))
    answer = client.put("/v1/items/x", json={"fields": {"title": "a"}})
    assert answer.status_code == 409 and "v2" in answer.json()["error"]
    assert not (Path(live_uri) / "items").exists()


def test_a_retired_item_leaves_the_ingress_popularity_fallback_at_once(artifacts, tmp_path):
    """The fallback answers from the popular list fetched last while a version has no replica: the ingress that
    retires an item drops it there at once, and a refresh from a replica that has not polled yet keeps it out."""
    live_uri = str(tmp_path / "_live")
    _, live, engine = live_replica(artifacts["v1"], live_uri)
    router = Router("shop-recs", {"v1": LocalClient(engine)}, {"v1": 100}, popular_k=50, live_catalogue=True)
    client = TestClient(create_api(router, TokenAuth(), LIMITS, items=ItemWriter(ItemLog(live_uri))))
    asyncio.run(router.refresh_info())

    def fallback() -> list[str]:
        answer = router._fallback("v1", "recommend", {"k": 50, "exclude_seen": False})
        assert answer is not None
        return [item["item_id"] for item in answer["items"]]

    top = fallback()[0]
    assert client.delete(f"/v1/items/{top}").status_code == 200
    assert top not in fallback()
    asyncio.run(router.refresh_info())  # the replica has not read the retirement yet
    assert top not in fallback()
    assert client.put(f"/v1/items/{top}", json={"fields": item_fields(artifacts["v1"], top)}).status_code == 200
    asyncio.run(live.poll_once())
    asyncio.run(router.refresh_info())
    assert top in fallback()


def test_write_token_file_that_appears_later_and_scope_rules(tmp_path, monkeypatch):
    from fusionrec.serving.errors import ApiError

    reads, writes = tmp_path / "read", tmp_path / "write"
    reads.write_text("r1\n")
    # Only the operator's mount of the Secret's optional write-tokens key may be missing (stand it in here).
    monkeypatch.setattr("fusionrec.serving.auth.MOUNTED_WRITE_TOKENS_FILE", str(writes))
    auth = TokenAuth(token_file=str(reads), write_token_file=str(writes))  # an optional Secret key, absent
    assert not auth.write_scope
    auth.check("Bearer r1", write=True)  # no write tokens: the read tokens may write
    writes.write_text("w1\n")
    monkeypatch.setattr("fusionrec.serving.auth.RECHECK_SECONDS", 0.0)
    auth.check("Bearer w1", write=True)
    auth.check("Bearer w1")  # a write token reads too
    with pytest.raises(ApiError) as refused:
        auth.check("Bearer r1", write=True)
    assert refused.value.status == 403 and "write token" in refused.value.message
    with pytest.raises(ApiError) as wrong:
        auth.check("Bearer nope", write=True)
    assert wrong.value.status == 403 and "invalid" in wrong.value.message


def test_a_missing_write_token_file_elsewhere_than_the_operators_mount_is_refused(tmp_path):
    """A mistyped local writeTokenFile must not silently let the read tokens write."""
    from fusionrec.errors import UserError
    from fusionrec.serving.config import MOUNTED_WRITE_TOKENS_FILE

    reads = tmp_path / "read"
    reads.write_text("r1\n")
    with pytest.raises(UserError) as refused:
        TokenAuth(token_file=str(reads), write_token_file=str(tmp_path / "write-tokns"))
    assert refused.value.field == "serving.auth.writeTokenFile" and "does not exist" in str(refused.value)
    assert MOUNTED_WRITE_TOKENS_FILE == "/etc/fusionrec/auth/write-tokens"  # the operator's AUTH_DIR + key


def test_live_items_render_with_the_template_training_used(artifacts):
    """A spec that sets no itemTextTemplate trains on the prepared dataset's (or the default): the artifact
    records the one used, and live items are rendered with it, not with a guess."""
    from fusionrec.artifact import load_artifact
    from fusionrec.serving.live_items import item_template

    artifact = load_artifact(artifacts["v1"])
    assert artifact.spec.data.item_text_template is None  # the test shop's spec leaves it to the data
    recorded = artifact.metrics["item_text_template"]
    texts = pd.read_parquet(artifact.items_path)["text"]
    assert texts.iloc[0] == ItemTextTemplate(recorded).render(_items_of(artifacts["v1"]).head(1)).iloc[0]
    assert item_template(artifact).template == recorded


def _items_of(artifact: Path) -> pd.DataFrame:
    shop = next(folder / "shop" for folder in artifact.parents if (folder / "shop").is_dir())
    items = pd.read_csv(shop / "items.csv", dtype=str)
    order = pd.read_parquet(artifact / "items.parquet")["item_id"].astype(str)
    return items.set_index("item_id").loc[order].reset_index()
