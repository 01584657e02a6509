"""Starting a local Ray, or connecting to an existing cluster, for one training run.

A local Ray started here is sized to the machine and kept out of the user's way: it listens on 127.0.0.1
only, keeps token authentication on with a token that lives in this process's environment (nothing is written
to `~/.ray/`, which may be read-only in CI), caps the object store (Ray's default takes 30% of RAM), writes
its session files and Python's temp files (`/tmp/pymp-*`) under the run folder (while it runs, a short folder in
the system temp dir when the run's path is too long for Ray's sockets; its files move under the run when Ray
stops), and runs without the dashboard unless asked. `--address` / `RAY_ADDRESS` connects to a running cluster
instead; an address that does not answer is a `UserError` raised in about a second, not after Ray's own minute
of retries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fusionrec.errors import UserError
from fusionrec.ray_compat import local_node_options

log = logging.getLogger(__name__)

DEFAULT_OBJECT_STORE_BYTES = 1 << 30  # training moves weights through files, not the object store
MIN_OBJECT_STORE_BYTES = 80 << 20  # Ray refuses less than ~75 MiB
# Ray's session folder holds Unix sockets, whose paths must stay under 108 bytes, and Ray appends ~64 bytes
# (`/session_<date>_<time>_<pid>/sockets/plasma_store`); a deeper run folder falls back to a short folder in
# the system temp dir (and the log says where).
MAX_TEMP_DIR_CHARS = 40
LOCAL_ADDRESSES = {"", "local"}
LOOPBACK_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Ray's raylet starts worker processes (Ray Train's included) at nice 15 unless told otherwise: the fused model
# then trains starved beside anything else on the machine. Ray's own job manager sets 0 for its drivers for the
# same reason; a value the user exported is kept.
NICENESS_VAR = "RAY_worker_niceness"
WORKER_NICENESS = "0"


@dataclass(frozen=True)
class RayConnection:
    """Where this run's Ray lives: `started` is True when this process started (and will stop) it."""

    address: str
    started: bool
    temp_dir: Path | None
    resources: dict[str, float]
    run_dir: Path | None = None  # a local Ray's run folder, where its session files stay once it stops


def requested_address(address: str | None) -> str | None:
    """The cluster to use: `--address`, else `RAY_ADDRESS`, else None (start a local Ray)."""
    chosen = address if address is not None else os.environ.get("RAY_ADDRESS")
    if chosen is None or chosen.strip() in LOCAL_ADDRESSES:
        return None
    return chosen.strip()


