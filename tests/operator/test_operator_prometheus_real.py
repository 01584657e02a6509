"""The SLO and click-through gates against a real Prometheus (Debian's `prometheus` package) on loopback.

The test runs a metrics endpoint it controls, shaped like the serving contract
(`fusionrec_requests_total{route,code,version}`, `fusionrec_request_latency_seconds` histogram), a
Prometheus scraping it every second, and asks the operator's PrometheusClient, then the whole Controller,
to judge the candidate while the traffic turns from good to bad.
"""

from __future__ import annotations

import asyncio
import copy
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import yaml
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from fusionrec.operator.builders.serving import ServedVersion
from fusionrec.operator.ctr_gate import judge_ctr
from fusionrec.operator.prometheus import PrometheusClient
from fusionrec.operator.rollout import judge
from fusionrec.operator.status import ConditionType, Phase
from fusionrec.spec import AnalysisSpec, CtrGateSpec

from test_operator_controller import Harness, serve_v1

PROMETHEUS = shutil.which("prometheus")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    PROMETHEUS is None, reason="the prometheus binary is missing: apt-get update && apt-get install -y prometheus")]
WINDOW = 5  # seconds; rate() needs two scrapes in the window
ANALYSIS = AnalysisSpec(max_error_rate=0.01, max_p99_latency_ms=50, window_seconds=10)
SELECTOR = 'job="fusionrec-test"'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Profile:
    error_rate: float
    latency_seconds: float
    hang_up_rate: float = 0.0  # clients that gave up before the answer: code 499, as serving counts them
    fallback_rate: float = 0.0  # no live replica: a 200 with the popularity answer, counted apart by serving


GOOD, BAD = Profile(0.0, 0.008), Profile(0.2, 0.2)


