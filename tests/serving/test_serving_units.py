"""The serving parts that need no model and no Ray: top-k, the LRU, the traffic split, token auth, the
application args and the metrics merge."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusionrec.errors import UserError
from fusionrec.serving import auth as auth_module
from fusionrec.serving.auth import TokenAuth, parse_tokens
from fusionrec.serving.cache import LRUCache
from fusionrec.serving.config import (
    autoscaling_config,
    batch_config,
    cpus_of,
    max_ongoing_requests,
    model_deployment_name,
    parse_args,
)
from fusionrec.serving.errors import ApiError
from fusionrec.serving.metrics import ServingMetrics, merge, render
from fusionrec.serving.routing import TrafficSplit, bucket_of, check_weights, request_key
from fusionrec.serving.topk import InnerProductIndex, top_k
from fusionrec.spec import ServingSpec

# --- top-k ----------------------------------------------------------------------------------------------------


def _reference(scores: np.ndarray, k: int, exclude: set[int]) -> list[int]:
    order = sorted((i for i in range(len(scores)) if i not in exclude), key=lambda i: (-scores[i], i))
    return order[:k]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-5, 5), min_size=1, max_size=60), st.integers(1, 70), st.data())
def test_top_k_matches_a_full_sort_with_ties_broken_by_position(values, k, data):
    scores = np.asarray(values, dtype=np.float32)  # small integers: many ties
    exclude = data.draw(st.sets(st.integers(0, len(values) - 1), max_size=len(values)))
    got = top_k(scores, k, np.asarray(sorted(exclude), dtype=np.int64))
    assert got.tolist() == _reference(scores, k, exclude)


def test_top_k_refuses_bad_arguments():
    with pytest.raises(ValueError, match="k must be >= 1"):
        top_k(np.zeros(3), 0)
    with pytest.raises(ValueError, match="1-D"):
        top_k(np.zeros((2, 2)), 1)


def test_inner_product_index_ranks_by_dot_product_and_skips_excluded():
    rng = np.random.default_rng(0)
    catalogue = rng.normal(size=(50, 8)).astype(np.float32)
    user = rng.normal(size=8).astype(np.float32)
    index = InnerProductIndex(catalogue, use_faiss=False)
    positions, scores = index.search(user, 5, exclude=np.array([3, 3, 7]))
    expected = [i for i in np.argsort(-(catalogue @ user), kind="stable") if i not in (3, 7)][:5]
    assert positions.tolist() == expected
    np.testing.assert_allclose(scores, catalogue[expected] @ user, rtol=1e-6)
    assert index.backend == "numpy"


def test_faiss_index_agrees_with_the_matrix_product():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    catalogue = rng.normal(size=(300, 16)).astype(np.float32)
    user = rng.normal(size=16).astype(np.float32)
    exclude = np.array([int(np.argmax(catalogue @ user)), 5])
    exact = InnerProductIndex(catalogue, use_faiss=False).search(user, 10, exclude)
    indexed = InnerProductIndex(catalogue, use_faiss=True)
    assert indexed.backend == "faiss"
    got = indexed.search(user, 10, exclude)
    assert got[0].tolist() == exact[0].tolist()
    np.testing.assert_allclose(got[1], exact[1], rtol=1e-5)


# --- cache ----------------------------------------------------------------------------------------------------


def test_lru_cache_evicts_the_least_recently_used_entry():
    cache: LRUCache[int] = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    assert cache.stats() == {"entries": 2, "capacity": 2, "hits": 3, "misses": 1}
    disabled: LRUCache[int] = LRUCache(0)
    disabled.put("a", 1)
    assert disabled.get("a") is None and len(disabled) == 0


# --- traffic split --------------------------------------------------------------------------------------------


def test_split_follows_the_weights_and_sticks_per_user():
    split = TrafficSplit({"v1": 70, "v2": 30})
    picks = Counter(split.pick(request_key(f"user-{n}", None)) for n in range(10_000))
    assert 6_700 < picks["v1"] < 7_300 and picks["v1"] + picks["v2"] == 10_000
    assert all(split.pick(request_key("user-7", None)) == split.pick(request_key("user-7", None)) for _ in range(5))
    assert bucket_of("u:42") == bucket_of("u:42")  # a stable hash, not Python's salted one


def test_a_growing_canary_keeps_its_users():
    keys = [request_key(f"user-{n}", None) for n in range(2_000)]
    on_canary = {k for k in keys if TrafficSplit({"stable": 90, "canary": 10}).pick(k) == "canary"}
    later = TrafficSplit({"stable": 50, "canary": 50})
    assert on_canary and all(later.pick(k) == "canary" for k in on_canary)


def test_weight_zero_versions_get_no_traffic_and_bad_weights_are_refused():
    split = TrafficSplit({"blue": 0, "green": 100})
    assert {split.pick(request_key(f"u{n}", None)) for n in range(500)} == {"green"}
    assert split.live == ["green"]
    with pytest.raises(ValueError, match="sum to 100"):
        TrafficSplit({"a": 50, "b": 40})
    with pytest.raises(ValueError, match="non-negative integers"):
        TrafficSplit({"a": 110, "b": -10})


def test_requests_without_user_stick_by_history():
    assert request_key(None, ["i1", "i2"]) == request_key(None, ["i1", "i2"]) != request_key(None, ["i2", "i1"])
    assert request_key("u1", ["i1"]) == "u:u1"


# --- auth -----------------------------------------------------------------------------------------------------


def test_a_key_with_a_lone_surrogate_still_gets_a_bucket():
    """The schema refuses such ids; the router must not be the place where one turns into a 500."""
    assert bucket_of(request_key("\ud800", None)) == bucket_of(request_key("\ud800", None))
    assert 0 <= bucket_of(request_key(None, ["i1", "\udfff"])) < 100


def test_auth_is_off_without_a_token_source():
    TokenAuth().check(None)  # no exception


def test_auth_401_without_token_403_with_a_wrong_one(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# rotated monthly\nalpha\n\nbeta\n")
    auth = TokenAuth(token_file=str(tokens))
    for header in (None, "", "Bearer", "Bearer   ", "Basic YWxwaGE=", "alpha"):
        with pytest.raises(ApiError) as exc:
            auth.check(header)
        assert exc.value.status == 401 and exc.value.headers["WWW-Authenticate"].startswith("Bearer")
    for wrong in ("Bearer gamma", "Bearer alph", "Bearer alphaa", "Bearer # rotated monthly"):
        with pytest.raises(ApiError) as exc:
            auth.check(wrong)
        assert exc.value.status == 403 and "alpha" not in exc.value.message
    auth.check("Bearer alpha")
    auth.check("bearer beta")


def test_auth_reads_a_rotated_secret(tmp_path, monkeypatch):
    monkeypatch.setattr(auth_module, "RECHECK_SECONDS", 0.0)
    tokens = tmp_path / "tokens"
    tokens.write_text("old\n")
    auth = TokenAuth(token_file=str(tokens))
    auth.check("Bearer old")
    tokens.write_text("new\n")
    os.utime(tokens, (1e9, 1e9))  # a different mtime even on coarse-grained filesystems
    auth.check("Bearer new")
    with pytest.raises(ApiError):
        auth.check("Bearer old")


def test_auth_from_env_and_fail_closed_configurations(tmp_path, monkeypatch):
    monkeypatch.setenv("RECS_TOKENS", "one, two")
    auth = TokenAuth(token_env="RECS_TOKENS")
    auth.check("Bearer two")
    monkeypatch.delenv("RECS_TOKENS")
    with pytest.raises(UserError, match="RECS_TOKENS"):
        TokenAuth(token_env="RECS_TOKENS")
    with pytest.raises(UserError, match="does not exist"):
        TokenAuth(token_file=str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n# nothing\n")
    with pytest.raises(UserError, match="hold no token"):
        TokenAuth(token_file=str(tmp_path / "empty"))
    assert parse_tokens("a,b\n#c\n d ") == [b"a", b"b", b"d"]


# --- args and derived options ---------------------------------------------------------------------------------


def _args(**overrides):
    base = {"name": "shop", "versions": [{"version": "v1", "artifact": "/a/v1", "weight": 90},
                                         {"version": "v2", "artifact": "/a/v2", "weight": 10}],
            "serving": ServingSpec().model_dump(by_alias=True)}
    return {**base, **overrides}


def test_args_as_the_operator_writes_them_parse():
    parsed = parse_args(_args())
    assert parsed.weights == {"v1": 90, "v2": 10}
    blue_green = parse_args(_args(versions=[{"version": "v1", "artifact": "/a", "weight": 0},
                                            {"version": "v2", "artifact": "/b", "weight": 100}]))
    assert blue_green.weights["v1"] == 0


@pytest.mark.parametrize("versions, field", [
    ([{"version": "v1", "artifact": "/a", "weight": 60}], "args.versions"),
    ([{"version": "v1", "artifact": "/a", "weight": 50}, {"version": "v1", "artifact": "/b", "weight": 50}],
     "args.versions"),
    ([{"version": "V1!", "artifact": "/a", "weight": 100}], "args.versions[0].version"),
    ([{"version": "v1", "artifact": "/a", "weight": 100, "extra": 1}], "args.versions[0].extra"),
    ([], "args.versions"),
])
def test_bad_args_name_the_field(versions, field):
    with pytest.raises(UserError) as exc:
        parse_args(_args(versions=versions))
    assert exc.value.field == field


def test_args_are_written_one_way_and_read_back_unchanged():
    """`AppArgs.document()` is what the operator, `fusionrec serve` and `fusionrec run` put in serveConfigV2."""
    parsed = parse_args(_args())
    document = parsed.document()
    assert sorted(document) == ["name", "serving", "versions"]  # no tuning set: no autoscaling key
    assert parse_args(document) == parsed and document["versions"][1] == {"version": "v2", "artifact": "/a/v2",
                                                                          "weight": 10}
    tuned = parse_args(_args(autoscaling={"metricsIntervalS": 0.5}))
    assert tuned.document()["autoscaling"] == {"metricsIntervalS": 0.5, "lookBackPeriodS": None}
    assert parse_args(tuned.document()) == tuned


@pytest.mark.parametrize("weights, message", [
    ([], "at least one version"),
    ([("v1", 50), ("v1", 50)], "versions repeat"),
    ([("v1", 110), ("v2", -10)], "non-negative integers"),
    ([("v1", 60), ("v2", 30)], "must sum to 100"),
])
def test_one_weight_check_for_args_router_and_operator(weights, message):
    with pytest.raises(ValueError, match=message):
        check_weights(weights)
    if len({version for version, _ in weights}) == len(weights):  # a dict cannot repeat a version
        with pytest.raises(ValueError, match=message):
            TrafficSplit(dict(weights))  # the router's split
    assert check_weights([("v1", 90), ("v2", 10)]) == {"v1": 90, "v2": 10}


def test_serve_options_come_from_the_spec():
    serving = ServingSpec(min_replicas=2, max_replicas=6, target_ongoing_requests=3, max_batch_size=32,
                          batch_wait_timeout_ms=7, upscale_delay_s=1, downscale_delay_s=9)
    assert autoscaling_config(serving) == {"min_replicas": 2, "max_replicas": 6, "initial_replicas": 2,
                                           "target_ongoing_requests": 3, "upscale_delay_s": 1,
                                           "downscale_delay_s": 9}
    assert batch_config(serving) == {"max_batch_size": 32, "batch_wait_timeout_s": 0.007}
    assert max_ongoing_requests(serving) >= 32
    assert max_ongoing_requests(ServingSpec(max_batch_size=1, target_ongoing_requests=20)) >= 40
    assert cpus_of("500m") == 0.5 and cpus_of("2") == 2.0
    assert model_deployment_name("v1.2") == "model-v1-2"
    tuned = parse_args(_args(autoscaling={"metricsIntervalS": 0.5, "lookBackPeriodS": 2}))
    assert autoscaling_config(serving, tuned.autoscaling)["look_back_period_s"] == 2


# --- metrics --------------------------------------------------------------------------------------------------


def _value(text: str, line_start: str) -> float:
    return float(next(line for line in text.splitlines() if line.startswith(line_start)).rsplit(" ", 1)[1])


def test_metrics_of_two_replicas_are_summed():
    first, second = ServingMetrics(), ServingMetrics()
    first.observe_request("/v1/recommend", 200, "v1", 0.004)
    second.observe_request("/v1/recommend", 200, "v1", 0.3)
    second.observe_request("/v1/recommend", 401, None, 0.001)
    second.observe_batch("v1", 12)
    for metrics in (first, second):
        metrics.set_weights({"v1": 100})
        metrics.set_model("v1", "ranking", "ranking_score")
    text = render(merge([first.snapshot(), second.snapshot()])).decode()
    assert _value(text, 'fusionrec_requests_total{code="200",route="/v1/recommend",version="v1"}') == 2
    assert _value(text, 'fusionrec_requests_total{code="401",route="/v1/recommend",version="none"}') == 1
    assert _value(text, 'fusionrec_request_latency_seconds_bucket{le="0.005",route="/v1/recommend",version="v1"}') == 1
    assert _value(text, 'fusionrec_request_latency_seconds_count{route="/v1/recommend",version="v1"}') == 2
    assert _value(text, 'fusionrec_batch_size_sum{version="v1"}') == 12
    assert _value(text, 'fusionrec_model_info{score="ranking_score",task="ranking",version="v1"}') == 1
    assert _value(text, 'fusionrec_traffic_weight{version="v1"}') == 100  # a gauge: not summed
    assert render(merge([first.snapshot()])) == first.render()  # one replica renders as itself


# --- the ingress response cache ---------------------------------------------------------------------------------


class _CountingClient:
    """A version that answers with a fresh list each time and counts how often it is asked."""

    def __init__(self, version: str, fail: bool = False) -> None:
        self.version, self.fail, self.calls = version, fail, 0

    async def call(self, method: str, query: dict) -> dict:
        self.calls += 1
        if self.fail:
            return {"error": {"status": 404, "error": "unknown user", "field": "user_id"}}
        return {"version": self.version, "items": [{"item_id": str(self.calls)}], "batch": 1, "fallback": None}


def _ask(router, query: dict, method: str = "recommend") -> dict:
    import asyncio

    return asyncio.run(router.call(router.pick(query), method, query))


def test_repeated_requests_are_answered_by_the_ingress_cache_per_version():
    from fusionrec.serving.router import Router

    clients = {"v1": _CountingClient("v1"), "v2": _CountingClient("v2")}
    router = Router("shop", clients, {"v1": 100, "v2": 0})
    first = _ask(router, {"user_id": "7", "k": 10})
    again = _ask(router, {"k": 10, "user_id": "7"})  # key order does not matter
    assert again == first == {"version": "v1", "items": [{"item_id": "1"}]}
    assert clients["v1"].calls == 1
    assert _ask(router, {"user_id": "7", "k": 5})["items"] == [{"item_id": "2"}]  # another request, another key
    assert _ask(router, {"user_id": "7", "k": 10}, "score")["items"] == [{"item_id": "3"}]  # another method
    router.set_weights({"v1": 0, "v2": 100})
    assert _ask(router, {"user_id": "7", "k": 10})["version"] == "v2"  # the version is part of the key
    text = router.metrics.render().decode()
    assert 'fusionrec_response_cache_total{result="hit",version="v1"} 1.0' in text
    assert 'fusionrec_response_cache_total{result="miss",version="v1"} 3.0' in text
    # a returned answer is a copy: changing it does not change what the next request gets
    _ask(router, {"user_id": "7", "k": 10})["items"] = []
    assert _ask(router, {"user_id": "7", "k": 10})["items"] == [{"item_id": "1"}]


def test_errors_are_not_cached_and_capacity_zero_turns_the_cache_off():
    from fusionrec.serving.router import Router

    failing = _CountingClient("v1", fail=True)
    router = Router("shop", {"v1": failing}, {"v1": 100})
    for _ in range(2):
        with pytest.raises(ApiError, match="unknown user"):
            _ask(router, {"user_id": "x"})
    assert failing.calls == 2
    plain = _CountingClient("v1")
    uncached = Router("shop", {"v1": plain}, {"v1": 100}, response_cache_entries=0)
    assert [_ask(uncached, {"user_id": "7"})["items"][0]["item_id"] for _ in range(2)] == ["1", "2"]


def test_the_breaker_fails_fast_for_its_window_after_a_trip():
    from fusionrec.serving.breaker import Breaker

    now = [100.0]
    breaker = Breaker(1.0, clock=lambda: now[0])
    assert not breaker.is_open
    breaker.trip()
    now[0] += 0.9
    assert breaker.is_open
    now[0] += 0.2
    assert not breaker.is_open  # calls go through again, each bounded by the router's deadline
    breaker.trip()
    breaker.reset()
    assert not breaker.is_open
