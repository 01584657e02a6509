"""The Prometheus client: the PromQL it sends and how it reads answers (HTTP faked with httpx.MockTransport)."""

from __future__ import annotations

import math

import httpx
import pytest

from fusionrec.operator.config import DEFAULT_SELECTOR
from fusionrec.operator.prometheus import (
    PrometheusClient,
    PrometheusError,
    error_rate_query,
    feedback_query,
    p99_query,
    request_rate_query,
    series_selector,
)


def test_queries_select_one_recommenders_version():
    selector = series_selector(DEFAULT_SELECTOR, namespace="recs", name="shop-recs", version="v2")
    assert selector == 'namespace="recs",service="shop-recs-metrics",version="v2"'
    assert request_rate_query(selector, 60) == f'sum(rate(fusionrec_requests_total{{{selector},code!="499"}}[60s]))'
    assert f'fusionrec_requests_total{{{selector},code=~"5.."}}[60s]' in error_rate_query(selector, 60)
    assert f'fusionrec_unavailable_total{{{selector},answer="fallback"}}[60s]' in error_rate_query(selector, 60)
    assert p99_query(selector, 30) == (f"histogram_quantile(0.99, sum by (le) "
                                       f"(rate(fusionrec_request_latency_seconds_bucket{{{selector}}}[30s])))")
    assert series_selector("", namespace="a", name="b", version='v"1') == 'version="v\\"1"'


def _vector(value: str | None) -> dict:
    result = [] if value is None else [{"metric": {}, "value": [1700000000.0, value]}]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def _client(answers: dict[str, dict], seen: list[str] | None = None, status: int = 200) -> PrometheusClient:
    def handler(request: httpx.Request) -> httpx.Response:
        query = request.url.params["query"]
        if seen is not None:
            seen.append(query)
        for needle, body in answers.items():
            if needle in query:
                return httpx.Response(status, json=body)
        raise AssertionError(f"unexpected query {query}")

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return PrometheusClient("http://prometheus:9090/", "", client=http)


@pytest.mark.asyncio
async def test_measure_turns_rates_into_error_rate_and_milliseconds():
    client = _client({"histogram_quantile": _vector("0.042"), "5..": _vector("0.5"), "sum(rate": _vector("10")})
    measured = await client.measure(namespace="recs", name="shop", version="v2", window_seconds=60)
    assert measured.requests_per_second == 10.0
    assert measured.error_rate == pytest.approx(0.05)
    assert measured.p99_latency_ms == pytest.approx(42.0)


@pytest.mark.asyncio
async def test_no_traffic_skips_the_other_queries():
    seen: list[str] = []
    client = _client({"sum(rate": _vector(None)}, seen)
    measured = await client.measure(namespace="recs", name="shop", version="v2", window_seconds=60)
    assert measured.requests_per_second is None and len(seen) == 1


@pytest.mark.asyncio
async def test_no_5xx_series_means_zero_errors_and_nan_means_no_data():
    client = _client({"histogram_quantile": _vector("NaN"), "5..": _vector(None), "sum(rate": _vector("3")})
    measured = await client.measure(namespace="recs", name="shop", version="v2", window_seconds=60)
    assert measured.error_rate == 0.0 and measured.p99_latency_ms is None
    client = _client({"histogram_quantile": _vector("+Inf"), "5..": _vector("0"), "sum(rate": _vector("3")})
    measured = await client.measure(namespace="recs", name="shop", version="v2", window_seconds=60)
    assert math.isinf(measured.p99_latency_ms)


@pytest.mark.asyncio
async def test_errors_are_prometheus_errors():
    bad = {"status": "error", "errorType": "bad_data", "error": "parse error"}
    with pytest.raises(PrometheusError, match="bad_data: parse error"):
        await _client({"": bad}, status=400).query("sum(")
    matrix = {"status": "success", "data": {"resultType": "matrix", "result": []}}
    with pytest.raises(PrometheusError, match="not a vector"):
        await _client({"": matrix}).query("x[1m]")
    unreachable = PrometheusClient("http://127.0.0.1:9", "", timeout=0.5)
    with pytest.raises(PrometheusError, match="unreachable"):
        await unreachable.query("up")
    await unreachable.close()


@pytest.mark.asyncio
async def test_feedback_counts_impressions_and_clicks_of_one_version_over_the_window():
    selector = series_selector(DEFAULT_SELECTOR, namespace="recs", name="shop-recs", version="v2")
    assert feedback_query(selector, "click", 900) == (
        f'max(increase(fusionrec_feedback_events_total{{{selector},type="click"}}[900s])) or vector(0)')
    seen: list[str] = []
    client = _client({'type="impression"': _vector("1520.5"), 'type="click"': _vector("61")}, seen)
    counts = await client.feedback(namespace="recs", name="shop", version="v2", window_seconds=900)
    assert (counts.impressions, counts.clicks) == (1520.5, 61.0)
    assert all('version="v2"' in q and "[900s]" in q for q in seen) and len(seen) == 2
    nothing = _client({"feedback_events": _vector(None)})
    counts = await nothing.feedback(namespace="recs", name="shop", version="v3", window_seconds=60)
    assert (counts.impressions, counts.clicks, counts.ctr) == (0.0, 0.0, None)