class Traffic:
    """Simulated serving traffic per version, exported the way fusionrec.serving exports it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("fusionrec_requests_total", "Requests.", ["route", "code", "version"],
                                registry=self.registry)
        self.latency = Histogram("fusionrec_request_latency_seconds", "Latency.", ["version"], registry=self.registry)
        self.unavailable = Counter("fusionrec_unavailable_total", "No live replica.", ["version", "answer"],
                                   registry=self.registry)
        self.events = Counter("fusionrec_feedback_events_total", "Feedback events.", ["version", "type"],
                              registry=self.registry)
        self.profiles: dict[str, Profile] = {}
        self.ctr: dict[str, float] = {}  # version -> click-through of the impressions it gets (20 a tick)
        self.port = free_port()
        self._stop = threading.Event()
        self._rng = random.Random(0)

    def run(self) -> None:
        while not self._stop.wait(0.05):
            for version, profile in list(self.profiles.items()):
                for _ in range(5):
                    draw = self._rng.random()
                    code = ("499" if draw < profile.hang_up_rate else
                            "500" if draw < profile.hang_up_rate + profile.error_rate else "200")
                    self.requests.labels("/v1/recommend", code, version).inc()
                    if code == "200" and self._rng.random() < profile.fallback_rate:
                        self.unavailable.labels(version, "fallback").inc()
                    self.latency.labels(version).observe(profile.latency_seconds * self._rng.uniform(0.8, 1.0))
            for version, ctr in list(self.ctr.items()):
                self.events.labels(version, "impression").inc(20)
                self.events.labels(version, "click").inc(sum(self._rng.random() < ctr for _ in range(20)))

    def start(self) -> None:
        self.server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()


@pytest.fixture(scope="module")
def traffic() -> Iterator[Traffic]:
    traffic = Traffic()
    traffic.start()
    yield traffic
    traffic.stop()


@pytest.fixture(scope="module")
def prometheus_url(traffic: Traffic, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir: Path = tmp_path_factory.mktemp("prometheus")
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": "fusionrec-test",
                                  "static_configs": [{"targets": [f"127.0.0.1:{traffic.port}"]}]}]}
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen([PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}",
                                f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                                "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"Prometheus did not start:\n{(workdir / 'prometheus.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


async def _eventually(check, what: str, timeout: float = 25.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last[0]:
            return last[1]
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out waiting until {what}; last: {last}")


@pytest.mark.asyncio
async def test_gate_passes_good_traffic_and_fails_bad(traffic, prometheus_url):
    traffic.profiles.update(v1=BAD, v2=GOOD)
    client = PrometheusClient(prometheus_url, SELECTOR)
    try:
        async def judged(version: str, passed: bool):
            measured = await client.measure(namespace="recs", name="shop-recs", version=version, window_seconds=WINDOW)
            verdict = judge(measured, ANALYSIS)
            return verdict.passed is passed, (measured, verdict)

        measured, verdict = await _eventually(lambda: judged("v2", True), "good v2 traffic passes")
        assert measured.error_rate == 0.0 and measured.p99_latency_ms < 50 and measured.requests_per_second > 10
        _, verdict = await _eventually(lambda: judged("v1", False), "bad v1 traffic fails")  # versions kept apart
        assert "error rate" in verdict.message and "p99 latency" in verdict.message

        traffic.profiles["v2"] = BAD
        measured, verdict = await _eventually(lambda: judged("v2", False), "v2 fails once its traffic turns bad")
        assert measured.p99_latency_ms > 50

        # Clients that hung up (499) say nothing about the version, either way: 80% of the requests hung up and
        # 0.4% of all failed, which is 2% of those answered, over maxErrorRate (1%). Counting the hang-ups as
        # answered would make it 0.4% and pass.
        traffic.profiles["v3"] = Profile(0.004, 0.008, hang_up_rate=0.8)

        async def judged_long(version: str, passed: bool):  # 10 s: enough requests to tell 0.4% from 2%
            measured = await client.measure(namespace="recs", name="shop-recs", version=version, window_seconds=10)
            verdict = judge(measured, ANALYSIS)
            return verdict.passed is passed, (measured, verdict)

        measured, verdict = await _eventually(lambda: judged_long("v3", False), "errors are a share of the answered")
        assert measured.error_rate > 0.01 and "error rate" in verdict.message

        # A canary whose replicas died answers with the popularity fallback: 200s, but not its model.
        traffic.profiles["v4"] = Profile(0.0, 0.008, fallback_rate=0.2)
        measured, verdict = await _eventually(lambda: judged("v4", False), "fallback answers fail the gate")
        assert measured.error_rate > 0.05 and "error rate" in verdict.message
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_click_through_gate_reads_the_feedback_counter(traffic, prometheus_url):
    """increase() of fusionrec_feedback_events_total per version and type, judged: a candidate clicking like the
    stable version passes, one with 40% fewer clicks fails (about 4000 impressions each in 10 s)."""
    traffic.ctr.update(c1=0.05, c2=0.05, c3=0.03)
    gate = CtrGateSpec(enabled=True, min_impressions=2000)
    client = PrometheusClient(prometheus_url, SELECTOR)
    try:
        async def judged(candidate: str, passed: bool):
            stable = await client.feedback(namespace="recs", name="shop-recs", version="c1", window_seconds=10)
            counts = await client.feedback(namespace="recs", name="shop-recs", version=candidate, window_seconds=10)
            verdict = judge_ctr(stable, counts, gate, waited_seconds=0, auto_rollback=True).verdict
            return verdict.passed is passed, (stable, counts, verdict)

        stable, counts, verdict = await _eventually(lambda: judged("c2", True), "c2 passes")
        assert stable.impressions >= 2000 and 0.03 < counts.clicks / counts.impressions < 0.07
        _, counts, verdict = await _eventually(lambda: judged("c3", False), "c3 fails")
        assert verdict.reason == "CtrBelowStable" and counts.clicks / counts.impressions < 0.04
        nothing = await client.feedback(namespace="recs", name="shop-recs", version="never", window_seconds=10)
        assert (nothing.impressions, nothing.clicks) == (0.0, 0.0)
    finally:
        traffic.ctr.clear()
        await client.close()


@pytest_asyncio.fixture
async def harness(kube_emulator, prometheus_url):
    h = Harness(*kube_emulator)
    prometheus = PrometheusClient(prometheus_url, SELECTOR)
    h.controller.metrics_source = prometheus
    yield h
    await prometheus.close()
    await h.kube.close()


@pytest.mark.asyncio
async def test_controller_steps_on_good_metrics_and_rolls_back_on_bad(harness, traffic, design_cr):
    h = harness
    cr = copy.deepcopy(design_cr)
    cr["spec"]["version"] = "v1"
    cr["spec"]["training"].pop("schedule")
    cr["spec"]["rollout"].update(steps=[10, 50, 100], stepIntervalSeconds=WINDOW)
    cr["spec"]["rollout"]["analysis"] = {"maxErrorRate": 0.01, "maxP99LatencyMs": 50, "windowSeconds": 10}
    candidate = "v7"  # a version the other test never sent traffic for
    traffic.profiles[candidate] = GOOD
    await serve_v1(h, cr)
    await h.set_spec(version=candidate)
    await h.reconcile()
    await h.finish_job(candidate, "SUCCEEDED")
    await h.reconcile()
    assert h.served() == [ServedVersion("v1", 90), ServedVersion(candidate, 10)]

    await asyncio.sleep(3)  # a few scrapes of the candidate's good traffic
    h.now += timedelta(seconds=WINDOW)
    status = await h.reconcile()
    assert h.served() == [ServedVersion("v1", 50), ServedVersion(candidate, 50)], \
        status.condition(ConditionType.ROLLED_OUT)
    assert status.metrics.verdict == "Pass" and status.metrics.requests_per_second > 10

    traffic.profiles[candidate] = BAD
    await asyncio.sleep(4)  # 20% errors over a few seconds of the 10 s window is well above 1%
    h.now += timedelta(seconds=WINDOW)
    status = await h.reconcile()
    assert h.served() == [ServedVersion("v1", 100)], status.condition(ConditionType.ROLLED_OUT)
    assert status.phase == Phase.DEGRADED and status.failed_version == candidate
    assert status.metrics.verdict == "Fail" and status.metrics.error_rate > 0.01