def check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail fast when nothing listens at `address` (host:port, ray://host:port or http://host:port).

    "auto" (the cluster this machine belongs to) is left to Ray, which knows where to look.
    """
    if address == "auto":
        return
    target = address.split("://", 1)[-1].rstrip("/")
    host, sep, port_text = target.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise UserError(f"--address {address!r} is not host:port", field="--address",
                        fix="e.g. --address 10.0.0.5:6379, ray://head:10001 or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port_text)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address!r}: {exc}", field="--address",
                        fix="check the head node's address and port, or omit --address (and unset RAY_ADDRESS) "
                            "to start a local Ray") from None


def object_store_bytes(requested: int | None = None) -> int:
    """The object store cap: `requested`, else 1 GiB but never more than a fifth of the free memory."""
    if requested is not None:
        if requested < MIN_OBJECT_STORE_BYTES:
            raise UserError(f"object store of {requested} bytes is below Ray's minimum of {MIN_OBJECT_STORE_BYTES}",
                            field="object_store_memory")
        return requested
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return DEFAULT_OBJECT_STORE_BYTES
    return max(MIN_OBJECT_STORE_BYTES, min(DEFAULT_OBJECT_STORE_BYTES, available // 5))


def ray_temp_dir(run_dir: Path) -> Path:
    """`<run_dir>/ray`, or a short folder in the system temp dir when that path is too long for sockets."""
    preferred = Path(run_dir).resolve() / "ray"
    if len(str(preferred)) <= MAX_TEMP_DIR_CHARS:
        preferred.mkdir(parents=True, exist_ok=True)
        return preferred
    short = Path(tempfile.mkdtemp(prefix="fusionrec-ray-"))
    log.info("Ray session files go to %s (%s is too long for Ray's socket paths)", short, preferred)
    return short


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set variables while Ray starts: its processes inherit them, this process gets its own back."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def local_environment(temp_dir: Path) -> dict[str, str]:
    """Environment of a local Ray: loopback only, temp files in the run, workers at normal priority, and token
    auth (Ray's default) with a token generated for this process instead of one Ray would write to
    `~/.ray/auth_token`."""
    env = {LOOPBACK_VAR: "0", "TMPDIR": str(temp_dir)}
    if NICENESS_VAR not in os.environ:
        env[NICENESS_VAR] = WORKER_NICENESS
    mode = os.environ.get("RAY_AUTH_MODE", "token").lower()
    if mode == "token" and not os.environ.get("RAY_AUTH_TOKEN"):
        env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    elif mode != "token":
        log.warning("RAY_AUTH_MODE=%s: the local Ray runs without token authentication", mode)
    return env


def _loopback_before_import() -> None:
    """Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when it is imported: set it first, or every Ray
    process binds to the machine's network address instead of 127.0.0.1."""
    if "ray" in sys.modules:
        if os.environ.get(LOOPBACK_VAR) != "0":
            log.info("ray was imported before %s=0 was set: the local Ray may bind to the network address",
                     LOOPBACK_VAR)
        return
    os.environ.setdefault(LOOPBACK_VAR, "0")


def start_local(run_dir: str | Path, *, num_cpus: int | None = None, num_gpus: int | None = None,
                object_store_memory: int | None = None, dashboard: bool = False) -> RayConnection:
    """Start a single-machine Ray for this process (see the module docstring for how it is set up)."""
    _loopback_before_import()
    import ray

    temp_dir = ray_temp_dir(Path(run_dir))
    cpus = num_cpus if num_cpus is not None else (os.cpu_count() or 1)
    env = local_environment(temp_dir)
    with _environment(env):
        ray.init(num_cpus=cpus, num_gpus=num_gpus, object_store_memory=object_store_bytes(object_store_memory),
                 include_dashboard=dashboard, configure_logging=False, log_to_driver=True,
                 **local_node_options(temp_dir))
    # Ray's processes (and so the workers) inherited the scoped variables; this process keeps the token,
    # since every client it opens to the cluster (Ray Train's included) must present the token.
    if "RAY_AUTH_TOKEN" in env:
        os.environ["RAY_AUTH_TOKEN"] = env["RAY_AUTH_TOKEN"]
    resources = ray.cluster_resources()
    log.info("started a local Ray: %s CPUs, %s GPUs, session files in %s", resources.get("CPU", 0),
             resources.get("GPU", 0), temp_dir)
    return RayConnection(ray.get_runtime_context().gcs_address, True, temp_dir, resources, Path(run_dir))


def connect(address: str) -> RayConnection:
    """Join a running cluster (its reachability checked first)."""
    import ray

    check_reachable(address)
    try:
        ray.init(address=address, configure_logging=False, log_to_driver=True)
    except (ConnectionError, RuntimeError) as exc:
        raise UserError(f"cannot connect to the Ray cluster at {address!r}: {exc}", field="--address",
                        fix="check the address and, with token auth, that RAY_AUTH_TOKEN holds the cluster's "
                            "token") from None
    return RayConnection(address, False, None, ray.cluster_resources())


@contextlib.contextmanager
def ray_session(address: str | None, run_dir: str | Path, *, num_cpus: int | None = None,
                dashboard: bool = False) -> Iterator[RayConnection]:
    """Ray for the span of a run: an already initialised Ray is reused as it is (a test's module cluster,
    a notebook's session); otherwise connect to `address` or start a local Ray, and stop what was started."""
    target = requested_address(address)
    if target is not None:
        check_reachable(target)
    else:
        _loopback_before_import()
    import ray

    if ray.is_initialized():
        yield RayConnection(ray.get_runtime_context().gcs_address, False, None, ray.cluster_resources())
        return
    connection = connect(target) if target is not None else start_local(run_dir, num_cpus=num_cpus,
                                                                         dashboard=dashboard)
    try:
        yield connection
    finally:
        with sigint_deferred():  # a second Ctrl-C must not leave a half-stopped Ray behind
            stop(connection)


def stop(connection: RayConnection) -> None:
    """Shut Ray down in this process; a local Ray's session files end up under the run (see `keep_session_files`)."""
    import ray

    ray.shutdown()
    if connection.started and connection.temp_dir is not None and connection.run_dir is not None:
        keep_session_files(connection.temp_dir, connection.run_dir)


def keep_session_files(temp_dir: Path, run_dir: str | Path) -> None:
    """Ray leaves its session folder behind on purpose: its logs are what explains a failed run. Under the run
    folder it stays with the run; the short folder used when the run's path is too long for sockets would pile up
    in the system temp dir, one per run, so its files join `<run_dir>/ray` (the sockets, dead once Ray is down,
    stay behind) and it is removed. If they cannot be copied it stays where it is, and the log says where."""
    kept = Path(run_dir).resolve() / "ray"
    if Path(temp_dir).resolve() == kept or not Path(temp_dir).is_dir():
        return
    try:
        shutil.copytree(temp_dir, kept, symlinks=True, ignore=_sockets_and_links, dirs_exist_ok=True)
    except (shutil.Error, OSError) as exc:
        log.warning("Ray's session files stay in %s (copying them to %s failed: %s)", temp_dir, kept, exc)
        return
    shutil.rmtree(temp_dir, ignore_errors=True)


def _sockets_and_links(folder: str, names: list[str]) -> list[str]:
    """Unix sockets cannot be copied and mean nothing once Ray is down; `session_latest` would point at the
    folder being removed."""
    skipped = []
    for name in names:
        mode = os.lstat(os.path.join(folder, name)).st_mode
        if stat.S_ISSOCK(mode) or stat.S_ISLNK(mode):
            skipped.append(name)
    return skipped


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C off while a cleanup runs (main thread only: Python handles signals there); one that arrives
    meanwhile is raised as KeyboardInterrupt once the cleanup is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt
