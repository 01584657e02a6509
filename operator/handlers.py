"""kopf handlers: thin wiring from kopf's events to the Controller.

Run with `python -m fusionrec.operator` or `kopf run -m fusionrec.operator.handlers`. The settings are
read from the environment once, at import.

No finalizer: every child carries an owner reference, so the garbage collector removes them with their
FusionRecommender, and a finalizer would only make `kubectl delete frec` hang whenever the operator is
not running (uninstalled, scaled to 0). kopf adds a finalizer for its timers and daemons, so the periodic
reconcile is the operator's own loop over the objects kopf has seen (`on.event` keeps that set), and a
finalizer left by an older operator is removed by kopf at the first event, since no handler requires one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
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
log = logging.getLogger(__name__)
RESOURCE = (consts.GROUP, consts.VERSION, consts.PLURAL)


Key = tuple[str, str]  # (namespace, name)


@dataclass
class Runtime:
    """Everything one operator process shares across objects; lives in kopf's global memo."""

    controller: Controller
    kube: KubeApi
    prometheus: PrometheusClient | None
    metrics: OperatorMetrics
    # What the periodic loop reconciles: each object's reference (for its Events), kept by `on_any_event`.
    known: dict[Key, dict[str, Any]] = field(default_factory=dict)
    # One reconcile per object at a time: the change handlers and the loop would otherwise race to advance
    # the same rollout step.
    locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    loop_task: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self.loop_task is not None:
            self.loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.loop_task
        self.metrics.shutdown()
        await self.kube.close()
        if self.prometheus is not None:
            await self.prometheus.close()


@kopf.on.login()
def login(settings: kopf.OperatorSettings, logger: kopf.Logger, **kwargs: Any) -> kopf.ConnectionInfo:
    return resolve_connection(CONFIG, settings=settings, logger=logger, **kwargs)


@kopf.on.startup()
async def on_startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    # kopf posts an Event for every handler log line at INFO; the operator posts its own, meaningful ones.
    settings.posting.level = logging.WARNING
    settings.persistence.finalizer = f"{consts.GROUP}/finalizer"
    kube = KubeApi(lambda: resolve_connection(CONFIG, settings=settings, logger=logger))
    prometheus = (PrometheusClient(CONFIG.prometheus_url, CONFIG.prometheus_selector, timeout=CONFIG.prometheus_timeout)
                  if CONFIG.prometheus_url else None)
    if prometheus is None:
        logger.warning("FUSIONREC_PROMETHEUS_URL is not set: canaries whose spec.rollout.analysis.enabled is true "
                       "(the default) hold at their first step, with RolledOut=False, reason AnalysisUnavailable")
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


def _reference(body: kopf.Body | dict[str, Any]) -> dict[str, Any]:
    """What kopf.event needs to post an Event on an object, and nothing that goes stale."""
    meta = body["metadata"]
    return {"apiVersion": body.get("apiVersion", f"{consts.GROUP}/{consts.VERSION}"),
            "kind": body.get("kind", consts.KIND),
            "metadata": {"namespace": meta["namespace"], "name": meta["name"], "uid": meta.get("uid")}}


async def _reconcile(runtime: Runtime, ref: dict[str, Any], trigger: str) -> None:
    """Raises InvalidSpec for a spec that cannot work (already recorded in its status and Events)."""
    namespace, name = ref["metadata"]["namespace"], ref["metadata"]["name"]
    lock = runtime.locks.setdefault((namespace, name), asyncio.Lock())

    def post(type_: str, reason: str, message: str) -> None:
        # kopf types `objs` as its Body view, but reads them as mappings only; `ref` is a plain dict (_reference).
        kopf.event(ref, type=type_, reason=reason, message=message)  # type: ignore[arg-type]

    started, result = time.monotonic(), "ok"
    try:
        async with lock:
            await runtime.controller.reconcile(namespace, name, post)
    except InvalidSpec:
        result = "invalid"
        raise
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
    try:
        await _reconcile(memo.runtime, _reference(body), "change")
    except InvalidSpec as exc:
        raise kopf.PermanentError(str(exc)) from None
    except (KubeApiError, httpx.HTTPError) as exc:
        raise kopf.TemporaryError(f"Kubernetes API: {exc}", delay=CONFIG.sync_interval) from exc


@kopf.on.event(*RESOURCE)
async def on_any_event(body: kopf.Body, event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Keep the set of objects the periodic loop reconciles (the watch's first listing fills it).

    The loop starts here, at the first event, rather than at start-up: a task inherits the context it is
    created in, and only kopf's resource workers carry the context that `kopf.event` posts through.
    """
    runtime: Runtime = memo.runtime
    if runtime.loop_task is None:
        runtime.loop_task = asyncio.create_task(_periodic(runtime), name="fusionrec-periodic-reconcile")
    # A FusionRecommender is namespaced (the CRD's scope), so the API server always sets its namespace.
    assert body.metadata.namespace is not None
    key = (body.metadata.namespace, body.metadata.name)
    if event.get("type") == "DELETED":
        runtime.known.pop(key, None)
        runtime.locks.pop(key, None)
    else:
        runtime.known[key] = _reference(body)


# Objects reconciled at once by the loop: one slow object (a Prometheus query timing out) must not hold the
# others back, and a few hundred objects must not become a few hundred simultaneous API requests.
PERIODIC_CONCURRENCY = 16


async def _periodic(runtime: Runtime) -> None:
    """Every sync interval, reconcile each known object: re-read the children, move the rollout on, and
    resume whatever a restart interrupted. A failure is logged and retried on the next round.

    It logs through the module's logger: kopf's per-object logger (what handlers receive) would file another
    object's problems under the first one, and post them as its Events."""
    slots = asyncio.Semaphore(PERIODIC_CONCURRENCY)

    async def one(key: Key, ref: dict[str, Any]) -> None:
        async with slots:
            try:
                await _reconcile(runtime, ref, "timer")
            except InvalidSpec:
                pass  # in the status and an Event already; nothing changes until the spec does
            except (KubeApiError, httpx.HTTPError) as exc:
                log.warning("%s/%s: Kubernetes API: %s; retrying in %ss", *key, exc, CONFIG.sync_interval)
            except Exception:
                log.exception("%s/%s: reconcile failed; retrying in %ss", *key, CONFIG.sync_interval)

    await asyncio.sleep(min(1.0, CONFIG.sync_interval))
    while True:
        await asyncio.gather(*(one(key, ref) for key, ref in list(runtime.known.items())))
        await asyncio.sleep(CONFIG.sync_interval)
