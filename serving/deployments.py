"""The Ray Serve deployments: one `ModelServer` per model version, the `Router` ingress, and the metrics hub.

They are thin: what a replica computes lives in `engine.py` (model side) and `router.py` / `api.py` (ingress
side), which run without Ray in the unit tests. Here are only the Serve-specific parts: `@serve.batch` with
`reconfigure` for the batch settings, handles with retries across replica deaths, and the metrics push.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from fusionrec.errors import UserError
from fusionrec.ray_compat import late_asgi_ingress
from fusionrec.serving.api import create_api
from fusionrec.serving.auth import TokenAuth
from fusionrec.serving.config import model_deployment_name
from fusionrec.serving.engine import Embedded, HistoryKey, VersionEngine
from fusionrec.serving.events import EventStore
from fusionrec.serving.events_api import feedback_counter
from fusionrec.serving.items_api import item_writer
from fusionrec.serving.metrics import ServingMetrics, merge, render
from fusionrec.serving.router import BackendUnavailable, Overloaded, Router
from fusionrec.spec import LiveSpec, ServingSpec

log = logging.getLogger("ray.serve")

RETRY_DELAYS_S = (0.05, 0.2, 0.5, 1.0, 2.0)  # a killed replica: Serve notices and routes around it within ~1 s
METRICS_PUSH_S = 2.0
STATUS_POLL_S = 1.0  # how often the ingress asks Serve which model deployments are being deployed


@serve.deployment
class ModelServer:
    """One model version: loads and verifies its artifact once, then answers recommend/score queries.

    Args:
        artifact: the version's artifact folder, as this replica sees it.
        version: the version the args say this is; it must match the artifact's own.
        threads: torch intra-op threads (the replica's CPUs).
        live: `serving.live` (camelCase): with `items` true the replica replays the item log before it answers
            and follows it every `pollSeconds` (fusionrec.serving.live_items).
    """

    def __init__(self, artifact: str, version: str, threads: int = 1, live: dict[str, Any] | None = None) -> None:
        import torch

        from fusionrec.serving.live_items import follow_in_background, start_live_items
        from fusionrec.serving.scorer import VersionScorer

        torch.set_num_threads(max(1, threads))
        live_spec = LiveSpec.model_validate(live or {})
        scorer = VersionScorer.load(artifact, live_items=live_spec.items)
        if scorer.version != version:
            raise UserError(f"args.versions names {version!r} but the artifact at {artifact} is version "
                            f"{scorer.version!r}", field="args.versions.artifact")
        self.live = start_live_items(scorer, live_spec.uri) if live_spec.items else None
        self.engine = VersionEngine(scorer, embed=self._embed, live=self.live)
        self._follower = follow_in_background(self.live, live_spec.poll_seconds) if self.live else None
        self.replica = str(serve.get_replica_context().replica_id)
        log.info("model %s loaded from %s: %d items, task %s", version, artifact, scorer.n_items, scorer.task)

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Batch settings (`user_config`): changed in place, no restart."""
        self._embed_batch.set_max_batch_size(int(config["max_batch_size"]))  # type: ignore[attr-defined]  # added by @serve.batch; ray types the method as the plain function
        self._embed_batch.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))  # type: ignore[attr-defined]

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def _embed_batch(self, keys: list[HistoryKey]) -> list[Embedded]:
        return await asyncio.to_thread(self.engine.embed_batch, keys)

    async def _embed(self, key: HistoryKey) -> Embedded:
        return await self._embed_batch(key)

    async def recommend(self, query: dict[str, Any]) -> dict[str, Any]:
        return await self.engine.recommend(query)

    async def score(self, query: dict[str, Any]) -> dict[str, Any]:
        return await self.engine.score(query)

    async def prepare_items(self, query: dict[str, Any]) -> dict[str, Any]:
        return await self.engine.prepare_items(query)

    def describe(self, _: Any = None) -> dict[str, Any]:
        return {**self.engine.describe(), "replica": self.replica}

    def popular(self, query: dict[str, Any]) -> dict[str, Any]:
        return self.engine.popular(query)

    def ready(self, _: Any = None) -> dict[str, Any]:
        return {"ready": True, "version": self.engine.version, "replica": self.replica}


class HandleClient:
    """A `VersionClient` over a DeploymentHandle: retries a call whose replica died (the calls are read-only,
    so a retry is safe), and turns an unavailable deployment into BackendUnavailable (503). The router bounds
    the whole call, retries included, by its deadline (a request queued for a replica that is still loading
    would otherwise wait for the load)."""

    def __init__(self, handle: DeploymentHandle, version: str) -> None:
        self.handle = handle
        self.version = version

    async def call(self, method: str, query: dict[str, Any]) -> dict[str, Any]:
        for delay in (*RETRY_DELAYS_S, None):
            try:
                return await getattr(self.handle, method).remote(query)
            except (RayActorError, ReplicaUnavailableError) as exc:
                if delay is None:
                    raise BackendUnavailable(f"model version {self.version}: no replica answered "
                                             f"({type(exc).__name__})") from exc
                await asyncio.sleep(delay)
            except BackPressureError as exc:
                raise Overloaded(f"model version {self.version} is overloaded: {exc}") from exc
            except DeploymentUnavailableError as exc:
                raise BackendUnavailable(f"model version {self.version} is unavailable: {exc}") from exc
        raise AssertionError("unreachable: the loop returns or raises")


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
class MetricsHub:
    """Sums the ingress replicas' metrics (each pushes its cumulative snapshot; see metrics.py)."""

    def __init__(self) -> None:
        self.snapshots: dict[str, list[Any]] = {}

    def push(self, replica: str, families: list[Any]) -> None:
        self.snapshots[replica] = families

    def render(self) -> bytes:
        return render(merge(self.snapshots.values()))


