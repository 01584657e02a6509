"""Prometheus metrics of the serving app, per version, as the rollout gate and the dashboards read them.

    fusionrec_requests_total{route,code,version}        counter; code="499": the client hung up first
    fusionrec_request_latency_seconds{route,version}    histogram (ingress time, request reaching the ingress
                                                        replica to its last response byte; 408s not timed)
    fusionrec_batch_size{version}                       histogram (one observation per user-tower batch)
    fusionrec_model_info{version,task,score}            gauge, 1 per served version
    fusionrec_traffic_weight{version}                   gauge, the version's percent of traffic
    fusionrec_unavailable_total{version,answer}         counter: no live replica; answer="503"|"fallback"
    fusionrec_feedback_events_total{version,type}       counter: feedback events newly stored (POST /v1/events;
                                                        a duplicate id is not counted again); version: the event's
                                                        model_version, "unknown" when it names none, "other"
                                                        when it names a version this app does not serve

Ray Serve replicas are separate processes and a scrape of the app's `/metrics` reaches one ingress replica
through the proxy, so per-replica registries alone would make counters jump between replicas' values
(Prometheus reads that as resets). Each ingress replica therefore records into its own registry and pushes a
snapshot of it (cumulative values, so a lost push is harmless) to one `MetricsHub`; `/metrics` returns the
hub's sum over replicas. Batch sizes are measured in the model replicas and travel back with the answers.
Ray's own metrics (`ray_serve_*`, on each node's metrics port) are left on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

NO_VERSION = "none"  # label of requests refused before a version was chosen (auth, validation)
# nginx's "client closed request": the client hung up (or timed out) before the answer. Not a server error, so
# error rates leave it out of both sides: 5xx / (all - 499).
CLIENT_CLOSED = 499
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

# One family: (name, type, documentation, samples); a sample: (name, sorted label pairs, value).
Sample = tuple[str, tuple[tuple[str, str], ...], float]
Family = tuple[str, str, str, list[Sample]]


class ServingMetrics:
    """One replica's registry of the serving metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("fusionrec_requests", "HTTP requests by route, status code and model version.",
                                ["route", "code", "version"], registry=self.registry)
        self.latency = Histogram("fusionrec_request_latency_seconds", "Request latency at the ingress.",
                                 ["route", "version"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("fusionrec_batch_size", "Histories per user-tower batch.", ["version"],
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.model_info = Gauge("fusionrec_model_info", "1 for each served model version.",
                                ["version", "task", "score"], registry=self.registry)
        self.weight = Gauge("fusionrec_traffic_weight", "Percent of traffic routed to a version.", ["version"],
                            registry=self.registry)
        self.response_cache = Counter("fusionrec_response_cache", "Ingress response-cache lookups by result.",
                                      ["version", "result"], registry=self.registry)
        self.unavailable = Counter("fusionrec_unavailable",
                                   "Requests a version could not answer (no live replica in the deadline), by what "
                                   "the client got: a 503 or the popularity fallback (a 200).",
                                   ["version", "answer"], registry=self.registry)
        self.feedback = Counter("fusionrec_feedback_events",
                                "Feedback events stored, by the model version that recommended the item and type "
                                "(impression, click, purchase, rating): per-version click-through for the canary.",
                                ["version", "type"], registry=self.registry)

    def observe_request(self, route: str, code: int, version: str | None, seconds: float | None) -> None:
        """Count one request; time it unless `seconds` is None (what the client's slowness decided)."""
        label = version or NO_VERSION
        self.requests.labels(route=route, code=str(code), version=label).inc()
        if seconds is not None:
            self.latency.labels(route=route, version=label).observe(seconds)

    def observe_batch(self, version: str, size: int) -> None:
        self.batch_size.labels(version=version).observe(size)

    def observe_response_cache(self, version: str, hit: bool) -> None:
        self.response_cache.labels(version=version, result="hit" if hit else "miss").inc()

    def observe_unavailable(self, version: str, fallback: bool) -> None:
        self.unavailable.labels(version=version, answer="fallback" if fallback else "503").inc()

    def observe_feedback(self, version: str, kind: str, count: int = 1) -> None:
        self.feedback.labels(version=version, type=kind).inc(count)

    def declare_feedback(self, versions: Iterable[str], kinds: Iterable[str]) -> None:
        """Create each (version, type) series at 0: Prometheus's increase() takes a series' first sample as
        its start, so a series born at 1 (a canary's first click) would lose that first count."""
        kinds = tuple(kinds)
        for version in versions:
            for kind in kinds:
                self.feedback.labels(version=version, type=kind)

    def set_weights(self, weights: Mapping[str, int]) -> None:
        for version, weight in weights.items():
            self.weight.labels(version=version).set(weight)

    def set_model(self, version: str, task: str, score: str) -> None:
        self.model_info.labels(version=version, task=task, score=score).set(1)

    def snapshot(self) -> list[Family]:
        """Plain, picklable families of this registry (what an ingress replica pushes to the hub)."""
        return [(m.name, m.type, m.documentation,
                 [(s.name, tuple(sorted(s.labels.items())), float(s.value)) for s in m.samples])
                for m in self.registry.collect()]

    def render(self) -> bytes:
        return generate_latest(self.registry)


def merge(snapshots: Iterable[list[Family]]) -> list[Family]:
    """Sum counters and histograms over replicas; gauges take the largest value (info and weight gauges are
    the same on every replica); `_created` timestamps take the earliest."""
    families: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for snapshot in snapshots:
        for name, kind, doc, samples in snapshot:
            _, _, values = families.setdefault(name, (kind, doc, {}))
            for sample, labels, value in samples:
                key = (sample, labels)
                if key not in values:
                    values[key] = value
                elif sample.endswith("_created"):
                    values[key] = min(values[key], value)
                elif kind == "gauge":
                    values[key] = max(values[key], value)
                else:
                    values[key] += value
    return [(name, kind, doc, [(s, labels, v) for (s, labels), v in values.items()])
            for name, (kind, doc, values) in families.items()]


def render(families: list[Family]) -> bytes:
    """Prometheus text exposition of merged families."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    return generate_latest(registry)


class _Fixed:
    """A collector that replays given families."""

    def __init__(self, families: list[Family]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        for name, kind, doc, samples in self.families:
            metric = Metric(name, doc, kind)
            for sample, labels, value in samples:
                metric.add_sample(sample, dict(labels), value)
            yield metric

    def describe(self) -> list[Any]:
        return []
