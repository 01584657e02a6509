"""`fusionrec serve` (a local Ray Serve app over one artifact) and `fusionrec recommend` (its client).

`serve` deploys the same application, through the same declarative config, as the operator does on a
cluster, so what works locally works there. It listens on loopback unless told otherwise. Auth is on: the
spec's (or an option's) token file or variable, else a token generated once into ~/.config/fusionrec/serving-token
(0600; `recommend` reads it). `--no-auth` turns it off, on loopback only (see fusionrec.serving.local_auth).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fusionrec.errors import UserError

if TYPE_CHECKING:
    from fusionrec.serving.config import AppArgs


@click.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback exposes the API (refused with --no-auth).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--token-file", type=click.Path(dir_okay=False), help="Require bearer tokens from this file.")
@click.option("--token-env", help="Require bearer tokens from this environment variable (comma-separated).")
@click.option("--no-auth", is_flag=True,
              help="Serve /v1/* without a bearer token (loopback only; a warning is printed). Default: a token "
                   "from the spec or the options, else one generated into ~/.config/fusionrec/serving-token.")
@click.option("--replicas", type=click.IntRange(1, 64),
              help="Run exactly this many model replicas, replacing the spec's minReplicas..maxReplicas "
                   "autoscaling range (also when above its maxReplicas).")
def serve(path: Path, host: str, port: int, token_file: str | None, token_env: str | None, no_auth: bool,
          replicas: int | None) -> None:
    """Serve an artifact folder (or the current version of a manifest) with a local Ray until Ctrl-C.

    \b
    Examples:
      fusionrec serve runs/v3
      fusionrec serve examples/movielens.yaml --port 8080
      fusionrec serve runs/v3 --token-file tokens.txt
      fusionrec serve runs/v3 --no-auth
    """
    from fusionrec.serving.local import deploy, start_local_serve, stop_local_serve

    artifact = resolve_artifact(path)
    args = local_args(artifact, token_file=token_file, token_env=token_env, replicas=replicas, host=host,
                      no_auth=no_auth)
    workdir = Path(tempfile.mkdtemp(prefix="fusionrec-serve-"))
    cpus = max(os.cpu_count() or 1, (replicas or args.serving.max_replicas) + 1)
    local = start_local_serve(workdir, host=host, port=port, num_cpus=cpus)
    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        click.echo(f"loading {artifact} ...", err=True)
        deploy(args)
        auth = args.serving.auth
        click.echo(banner(local.url, artifact, auth=not auth.disabled, token_file=auth.token_file))
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        click.echo("shutting down", err=True)
        stop_local_serve()
        shutil.rmtree(workdir, ignore_errors=True)


def resolve_artifact(path: Path) -> Path:
    """An artifact folder as given, or a manifest's `<spec.storage.uri>/[<name>/]<spec.version>`."""
    if path.is_dir():
        if not (path / "MANIFEST.json").is_file():
            raise UserError(f"{path} is not an artifact folder (no MANIFEST.json)",
                            fix="pass a version folder written by `fusionrec train`, e.g. runs/v1")
        return path
    from fusionrec.spec import load_manifest

    manifest = load_manifest(path)
    uri = manifest.spec.storage.uri
    if "://" in uri:
        raise UserError(f"spec.storage.uri {uri!r} is not a local folder; pass the artifact folder itself",
                        field="spec.storage.uri")
    roots = [Path(uri)] if Path(uri).is_absolute() else [Path(uri), path.parent / uri]  # as `train` wrote it
    version, name = manifest.spec.version, manifest.metadata.name
    tried = [folder for root in roots for folder in (root / version, root / name / version)]
    for folder in tried:
        if (folder / "MANIFEST.json").is_file():
            return folder
    raise UserError(f"no artifact for version {manifest.spec.version!r} of {path}; looked in "
                    f"{', '.join(str(t) for t in tried)}", field="spec.storage.uri",
                    fix=f"train it first: fusionrec train {path}")


