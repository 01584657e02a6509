"""`fusionrec retrain MANIFEST`: a new version trained on the base data + the feedback events + the live catalogue,
through the same steps as `fusionrec run` (train -> evaluate -> compile -> canary against the serving version)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fusionrec.cli.run_cmd import run, run_document

if TYPE_CHECKING:
    from fusionrec.data.refresh import LiveData


@click.command()
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--version", "new_version", default=None,
              help="The new version's name (default: <spec.version>-r<UTC yyyymmddhhmm>, as a scheduled retrain "
                   "on a cluster names it).")
@click.option("--live", "live", default=None,
              help="Where the events and the live catalogue are (local folder, s3://, gs://). Default: "
                   "spec.serving.live.uri, else the _live folder beside the versions (<output>/_live). The new "
                   "version serves with it too.")
@click.option("--allow-empty", is_flag=True,
              help="Retrain even with no events (or serving.live.events off): the base data and the live "
                   "catalogue only.")
def retrain(manifest: Path, new_version: str | None, live: str | None, allow_empty: bool, **run_flags: object) -> None:
    """Train a new version of MANIFEST on its base data + the feedback events (POST /v1/events) + the live
    catalogue (PUT/DELETE /v1/items), then evaluate, compile and roll it out against the version that is serving,
    exactly as `fusionrec run` does (same flags, same exit codes).

    The refreshed dataset is published to <live>/datasets/<base>-live-<content hash>: a re-run with no new events
    or item changes reuses it (and every cached step). Clicks and purchases become implicit positives at their
    time (rating 4.0, the ctr task's positive threshold, where the data has ratings), ratings keep their value,
    impressions are left out; events on items that no catalogue holds are dropped and counted.

    \b
    Exit codes: as `fusionrec run` (0 done, 2 bad input, 3 rolled back,
    130 interrupted); also 2 when serving.live.events is off or the live
    folder holds no events (unless --allow-empty).

    \b
    Examples:
      fusionrec retrain examples/quickstart.yaml
      fusionrec retrain shop.yaml --version v2 --no-serve
      fusionrec retrain shop.yaml --live s3://shop/live --json > retrain.json
    """
    from fusionrec.data.refresh import read_live, refresh, refreshed_manifest
    from fusionrec.spec import load_manifest

    document = load_manifest(manifest)
    spec = document.spec
    version = check_version(new_version, spec.version)
    output = str(run_flags.get("output") or spec.storage.uri)
    live_uri = live or spec.serving.live.uri or default_live_uri(output)
    if not spec.serving.live.events and not allow_empty:
        from fusionrec.errors import UserError

        raise UserError("spec.serving.live.events is false: no feedback events are recorded, so a retrain would "
                        "learn nothing new", field="spec.serving.live.events",
                        fix="set serving.live.events: true and serve (POST /v1/events), or pass --allow-empty to "
                            "retrain on the base data and the live catalogue")
    data = read_live(live_uri)
    check_events(data, live_uri, allow_empty)
    refreshed = refresh(spec.data, spec.task.type, live_uri, data)
    click.echo(f"refreshed data: {refreshed.name} ({'reused' if refreshed.reused else 'published'} at "
               f"{refreshed.uri})\n{refreshed.summary.render()}", err=True)
    retrained = refreshed_manifest(document, refreshed, version=version, live_uri=live)
    run_document(retrained, **run_flags)  # type: ignore[arg-type]


def check_version(new_version: str | None, current: str) -> str:
    """The new version: --version as given (checked as the spec checks versions), else derived from the spec's."""
    from fusionrec.cron import retrain_version
    from fusionrec.errors import UserError
    from fusionrec.spec import _VERSION, VERSION_MAX  # the spec's own rule for spec.version

    version = new_version if new_version is not None else retrain_version(current, datetime.now(UTC))
    if len(version) > VERSION_MAX or not re.match(_VERSION, version):
        raise UserError(f"version {version!r} must be at most {VERSION_MAX} lowercase letters, digits, '-' and '.' "
                        "(a DNS subdomain)", field="--version", fix="pass a shorter --version, e.g. v2")
    if version == current:
        raise UserError(f"version {version!r} is the manifest's own spec.version; a retrain makes a new version",
                        field="--version", fix="pass another --version, or leave it out to derive one")
    return version


def default_live_uri(output: str) -> str:
    """The runner's default (`Runner._live_default`): `_live` beside the versions in the output."""
    from fusionrec.runner.build import check_local_output
    from fusionrec.spec import LIVE_FOLDER
    from fusionrec.storage import is_remote

    return f"{output.rstrip('/')}/{LIVE_FOLDER}" if is_remote(output) else str(check_local_output(output) / LIVE_FOLDER)


def check_events(live: LiveData, uri: str, allow_empty: bool) -> None:
    from fusionrec.errors import UserError

    if len(live.events) == 0 and not allow_empty:
        raise UserError(f"{uri} holds no feedback events", field="--live",
                        fix="serve with serving.live.events: true and POST /v1/events first, point --live (or "
                            "serving.live.uri) at where they are, or pass --allow-empty to retrain on the base data "
                            "and the live catalogue")


for _param in run.params[1:]:  # every flag of `fusionrec run` (the MANIFEST argument is retrain's own)
    retrain.params.append(_param)
