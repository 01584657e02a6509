"""Every private Ray API fusionrec uses, in one place.

Tested with Ray 2.60.0 (the version `docker/ray-runtime-constraints.txt` pins and pyproject's `ray>=2.60,<2.61`
allows). Ray makes no promise about any name below; when Ray is upgraded, this module is what to check (and
its callers' tests: tests/serving/test_serving_ray.py, tests/runner, tests/train's local Ray tests), then the
bound in pyproject widened.

    late_asgi_ingress   `serve.ingress()` without an app + the `__serve_build_asgi_app__` hook: the ingress
                        builds its FastAPI app in the replica, after its constructor (the app closes over the
                        replica's router, auth and metrics hub).
    deploy_apps         `ray.serve.context._get_global_client().deploy_apps`: apply a declarative serve config
                        in-process, the way KubeRay (and `serve deploy`) applies serveConfigV2.
    proxy_address       `_get_global_client().http_config`: where a running Serve's HTTP proxy listens.
    reload_auth_settings  `ray._raylet.Config` / `AuthenticationTokenLoader`: make a process that imported Ray
                        already read RAY_AUTH_MODE / RAY_AUTH_TOKEN again.
    local_node_options  `ray.init(_temp_dir=..., _node_ip_address=...)`: a single-machine Ray whose session files
                        live under the run folder and whose node listens on loopback only.
    bound_autoscaling   `Application._bound_deployment` / `Deployment._deployment_config`: the autoscaling config
                        each deployment of a built (not deployed) application carries.
    deployed_deployments  `_get_global_client().get_serve_details()`: what the controller runs for an
                        application, per deployment (its deployment_config as deployed, target replica count).
    train_controllers   `ray.train.v2.api.data_parallel_trainer.DataParallelTrainer._register_sigint_handler`:
                        Ray Train's own Ctrl-C handler, replaced for a fit so Ctrl-C stops training cleanly.

Importing this module imports no Ray: callers set Ray's environment first (auth mode, token, TMPDIR).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

TESTED_RAY = "2.60.0"
LOOPBACK = "127.0.0.1"

T = TypeVar("T", bound=type)


def late_asgi_ingress(cls: T) -> T:
    """`@serve.ingress` for a class whose ASGI app is built per replica by `async def build_asgi_app(self)`,
    called once after `__init__`. Use below `@serve.deployment`."""
    from ray import serve

    if not callable(getattr(cls, "build_asgi_app", None)):
        raise TypeError(f"{cls.__name__} needs an `async def build_asgi_app(self)` returning its ASGI app")

    async def __serve_build_asgi_app__(self: Any) -> Any:  # noqa: N807  (Ray's hook name)
        return await self.build_asgi_app()

    cls.__serve_build_asgi_app__ = __serve_build_asgi_app__  # type: ignore[attr-defined]  # Ray's private hook
    return serve.ingress()(cls)


def _serve_client() -> Any:
    from ray.serve.context import _get_global_client

    return _get_global_client()


def deploy_apps(config: Mapping[str, Any]) -> None:
    """Apply a serveConfigV2-shaped document (`{"applications": [...]}`) to the Serve running in this
    process's Ray, as a declarative deploy; returns once the controller has taken it (not once it runs)."""
    from ray.serve.schema import ServeDeploySchema

    _serve_client().deploy_apps(ServeDeploySchema.model_validate(dict(config)))


def proxy_address() -> tuple[str, int]:
    """(host, port) of the running Serve's HTTP proxy; raises (Ray's own error) when Serve is not running."""
    config = _serve_client().http_config
    return str(config.host), int(config.port)


def reload_auth_settings() -> None:
    """Ray reads its auth mode and token once per process; when it was imported before the environment was
    set (a test module importing ray first), make it read them again, as `ray.init` itself does when it turns
    auth on. A no-op before Ray's first import (which reads the environment then)."""
    if "ray._raylet" not in sys.modules:
        return
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]  # a compiled module

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def local_node_options(temp_dir: str | Path) -> dict[str, Any]:
    """`ray.init` keyword arguments for a single-machine Ray: session files under `temp_dir` (keep it short:
    Ray's socket paths must stay under 107 bytes) and the node on loopback."""
    return {"_temp_dir": str(temp_dir), "_node_ip_address": LOOPBACK}


def bound_autoscaling(app: Any) -> dict[str, dict[str, Any] | None]:
    """{deployment name: its autoscaling_config as a JSON dict (None: a fixed replica count)} for every
    deployment an application binds: the ingress and, through its init args, every deployment it was bound to."""
    from ray.serve import Application

    found: dict[str, dict[str, Any] | None] = {}

    def walk(value: Any) -> None:
        if isinstance(value, Application):
            deployment = value._bound_deployment
            config = deployment._deployment_config.autoscaling_config
            found[deployment.name] = None if config is None else config.model_dump(mode="json")
            kwargs: Any = deployment.init_kwargs or {}  # a dict (Ray types it as a tuple)
            walk(list(deployment.init_args))
            walk(kwargs)
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(app)
    return found


def deployed_deployments(app_name: str) -> dict[str, dict[str, Any]]:
    """{deployment name: the controller's details of it} for a running application: `deployment_config` (with
    `autoscaling_config` as deployed), `target_num_replicas`, `replicas` ([{state, ...}]), `status`."""
    details = _serve_client().get_serve_details()
    application = details.get("applications", {}).get(app_name)
    return dict(application["deployments"]) if application else {}


@contextmanager
def train_controllers() -> Iterator[list[Any]]:
    """For the span of a Ray Train V2 `fit()`: record the run's controller actor instead of letting
    `DataParallelTrainer._register_sigint_handler` install Ray's SIGINT handler, which it never removes. That
    handler turns Ctrl-C into `ray.get(controller.abort.remote())` and `sys.exit`, and, left installed after the
    run's Ray was shut down, a later Ctrl-C makes `ray.get` start a fresh local Ray only to fail with "Can't find
    actor" (exit 1). Without it Ctrl-C is an ordinary KeyboardInterrupt in the driver, and the caller stops the
    controllers yielded here (`stop_actors`)."""
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    controllers: list[Any] = []
    original = DataParallelTrainer.__dict__["_register_sigint_handler"]

    def record(self: Any, controller: Any) -> None:
        controllers.append(controller)

    DataParallelTrainer._register_sigint_handler = record  # type: ignore[method-assign]
    try:
        yield controllers
    finally:
        DataParallelTrainer._register_sigint_handler = original  # type: ignore[method-assign]


def stop_actors(actors: list[Any]) -> None:
    """Kill actors (a Ray Train controller: its worker group dies with it) if this process is still connected;
    a cluster that is already gone has nothing left to stop."""
    import ray

    if not ray.is_initialized():
        return
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # dead already, or the cluster went away
            continue
