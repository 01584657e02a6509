"""A local Ray + Serve for `fusionrec serve`, the serving tests and the benches, set up the way these machines
need (design.md section 8): loopback only, a capped object store, temp files in the run folder, and Ray's
token auth kept on without writing `~/.ray/auth_token`.

Why each setting: Ray binds the node to the machine's address unless `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`;
its object store defaults to 30% of RAM, far more than serving small vectors needs on a shared machine; it
leaves `/tmp/pymp-*` and session folders behind unless TMPDIR and `_temp_dir` point at the run folder; and with
auth on by default it writes a token into the home directory. A per-process random token (`RAY_AUTH_TOKEN`)
keeps the cluster authenticated and leaves the home directory alone.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusionrec.errors import UserError
from fusionrec.ray_compat import deploy_apps, local_node_options, reload_auth_settings
from fusionrec.serving.config import INGRESS_NAME, AppArgs, parse_args

log = logging.getLogger(__name__)

DEFAULT_OBJECT_STORE_BYTES = 256 * 1024 * 1024
APP_NAME = "fusionrec"  # the operator's consts.SERVE_APP_NAME
IMPORT_PATH = "fusionrec.serving.app:build_app"


@dataclass(frozen=True)
class LocalServe:
    """Where a started local Serve listens."""

    host: str
    port: int
    temp_dir: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it; a race with another process is possible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start_local_serve(workdir: str | Path, *, host: str = "127.0.0.1", port: int = 0, num_cpus: int | None = None,
                      object_store_bytes: int = DEFAULT_OBJECT_STORE_BYTES, ray_auth: bool = True,
                      env: dict[str, str] | None = None) -> LocalServe:
    """Start a single-node Ray and Serve's HTTP proxy on `host:port` (0 = a free port).

    Args:
        workdir: run folder; Ray's session files and TMPDIR go under `<workdir>/ray` (kept short: Ray's
            socket paths must stay under 107 bytes).
        host: the proxy's address; loopback unless the caller really means to expose it.
        num_cpus: logical CPUs Ray schedules against (replicas reserve them); None = the machine's cores.
        object_store_bytes: the object store's cap.
        ray_auth: keep Ray's token auth on, with a random per-process token; False disables it (say so).
        env: extra environment for this process and every Ray worker it starts.
    """
    temp_dir = Path(workdir).resolve() / "ray"
    temp_dir.mkdir(parents=True, exist_ok=True)
    settings = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "TMPDIR": str(temp_dir),
                "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    if ray_auth:
        settings["RAY_AUTH_MODE"] = "token"
        settings.setdefault("RAY_AUTH_TOKEN", os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32))
    else:
        settings["RAY_AUTH_MODE"] = "disabled"
        log.warning("Ray token auth is disabled for this local cluster (loopback only)")
    os.environ.update(settings)  # workers inherit the driver's environment when the node starts
    reload_auth_settings()
    import ray
    from ray import serve

    port = port or free_port(host)
    ray.init(num_cpus=num_cpus, object_store_memory=object_store_bytes, include_dashboard=False,
             configure_logging=False, log_to_driver=False, **local_node_options(temp_dir))
    serve.start(http_options={"host": host, "port": port})
    return LocalServe(host=host, port=port, temp_dir=temp_dir)


def stop_local_serve() -> None:
    """Shut Serve and Ray down (both are no-ops when not running)."""
    import ray
    from ray import serve

    if ray.is_initialized():
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def serve_config(args: AppArgs | Mapping[str, Any], weights: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The serveConfigV2 document the operator writes, for `args` (checked here, before Ray sees them, and
    written by `AppArgs.document()`); `weights` (optional) goes to the ingress's `user_config` only, which
    Serve applies with `reconfigure`, without rebuilding the application."""
    parsed = parse_args(args if isinstance(args, AppArgs) else dict(args))
    application: dict[str, Any] = {"name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH,
                                   "args": parsed.document()}
    if weights is not None:
        application["deployments"] = [{"name": INGRESS_NAME, "user_config": {"weights": dict(weights)}}]
    return {"applications": [application]}


def deploy(args: AppArgs | Mapping[str, Any], *, weights: Mapping[str, int] | None = None,
           wait_s: float = 300.0) -> None:
    """Apply `serve_config(args, weights)` the way KubeRay does (a declarative config through the controller)
    and wait until the application runs; raises UserError with Serve's message when it fails to deploy."""
    deploy_apps(serve_config(args, weights))
    wait_until_running(wait_s)


def wait_until_running(wait_s: float = 300.0) -> None:
    """Block until the application is RUNNING with every deployment healthy (a config update first goes
    through DEPLOYING, so the controller's status is read until it settles)."""
    from ray import serve

    deadline = time.monotonic() + wait_s
    status = None
    while time.monotonic() < deadline:
        application = serve.status().applications.get(APP_NAME)
        status = application.status if application is not None else None
        if application is None:
            time.sleep(0.5)
            continue
        if status == "DEPLOY_FAILED":
            raise UserError(f"the serving application failed to deploy: {application.message}"
                            + "".join(f"\n  {name}: {_last_line(d.message)}" for name, d in
                                      application.deployments.items() if d.status != "HEALTHY" and d.message))
        if status == "RUNNING" and all(d.status == "HEALTHY" for d in application.deployments.values()):
            return
        time.sleep(0.5)
    raise UserError(f"the serving application is not running after {wait_s:.0f} s (status {status})")


def _last_line(message: str) -> str:
    """The exception line of a replica's traceback (what went wrong, without Ray's frames)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line.split(":", 1)[0]]
    return errors[-1] if errors else (lines[-1] if lines else message)
