"""Serving for `fusionrec run`: a local Ray Serve on loopback with the same application, args and canary
router the operator deploys on a cluster, plus the client side the run needs (sample recommendation,
latency sample) and the record of which version this output folder serves.

Ray is started here only when this process has none; a Ray already running in the process (a notebook,
a test's module cluster) is reused, and left running at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fusionrec.errors import UserError
from fusionrec.files import atomic_write_json
from fusionrec.ray_compat import proxy_address
from fusionrec.runner.cache import STATE_DIR
from fusionrec.serving.config import AppArgs, VersionArgs
from fusionrec.spec import ServingSpec

ENDPOINT = "/v1/recommend"
REQUEST_TIMEOUT_S = 60.0


@dataclass
class Version:
    """A model version the run serves: its name, the local artifact folder the run's own requests are built from,
    and, for a published version, the URI the replicas load it from (fetched and verified there)."""

    version: str
    artifact: Path
    uri: str | None = None

    @property
    def location(self) -> str:
        """What the replicas are told to load: the published URI, else the local folder."""
        return self.uri or str(self.artifact)


def app_args(name: str, versions: Sequence[Version], weights: Mapping[str, int], serving: ServingSpec) -> AppArgs:
    """The application's args (the operator's serveConfigV2 args): every version with its weight, and the
    spec's serving section, with a cluster Secret dropped (auth locally comes from tokenFile / tokenEnv)."""
    local = serving.model_copy(deep=True)
    local.auth.secret_ref = None
    return AppArgs(name=name, serving=local,
                   versions=[VersionArgs(version=v.version, artifact=v.location, weight=int(weights[v.version]))
                             for v in versions])


def bearer_headers(serving: ServingSpec) -> dict[str, str]:
    """The header the run's own requests carry when the spec turns auth on (the first configured token)."""
    from fusionrec.serving.auth import parse_tokens

    auth = serving.auth
    text = ""
    if auth.token_env:
        text = os.environ.get(auth.token_env, "")
    if not text.strip() and auth.token_file and Path(auth.token_file).is_file():
        text = Path(auth.token_file).read_text(encoding="utf-8")
    tokens = parse_tokens(text) if text else []
    return {"Authorization": f"Bearer {tokens[0].decode()}"} if tokens else {}


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot serve on {host}:{port}: {exc.strerror or exc}", field="--port",
                            fix="pass --port 0 (any free port) or another port, or stop what listens there") from None


class LocalServing:
    """Ray and Serve for one run. `start` brings them up (or finds them), `deploy` applies a serve config
    the way KubeRay does, `close` stops what this object started.

    Args:
        host, port: where Serve's HTTP proxy listens (port 0: a free one).
        num_cpus: logical CPUs of a Ray started here (replicas and training workers reserve them).
    """

    def __init__(self, host: str, port: int, num_cpus: int) -> None:
        self.host, self.port, self.num_cpus = host, port, num_cpus
        self.started = False
        self.url: str | None = None
        self._workdir: Path | None = None

    def start(self) -> str:
        import ray

        if self.url is not None:
            return self.url
        if ray.is_initialized():
            self.url = self._running_url()
            return self.url
        from fusionrec.serving.local import free_port, start_local_serve

        port = self.port or free_port(self.host)
        check_port_free(self.host, port)
        # Short: Ray's socket paths must stay under 107 bytes.
        self._workdir = Path(tempfile.mkdtemp(prefix="frun-"))
        local = start_local_serve(self._workdir, host=self.host, port=port, num_cpus=self.num_cpus)
        self.started = True
        self.url = local.url
        return self.url

    def _running_url(self) -> str:
        """Serve in a Ray this process already runs: start its proxy if needed, and ask where it listens."""
        from ray import serve

        try:
            host, port = proxy_address()  # Serve is running: its proxy's address
            return f"http://{host}:{port}"
        except Exception:  # noqa: BLE001  (no Serve yet in this Ray: start it where asked)
            from fusionrec.serving.local import free_port

            port = self.port or free_port(self.host)
            serve.start(http_options={"host": self.host, "port": port})
            return f"http://{self.host}:{port}"

    def deploy(self, args: AppArgs, weights: Mapping[str, int] | None = None, *, fresh: bool = False) -> None:
        """Apply the config; `fresh` deletes the running application first, so replicas reload their
        artifacts even when the args did not change (a version retrained in place)."""
        from ray import serve

        from fusionrec.serving.local import APP_NAME, deploy

        if fresh and APP_NAME in serve.status().applications:
            serve.delete(APP_NAME)
        deploy(args, weights=weights)

    def close(self) -> None:
        if self.started:
            from fusionrec.serving.local import stop_local_serve

            stop_local_serve()
            self.started = False
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


