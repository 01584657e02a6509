"""The operator's own Prometheus metrics, on their own registry (tests run several operators in one process)."""

from __future__ import annotations

from dataclasses import dataclass, field
from threading import Thread
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


@dataclass
class OperatorMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.reconciles = Counter("fusionrec_operator_reconcile_total", "Reconciles by trigger and result.",
                                  ["trigger", "result"], registry=r)
        self.reconcile_seconds = Histogram("fusionrec_operator_reconcile_duration_seconds",
                                           "Time one reconcile took.", ["trigger"], registry=r,
                                           buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.training_jobs = Counter("fusionrec_operator_training_jobs_total",
                                     "RayJobs started and finished, by outcome.", ["outcome"], registry=r)
        self.rollout_weight = Gauge("fusionrec_operator_rollout_canary_weight",
                                    "Percent of traffic on the candidate version.", ["namespace", "name"], registry=r)
        self.rollout_step = Gauge("fusionrec_operator_rollout_step",
                                  "Index of the rollout step in progress; -1 when none.", ["namespace", "name"],
                                  registry=r)
        self.rollout_outcomes = Counter("fusionrec_operator_rollout_outcome_total",
                                        "Rollout gate decisions (Stepped, Promoted, RolledBack, Paused, Held).",
                                        ["outcome"], registry=r)
        self._server: Any = None
        self._thread: Thread | None = None

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve /metrics in a background thread; returns the bound port (useful with port 0 in tests)."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
