"""`fusionrec run MANIFEST`: the whole cycle on this machine, from the manifest a cluster would get."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from fusionrec.spec import Manifest

EXIT_ROLLED_BACK = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


@click.command()
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--output", type=click.Path(file_okay=False),
              help="Folder of versioned artifacts and the step cache, or s3://bucket/prefix / gs://bucket/prefix to "
                   "publish each version there and serve it from there (default: the manifest's spec.storage.uri, "
                   "relative to the current folder).")
@click.option("--work-dir", type=click.Path(file_okay=False),
              help="With an object-storage output: the local folder the run builds in (step cache, training, the "
                   "artifact before it is published). Default: one per URI under ~/.cache/fusionrec/runs "
                   "($FUSIONREC_CACHE/runs).")
@click.option("--serve/--no-serve", "serve", default=True, show_default=True,
              help="--no-serve stops after compile (no Ray Serve, no rollout).")
@click.option("--keep-serving/--no-keep-serving", "keep_serving", default=None,
              help="Keep the endpoint up until Ctrl-C. Default: on when run from a terminal (stdin and stdout "
                   "are TTYs) without --json, off otherwise (scripts, CI).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on (loopback by default).")
@click.option("--no-auth", is_flag=True,
              help="Serve without a bearer token (loopback only; warned). Default: the spec's serving.auth token "
                   "source, else a token generated into ~/.config/fusionrec/serving-token.")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port to serve on (default: spec.serving.port; 0 picks a free one).")
@click.option("--requests", "requests", type=click.IntRange(1, 100_000), default=50, show_default=True,
              help="Sequential requests timed after serving starts (written to the artifact's latency.json).")
@click.option("--no-cache", is_flag=True, help="Re-run every step even when its cached output is still valid.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON summary on stdout (steps, quality table, rollout, endpoint, sample); "
                   "progress goes to stderr.")
def run(manifest: Path, output: str | None, work_dir: str | None, serve: bool, keep_serving: bool | None, host: str,
        no_auth: bool, port: int | None, requests: int, no_cache: bool, as_json: bool) -> None:
    """Run MANIFEST end to end on this machine: prepare data, merge (if spec.merge), train on a local Ray,
    evaluate against each single encoder and the baselines, compile, serve on loopback, and print the
    endpoint, a sample recommendation and the quality table.

    Steps are cached by a hash of the spec parts and inputs they depend on: running the same manifest again
    skips every finished step ("cached") and only serves; changing a training field retrains. When the output
    folder already serves another version, the new one rolls out through the canary router
    (spec.rollout.steps, each step a weight change and a health/error/latency check on loopback); a failed
    check rolls traffic back to the old version.

    With spec.storage.uri (or --output) at s3:// or gs:// (credentials and endpoint from the environment:
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3; GOOGLE_APPLICATION_CREDENTIALS), the steps run
    in a local work folder, the compiled version is published to <uri>/<version> (verified, PUBLISHED marker
    last), and it is served from that URI, fetched and verified as a cluster replica would; a version already
    published there is served without being built again.

    \b
    Exit codes:
      0  done
      1  an unexpected failure (a bug, or a served endpoint that failed requests:
         the traceback is printed), or a transfer to object storage that failed
      2  bad input: the message names the field and the fix
      3  the new version failed its canary checks and was rolled back;
         the old version keeps serving
      130  interrupted (Ctrl-C): training stopped, Ray shut down, nothing
         half-written published; running again resumes from the cached steps

    \b
    Examples:
      fusionrec run examples/quickstart.yaml
      fusionrec run examples/movielens.yaml --output runs --no-serve
      fusionrec run examples/quickstart-s3.yaml     # storage.uri: s3://...; make quickstart-s3
      fusionrec -q run examples/quickstart.yaml --json > run.json
      fusionrec run examples/quickstart.yaml --keep-serving --port 8080
      curl -s localhost:8080/v1/recommend -H "Authorization: Bearer $(cat ~/.config/fusionrec/serving-token)" \
        -H 'Content-Type: application/json' -d '{"user_id": "196", "k": 5}'
      fusionrec recommend --user 196 --url http://127.0.0.1:8080    # reads the token itself
    """
    from fusionrec.spec import load_manifest

    run_document(load_manifest(manifest), output=output, work_dir=work_dir, serve=serve, keep_serving=keep_serving,
                 host=host, no_auth=no_auth, port=port, requests=requests, no_cache=no_cache, as_json=as_json)


def run_document(document: Manifest, *, output: str | None, work_dir: str | None, serve: bool,
                 keep_serving: bool | None, host: str, no_auth: bool, port: int | None, requests: int,
                 no_cache: bool, as_json: bool) -> None:
    """`fusionrec run` of a validated manifest: also what `fusionrec retrain` runs, with its data
    refreshed and a new version, so both go through the same steps, rollout and exit codes."""
    from fusionrec.cli.cluster_only import cluster_only_notes
    from fusionrec.errors import UserError
    from fusionrec.runner import Runner, RunOptions
    from fusionrec.storage import StorageError

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request drowns the steps
    for note in cluster_only_notes(document.spec):
        click.echo(note, err=True)
    if keep_serving is None:
        keep_serving = serve and not as_json and sys.stdin.isatty() and sys.stdout.isatty()
    if keep_serving and not serve:
        raise UserError("--keep-serving needs serving; drop --no-serve", field="--keep-serving")
    options = RunOptions(output=output, serve=serve, keep_serving=keep_serving, host=host, port=port,
                         requests=requests, use_cache=not no_cache, no_auth=no_auth, work_dir=work_dir)
    runner = Runner(document, options, say=lambda line: click.echo(line, err=True))
    failure: Exception | None = None
    try:
        # stdout carries the summary only: whatever a library prints while the run goes (Ray's workers and
        # its shutdown, the trainers) goes to stderr with the progress lines.
        with contextlib.redirect_stdout(sys.stderr):
            try:
                runner.run()
            except KeyboardInterrupt:
                _interrupted(runner)
            except Exception as exc:  # reported in the summary, then raised again: exit 2 or a traceback
                runner.report.error = exc.render() if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
                failure = exc
            if failure is not None or not keep_serving:
                runner.close()
        if as_json:
            click.echo(json.dumps(runner.report.to_json(), indent=2))
        elif failure is None:
            click.echo(runner.report.render())
        if isinstance(failure, StorageError):  # a transfer failed (a retry may succeed); its text holds no secret
            click.echo(f"error: object storage: {failure}", err=True)
            click.get_current_context().exit(1)
        if failure is not None:
            raise failure
        if keep_serving:
            runner.wait()
    finally:
        runner.close()
    if runner.report.rolled_back:
        click.get_current_context().exit(EXIT_ROLLED_BACK)


def _interrupted(runner: Any) -> None:
    """Ctrl-C during the run: stop serving and the run's Ray (training already stopped itself), say in one line
    what was and was not published, and exit 130 (click would print "Aborted!" and exit 1)."""
    from fusionrec.runner.run import interrupted_line
    from fusionrec.train.local_ray import sigint_deferred

    with sigint_deferred():
        runner.close()
    click.echo(interrupted_line(runner.report), err=True)
    click.get_current_context().exit(EXIT_INTERRUPTED)