# --- the client side ------------------------------------------------------------------------------------


def post(client: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any] | None, float]:
    """(status, JSON answer or None, milliseconds) of one recommend request; a connection error is status 0."""
    import httpx

    started = time.perf_counter()
    try:
        response = client.post(ENDPOINT, json=body)
    except httpx.HTTPError:
        return 0, None, (time.perf_counter() - started) * 1000.0
    elapsed = (time.perf_counter() - started) * 1000.0
    try:
        answer = response.json()
    except ValueError:
        answer = None
    return response.status_code, answer if isinstance(answer, dict) else None, elapsed


def sample_requests(artifact: Path, n: int, seed: int = 0, known_by: Path | None = None) -> list[dict[str, Any]]:
    """`n` distinct requests: the version's known users first, then histories of its items (distinct, so
    no request is answered from the ingress's response cache); with `known_by` (another version's artifact), only
    of the items that version has too."""
    import pandas as pd

    users = pd.read_parquet(artifact / "users.parquet", columns=["user_id"])["user_id"].astype(str).tolist()
    bodies: list[dict[str, Any]] = [{"user_id": user, "k": 10} for user in users[:n]]
    items = pd.read_parquet(artifact / "items.parquet", columns=["item_id"])["item_id"].astype(str).to_numpy()
    if known_by is not None:
        other = pd.read_parquet(known_by / "items.parquet", columns=["item_id"])["item_id"].astype(str)
        items = items[np.isin(items, other.to_numpy())]
    rng = np.random.default_rng(seed)
    seen: set[tuple[str, ...]] = set()
    for _ in range(100 * n):  # bounded: a tiny catalogue may not have n distinct histories
        if len(bodies) >= n or not len(items):
            break
        history = tuple(rng.choice(items, size=min(len(items), int(rng.integers(1, 6))), replace=False).tolist())
        if history not in seen:
            seen.add(history)
            bodies.append({"history": list(history), "k": 10})
    return bodies


def sample_recommendation(client: Any, artifact: Path, k: int = 5) -> dict[str, Any]:
    """Top-k for the version's first known user, through the endpoint (user id, items with titles)."""
    import pandas as pd

    users = pd.read_parquet(artifact / "users.parquet", columns=["user_id"])["user_id"].astype(str)
    user = users.iloc[0] if len(users) else None
    body: dict[str, Any] = {"user_id": user, "k": k} if user is not None else {"history": [], "k": k}
    status, answer, _ = post(client, body)
    if status != 200 or answer is None:
        raise RuntimeError(f"the served endpoint answered {status} to {body}: {answer}")
    return {"user_id": user, "model_version": answer.get("model_version"), "items": answer.get("items", [])}


def latency_sample(client: Any, artifact: Path, n: int, warmup: int) -> dict[str, Any]:
    """`warmup` requests, then `n` sequential ones timed end to end: what latency.json records."""
    bodies = sample_requests(artifact, warmup + n, seed=1)
    for body in bodies[:warmup]:
        post(client, body)
    latencies, failed = [], 0
    for body in bodies[warmup:]:
        status, _, ms = post(client, body)
        latencies.append(round(ms, 3))
        failed += status != 200
    return {"requests": n, "latencies_ms": latencies, "endpoint": ENDPOINT, "failed": failed, "warmup": warmup,
            "when": datetime.now(UTC).isoformat(timespec="seconds")}


# --- which version this output folder serves -------------------------------------------------------------


@dataclass
class ServedState:
    """The version `fusionrec run` last served (or promoted) for a recommender, and its rollouts.

    A new version in the manifest rolls out against `current`, as the operator rolls out against the
    version in its status.
    """

    path: Path
    current: str | None = None
    artifact: str | None = None
    rollouts: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, root: Path, name: str) -> ServedState:
        import json

        path = root / STATE_DIR / f"served-{name}.json"
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls(path)
        return cls(path, document.get("current"), document.get("artifact"), list(document.get("rollouts", [])))

    def save(self) -> None:
        atomic_write_json(self.path, {"current": self.current, "artifact": self.artifact,
                                      "rollouts": self.rollouts[-20:]})
