"""kopf handlers: thin wiring from kopf's events to the Controller.

Run with `python -m fusionrec.operator` or `kopf run -m fusionrec.operator.handlers`. The settings are
read from the environment once, at import, because the timer's interval is fixed when its decorator runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
import kopf
from fusionrec.operator import consts
from fusionrec.operator.config import OperatorConfig
from fusionrec.operator.controller import Controller, InvalidSpec
from fusionrec.operator.kube import KubeApi, KubeApiError, resolve_connection
from fusionrec.operator.metrics import OperatorMetrics
from fusionrec.operator.prometheus import PrometheusClient

CONFIG = OperatorConfig.from_env()
RESOURCE = (consts.GROUP, consts.VERSION, consts.PLURAL)


@dataclass
class Runtime:
    """Everything one operator process shares across objects; lives in kopf's global memo."""

    controller: Controller
    kube: KubeApi
    prometheus: PrometheusClient | None
    metrics: OperatorMetrics

    async def close(self) -> None:
        self.metrics.shutdown()
        await self.kube.close()
        if self.prometheus is not None:
            await self.prometheus.close()


@kopf.on.login()
def login(settings: kopf.OperatorSettings, logger: logging.Logger, **kwargs: Any) -> kopf.ConnectionInfo:
    return resolve_connection(CONFIG, settings=settings, logger=logger, **kwargs)


@kopf.on.startup()
async def on_startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    # kopf posts an Event for every handler log line at INFO; the operator posts its own, meaningful ones.
    settings.posting.level = logging.WARNING
    settings.persistence.finalizer = f"{consts.GROUP}/finalizer"
    kube = KubeApi(lambda: resolve_connection(CONFIG, settings=settings, logger=logger))
    prometheus = (PrometheusClient(CONFIG.prometheus_url, CONFIG.prometheus_selector, timeout=CONFIG.prometheus_timeout)
                  if CONFIG.prometheus_url else None)
    if prometheus is None:
        logger.warning("FUSIONREC_PROMETHEUS_URL is not set: rollout steps will advance without SLO analysis")
    metrics = OperatorMetrics()
    if CONFIG.metrics_port:
        port = metrics.serve(CONFIG.metrics_port, CONFIG.metrics_host)
        logger.info("operator metrics on http://%s:%d/metrics", CONFIG.metrics_host, port)
    controller = Controller(kube=kube, config=CONFIG, metrics_source=prometheus, operator_metrics=metrics)
    memo.runtime = Runtime(controller=controller, kube=kube, prometheus=prometheus, metrics=metrics)


@kopf.on.cleanup()
async def on_cleanup(memo: kopf.Memo, **_: Any) -> None:
    runtime = memo.get("runtime")
    if runtime is not None:
        await runtime.close()


async def _reconcile(memo: kopf.Memo, body: kopf.Body, trigger: str, *, permanent: bool) -> None:
    runtime: Runtime = memo.runtime
    # One reconcile per object at a time: the change handlers and the timer would otherwise race to
    # advance the same rollout step. (The per-object memo is shared by all handlers of that object.)
    lock = memo.setdefault("reconcile_lock", asyncio.Lock())

    def post(type_: str, reason: str, message: str) -> None:
        kopf.event(body, type=type_, reason=reason, message=message)

    started, result = time.monotonic(), "ok"
    try:
        async with lock:
            await runtime.controller.reconcile(body.metadata.namespace, body.metadata.name, post)
    except InvalidSpec as exc:
        result = "invalid"
        if permanent:
            raise kopf.PermanentError(str(exc)) from None
    except (KubeApiError, httpx.HTTPError) as exc:
        result = "error"
        raise kopf.TemporaryError(f"Kubernetes API: {exc}", delay=CONFIG.sync_interval) from exc
    except Exception:
        result = "error"
        raise
    finally:
        runtime.metrics.reconciles.labels(trigger=trigger, result=result).inc()
        runtime.metrics.reconcile_seconds.labels(trigger=trigger).observe(time.monotonic() - started)


@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
async def on_fusionrecommender_change(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """React at once to a new or changed spec (a new version starts training here)."""
    await _reconcile(memo, body, "change", permanent=True)


@kopf.timer(*RESOURCE, interval=CONFIG.sync_interval, initial_delay=min(1.0, CONFIG.sync_interval))
async def on_fusionrecommender_timer(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Re-read the children and move the rollout on; also what resumes the work after a restart."""
    await _reconcile(memo, body, "timer", permanent=False)