def local_args(artifact: Path, *, token_file: str | None = None, token_env: str | None = None,
               replicas: int | None = None, host: str = "127.0.0.1", no_auth: bool = False) -> AppArgs:
    """The application's args for one local artifact, from the spec it was trained with; auth as
    `fusionrec.serving.local_auth.local_auth` decides (UserError for no auth on a non-loopback host)."""
    from fusionrec.artifact import load_artifact
    from fusionrec.serving.config import AppArgs, VersionArgs, with_live_uri
    from fusionrec.serving.local_auth import local_auth
    from fusionrec.spec import LIVE_FOLDER, ServingSpec

    loaded = load_artifact(artifact, verify=False)  # the replicas verify every file when they load it
    serving = loaded.spec.serving.model_copy(deep=True)
    if replicas is not None:
        # `--replicas N` fixes the count, as Ray Serve's `num_replicas` and `kubectl scale` do: it replaces the
        # spec's autoscaling range (both bounds), above its maxReplicas too. One validation of the new range:
        # assigning min then max one at a time trips the min <= max check in between (issue 17, item 5).
        if replicas > serving.max_replicas:
            click.echo(f"note: --replicas {replicas} is above the artifact's serving.maxReplicas "
                       f"({serving.max_replicas}); running {replicas} fixed replicas", err=True)
        serving = ServingSpec.model_validate({**serving.model_dump(by_alias=True), "minReplicas": replicas,
                                              "maxReplicas": replicas})
    auth = serving.auth
    if auth.secret_ref and not (token_file or token_env or auth.token_file or auth.token_env or no_auth):
        click.echo(f"note: serving.auth.secretRef {auth.secret_ref!r} is a cluster Secret; a local token is used "
                   "instead (or pass --token-file)", err=True)
    serving.auth = local_auth(auth, host=host, no_auth=no_auth, token_file=token_file, token_env=token_env,
                              say=lambda line: click.echo(line, err=True))
    # Item changes and events live beside the versions (the runner's layout: <root>/<version>, <root>/_live).
    serving = with_live_uri(serving, str(Path(artifact).resolve().parent / LIVE_FOLDER))
    return AppArgs(name=loaded.spec.version, serving=serving,
                   versions=[VersionArgs(version=loaded.version, artifact=str(Path(artifact).resolve()), weight=100)])


def banner(url: str, artifact: Path, *, auth: bool, token_file: str | None = None) -> str:
    """What to tell the user once the app is up: where it is and a request that works."""
    import pandas as pd

    users = pd.read_parquet(artifact / "users.parquet", columns=["user_id"])
    user = str(users["user_id"].iloc[0]) if len(users) else "42"
    header = (f' -H "Authorization: Bearer $(cat {token_file})"' if token_file
              else " -H 'Authorization: Bearer <token>'" if auth else "")
    return (f"serving {artifact.name} at {url}  (OpenAPI: {url}/docs, metrics: {url}/metrics)\n"
            f"  curl -s {url}/v1/recommend -H 'Content-Type: application/json'{header} "
            f"-d '{{\"user_id\": \"{user}\", \"k\": 5}}'\n"
            f"  fusionrec recommend --user {user} --url {url}\n"
            "Ctrl-C stops it.")


@click.command()
@click.option("--user", "user_id", help="User id the model knows.")
@click.option("--history", help="Comma-separated item ids, oldest first (instead of, or as well as, --user).")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, envvar="FUSIONREC_URL")
@click.option("-k", "--k", default=10, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--candidates", help="Comma-separated item ids to rank instead of the whole catalogue.")
@click.option("--include-seen", is_flag=True, help="Do not leave out the items of the history.")
@click.option("--token", envvar="FUSIONREC_TOKEN",
              help="Bearer token (or $FUSIONREC_TOKEN). Default for a loopback --url: the token local serving "
                   "generated (~/.config/fusionrec/serving-token).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON answer.")
def recommend(user_id: str | None, history: str | None, url: str, k: int, candidates: str | None,
              include_seen: bool, token: str | None, as_json: bool) -> None:
    """Ask a running `fusionrec serve` (or a cluster's endpoint) for recommendations.

    \b
    Examples:
      fusionrec recommend --user 42
      fusionrec recommend --history 50,172,133 -k 5 --url http://127.0.0.1:8080
    """
    from urllib.parse import urlsplit

    import httpx

    from fusionrec.serving.local_auth import is_loopback, read_token

    if user_id is None and history is None:
        raise UserError("give --user or --history", field="--user")
    body: dict[str, Any] = {"k": k, "exclude_seen": not include_seen}
    if user_id is not None:
        body["user_id"] = user_id
    if history is not None:
        body["history"] = _split(history)
    if candidates is not None:
        body["candidates"] = _split(candidates)
    if not token and is_loopback(urlsplit(url).hostname or ""):
        token = read_token()  # what `fusionrec serve` / `run` generated; never sent to another host
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.post(f"{url.rstrip('/')}/v1/recommend", json=body, headers=headers, timeout=30.0)
    except httpx.HTTPError as exc:
        raise UserError(f"no answer from {url}: {exc}", field="--url",
                        fix="start a server with `fusionrec serve <artifact>`, or pass its --url") from None
    answer = _json_or_text(response)
    if response.status_code >= 400:
        error = answer if isinstance(answer, dict) else {"error": answer}
        raise UserError(f"{response.status_code}: {error.get('error')}", field=error.get("field"))
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    note = f", fallback: {answer['fallback']}" if answer.get("fallback") else ""
    click.echo(f"model {answer['model_version']}{note}")
    for rank, item in enumerate(answer["items"], 1):
        click.echo(f"{rank:>3}  {item['score']:>9.4f}  {item['item_id']:<12} {item['title']}")


def _split(text: str) -> list[str]:
    return [piece.strip() for piece in text.split(",") if piece.strip()]


def _json_or_text(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text
