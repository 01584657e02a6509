"""`fusionrec embed <manifest.yaml>`: embed the catalogue with every frozen encoder on Ray Data."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as `fusionrec train` exits


@click.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--workers", type=click.IntRange(min=1),
              help="Ray Data actors per LM (default: one per GPU; without GPUs one per core, one torch thread each).")
@click.option("--output",
              help="Where finished shards are published: a folder, s3://bucket/prefix or gs://bucket/prefix "
                   "(default: <cache>/shards). A re-run, here or on any machine given the same output, embeds "
                   "only the shards not published yet.")
@click.option("--cache", type=click.Path(file_okay=False),
              help="The embedding cache that training and serving read (default: $FUSIONREC_EMBEDDING_CACHE, "
                   "else ~/.cache/fusionrec/embeddings).")
@click.option("--shard-size", type=click.IntRange(min=1),
              help="Items per shard, a multiple of the LM batch size 64 (default 512).")
@click.option("--address", help="Ray cluster to run on (host:port, ray://..., auto); default RAY_ADDRESS, else a "
                                "local Ray over this machine's cores.")
@click.option("--json", "as_json", is_flag=True, help="Print what was embedded, per LM, as JSON.")
def embed(manifest: str, workers: int | None, output: str | None, cache: str | None, shard_size: int | None,
          address: str | None, as_json: bool) -> None:
    """Embed the manifest's item catalogue with each frozen encoder, as a resumable Ray Data job, into the
    embedding cache that `fusionrec train`, `run`, `compile` and `serve` read, so none of them embeds it again.

    Each LM gets its own pool of actors that load it once; finished shards are published to --output as they
    complete, so an interrupted run loses only the shards in flight.

    \b
    Examples:
      fusionrec embed examples/movielens.yaml
      fusionrec embed m.yaml --workers 2
      fusionrec embed m.yaml --output s3://bucket/embeddings   # shards shared by every machine
      fusionrec embed m.yaml --address ray://head:10001 --json
    """
    from fusionrec.model.saved import embedding_cache_dir
    from fusionrec.spec import load_manifest
    from fusionrec.train.catalogue_embedding import DEFAULT_SHARD_SIZE, describe, embed_spec

    spec = load_manifest(manifest).spec
    try:
        result = embed_spec(spec, cache_dir=Path(cache) if cache else embedding_cache_dir(), output=output,
                            workers=workers, shard_size=shard_size or DEFAULT_SHARD_SIZE, address=address)
    except KeyboardInterrupt:  # (a failed transfer, StorageError, exits 1 through the command group)
        click.echo("interrupted: the shards published so far are kept; run again to embed the rest", err=True)
        click.get_current_context().exit(EXIT_INTERRUPTED)
    if as_json:
        runs = [{**asdict(run), "items_per_s": run.items_per_s} for run in result.encoders]
        click.echo(json.dumps({**asdict(result), "encoders": runs}, indent=2))
        return
    click.echo(describe(result))
