"""`fusionrec train <manifest.yaml>`: fine-tune under Ray Train (a local Ray by default)."""

from __future__ import annotations

import json

import click

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as `fusionrec run` and `python -m fusionrec.train` exit

@click.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--output", type=click.Path(file_okay=False),
              help="Folder of versioned artifacts, or s3://bucket/prefix / gs://bucket/prefix to publish the "
                   "version there (default: the manifest's spec.storage.uri).")
@click.option("--work-dir", type=click.Path(file_okay=False),
              help="With an s3:// or gs:// output: where the local staging folder is made (default: the system's "
                   "temp folder); deleted once the version is published.")
@click.option("--address", help="Ray cluster to submit to (host:port, ray://..., auto); default RAY_ADDRESS, "
                                "else a local Ray sized to this machine.")
@click.option("--overwrite", is_flag=True, help="Replace an existing version.")
@click.option("--dashboard", is_flag=True, help="Start the Ray dashboard with a local Ray.")
@click.option("--json", "as_json", is_flag=True, help="Print the artifact, test metrics and history as JSON.")
def train(manifest: str, output: str | None, work_dir: str | None, address: str | None, overwrite: bool,
          dashboard: bool, as_json: bool) -> None:
    """Train, evaluate and write a model version: DDP over `training.workers` Ray Train workers, best
    checkpoint by validation, restarts from the last checkpoint on a lost worker.

    \b
    Examples:
      fusionrec train examples/movielens.yaml --output runs
      fusionrec train m.yaml --output s3://models/shop    # publishes s3://models/shop/<version>/
      fusionrec train m.yaml --address ray://head:10001
      fusionrec train m.yaml --json | jq .test
    """
    from fusionrec.cli.cluster_only import cluster_only_notes
    from fusionrec.spec import load_manifest
    from fusionrec.storage import StorageError
    from fusionrec.train.distributed import summary_table, train_distributed

    document = load_manifest(manifest)
    for note in cluster_only_notes(document.spec):
        click.echo(note, err=True)
    root = output or document.spec.storage.uri  # a folder, or s3:// / gs:// (published there)
    try:
        result = train_distributed(document, root, address=address, overwrite=overwrite, dashboard=dashboard,
                                   work_dir=work_dir)
    except StorageError as exc:  # a transfer failed (a retry may succeed); its text holds no credentials
        click.echo(f"error: object storage: {exc}", err=True)
        click.get_current_context().exit(1)
    except KeyboardInterrupt:
        # train_distributed stopped the workers and its Ray on the way out; the artifact is published last, so
        # an interrupted run left no version behind (click alone would print "Aborted!" and exit 1).
        click.echo(f"interrupted: nothing published for version {document.spec.version}; run again to train it",
                   err=True)
        click.get_current_context().exit(EXIT_INTERRUPTED)
    if as_json:
        click.echo(json.dumps({"artifact": str(result.artifact), "test": result.test, "best_epoch": result.best_epoch,
                               "best_checkpoint": result.best_checkpoint, "shipped": result.shipped,
                               "published": result.published, "history": result.history},
                              indent=2, default=str))
        return
    click.echo(summary_table(result))