@serve.deployment
@late_asgi_ingress
class Ingress:
    """The HTTP entry point: auth, limits, the canary split, per-version metrics.

    Args:
        name: the application's name.
        versions: version -> its ModelServer deployment (every deployed version, weight 0 included).
        weights: version -> percent of traffic (`reconfigure({"weights": ...})` replaces it in place).
        serving: the spec's serving section (camelCase, as in the args).
        hub: the MetricsHub deployment.
    """

    def __init__(self, name: str, versions: dict[str, DeploymentHandle], weights: dict[str, int],
                 serving: dict[str, Any], hub: DeploymentHandle) -> None:
        self.serving = ServingSpec.model_validate(serving)
        self.auth = TokenAuth.from_spec(self.serving.auth)
        clients = {version: HandleClient(handle, version) for version, handle in versions.items()}
        limits = self.serving.limits
        self.router = Router(name, clients, weights, ServingMetrics(),
                             popular_k=limits.max_k + limits.max_history,  # maxK left after excluding a history
                             live_catalogue=self.serving.live.items)
        self.router.set_deploying(set(versions))  # until the first look at Serve's status: wait, as before
        self.hub = hub
        context = serve.get_replica_context()
        self.replica = str(context.replica_id)
        self.app_name = context.app_name
        self._pusher: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.events = self._event_store(context.replica_id.unique_id)
        self.items = item_writer(self.serving.live)

    def reconfigure(self, config: dict[str, Any]) -> None:
        """`user_config: {weights: {version: percent}}`: a canary step without restarting anything."""
        if config and config.get("weights"):
            self.router.set_weights({str(v): int(w) for v, w in config["weights"].items()})

    async def build_asgi_app(self) -> Any:
        """The replica's FastAPI app, built once after `__init__` (`fusionrec.ray_compat.late_asgi_ingress`)."""
        self._pusher = asyncio.get_running_loop().create_task(self._push_forever())
        self._watcher = asyncio.get_running_loop().create_task(self._watch_deploys())
        if self.events is not None:
            await self.events.start()
        return create_api(self.router, self.auth, self.serving.limits, metrics_text=self._metrics_text,
                          events=self.events, items=self.items)

    def _event_store(self, replica: str) -> EventStore | None:
        """`serving.live.events`: this replica's event log under `<serving.live.uri>/events/ingress-<id>/`."""
        live = self.serving.live
        if not live.events:
            return None
        if not live.uri:  # the deployers resolve it (serving.config.with_live_uri); args written by hand may not
            raise UserError("serving.live.events is true but serving.live.uri is not set", field="serving.live.uri",
                            fix="set serving.live.uri to a local folder, s3:// or gs:// prefix")
        return EventStore(live.uri, f"ingress-{replica}",
                          on_stored=feedback_counter(self.router.metrics, lambda: self.router.clients))

    async def __del__(self) -> None:
        """Serve's graceful shutdown: store the events still waiting for a flush (their clients get answers)."""
        events = getattr(self, "events", None)  # None too when __init__ failed before setting it
        if events is not None:
            await events.close()

    async def _push(self) -> None:
        await self.hub.push.remote(self.replica, self.router.metrics.snapshot())

    async def _push_forever(self) -> None:
        while True:
            await asyncio.sleep(METRICS_PUSH_S)
            try:  # bounded: a version that is loading (or gone) must not hold this replica's counters back
                await asyncio.wait_for(self.router.refresh_info(), METRICS_PUSH_S)
            except TimeoutError:
                pass
            except Exception as exc:  # noqa: BLE001
                log.warning("describing the model versions failed: %s", exc)
            try:
                await self._push()
            except Exception as exc:  # noqa: BLE001  (a hub restart must not end this replica's pushes)
                log.warning("metrics push to the hub failed: %s", exc)

    async def _watch_deploys(self) -> None:
        """Tell the router which versions Serve is deploying: their calls wait for the new replicas, while a
        version whose replicas died (its deployment not UPDATING) gets the deadline, 503 or the fallback."""
        while True:
            try:
                self.router.set_deploying(await asyncio.to_thread(deploying_versions, self.app_name,
                                                                  set(self.router.clients)))
            except Exception as exc:  # noqa: BLE001  (a controller restart must not end the watch)
                log.warning("could not read Serve's deployment status: %s", exc)
            await asyncio.sleep(STATUS_POLL_S)

    async def _metrics_text(self) -> bytes:
        try:
            await self._push()  # this replica's newest numbers, then everyone's sum
            return await self.hub.render.remote()
        except (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError) as exc:
            # A failed scrape is better than one replica's numbers, which Prometheus would read as resets.
            raise BackendUnavailable(f"the metrics hub is unavailable: {type(exc).__name__}") from exc


def deploying_versions(app_name: str, versions: set[str]) -> set[str]:
    """Versions whose model deployment Serve is deploying (UPDATING, or not listed yet); blocking."""
    application = serve.status().applications.get(app_name)
    if application is None:
        return set(versions)
    deployments = application.deployments
    return {version for version in versions
            if (deployment := deployments.get(model_deployment_name(version))) is None
            or deployment.status == "UPDATING"}
