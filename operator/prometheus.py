"""Reading the candidate's SLO metrics from Prometheus, behind a one-method interface.

The controller depends on `MetricsSource` only, so unit tests pass a fake and the integration tests a
real Prometheus on loopback (the split KubeRay makes with its fake Serve dashboard client). Queries use
the serving contract's series: `fusionrec_requests_total{route,code,version}` and the histogram
`fusionrec_request_latency_seconds_bucket{version,le}`; the click-through gate reads the feedback counter
`fusionrec_feedback_events_total{version,type}` (one per accepted POST /v1/events event).
"""

from __future__ import annotations

import math
from typing import Protocol

import httpx

from fusionrec.operator.ctr_gate import Feedback
from fusionrec.operator.rollout import Measurement


class PrometheusError(Exception):
    """Prometheus could not answer (down, timeout, bad query): the analysis is inconclusive, not failed."""


class MetricsSource(Protocol):
    async def measure(self, *, namespace: str, name: str, version: str, window_seconds: int) -> Measurement:
        """The candidate `version`'s traffic over the last `window_seconds`."""
        ...

    async def feedback(self, *, namespace: str, name: str, version: str, window_seconds: int) -> Feedback:
        """Impressions and clicks recorded for `version` over the last `window_seconds`."""
        ...


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def series_selector(template: str, *, namespace: str, name: str, version: str) -> str:
    """Label matchers for one FusionRecommender's version, e.g. `namespace="recs",...,version="v2"`."""
    base = template.format(namespace=_escape(namespace), name=_escape(name)).strip().strip(",")
    matcher = f'version="{_escape(version)}"'
    return f"{base},{matcher}" if base else matcher


def request_rate_query(selector: str, window_seconds: int) -> str:
    """Requests answered: code 499 counts a client that hung up or timed out before the answer (nginx's
    convention), which says nothing about the version, so it is in neither the rate nor the error rate."""
    return f'sum(rate(fusionrec_requests_total{{{selector},code!="499"}}[{window_seconds}s]))'



def error_rate_query(selector: str, window_seconds: int) -> str:
    """Failed answers: 5xx, plus the popularity fallbacks an ingress gives when the version has no live replica
    (a 200 to the client, but not the version's model answering)."""
    return (f'(sum(rate(fusionrec_requests_total{{{selector},code=~"5.."}}[{window_seconds}s])) or vector(0)) + '
            f'(sum(rate(fusionrec_unavailable_total{{{selector},answer="fallback"}}[{window_seconds}s])) or vector(0))')


def p99_query(selector: str, window_seconds: int) -> str:
    return (f"histogram_quantile(0.99, sum by (le) "
            f"(rate(fusionrec_request_latency_seconds_bucket{{{selector}}}[{window_seconds}s])))")


def feedback_query(selector: str, event_type: str, window_seconds: int) -> str:
    """Events of one type over the window; `or vector(0)`: a version nobody has sent such an event for has none.

    `max`, not `sum`: every serving pod's /metrics is the metrics hub's total over all ingress replicas, so each
    scraped target carries the same counts, and a sum would count every event once per pod (more impressions
    than were shown, and a z-test that believes it has several times the evidence)."""
    return (f'max(increase(fusionrec_feedback_events_total{{{selector},type="{_escape(event_type)}"}}'
            f'[{window_seconds}s])) or vector(0)')


class PrometheusClient:
    """MetricsSource over Prometheus' HTTP API (`/api/v1/query`, instant queries)."""

    def __init__(self, url: str, selector_template: str, *, timeout: float = 10.0,
                 client: httpx.AsyncClient | None = None) -> None:
        self.url = url.rstrip("/")
        self.selector_template = selector_template
        self._client = client or httpx.AsyncClient(timeout=timeout)

    async def close(self) -> None:
        await self._client.aclose()

    async def query(self, promql: str) -> float | None:
        """The value of a query that yields one sample; None for an empty result or NaN."""
        try:
            response = await self._client.get(f"{self.url}/api/v1/query", params={"query": promql})
        except httpx.HTTPError as exc:
            raise PrometheusError(f"Prometheus at {self.url} is unreachable: {exc!r}") from exc
        try:
            body = response.json()
        except ValueError:
            raise PrometheusError(f"Prometheus answered HTTP {response.status_code} without JSON") from None
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"Prometheus refused {promql!r}: HTTP {response.status_code}, "
                                  f"{body.get('errorType')}: {body.get('error')}")
        result = body["data"]["result"]
        if body["data"]["resultType"] != "vector":
            raise PrometheusError(f"{promql!r} returned a {body['data']['resultType']}, not a vector")
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{promql!r} returned {len(result)} series; expected one after sum()")
        value = float(result[0]["value"][1])
        return None if math.isnan(value) else value

    async def measure(self, *, namespace: str, name: str, version: str, window_seconds: int) -> Measurement:
        selector = series_selector(self.selector_template, namespace=namespace, name=name, version=version)
        rps = await self.query(request_rate_query(selector, window_seconds))
        if not rps:
            return Measurement(requests_per_second=rps, error_rate=None, p99_latency_ms=None)
        errors = await self.query(error_rate_query(selector, window_seconds))
        p99 = await self.query(p99_query(selector, window_seconds))
        return Measurement(
            requests_per_second=rps,
            error_rate=(errors or 0.0) / rps,  # no 5xx series at all means no 5xx
            # +Inf means the quantile lies beyond the largest bucket: slower than anything measured, a breach.
            p99_latency_ms=None if p99 is None else p99 * 1000.0,
        )

    async def feedback(self, *, namespace: str, name: str, version: str, window_seconds: int) -> Feedback:
        selector = series_selector(self.selector_template, namespace=namespace, name=name, version=version)
        impressions = await self.query(feedback_query(selector, "impression", window_seconds))
        clicks = await self.query(feedback_query(selector, "click", window_seconds))
        return Feedback(impressions=impressions or 0.0, clicks=clicks or 0.0)
