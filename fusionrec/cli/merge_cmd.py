"""`fusionrec merge CONFIG --out DIR`: merge same-architecture checkpoints into a new model folder."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write the merged model to (created; written atomically).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists and is not empty.")
@click.option("--json", "as_json", is_flag=True, help="Print the merge summary as JSON (for scripts).")
def merge(config: Path, out_dir: Path, overwrite: bool, as_json: bool) -> None:
    """Merge checkpoints as CONFIG says: a merge spec, or a FusionRecommender manifest with spec.merge.

    Sources are model folders (relative to the current directory), pkg://, pvc:// or hf:// sources, or,
    in a manifest, encoder names. The output folder holds model.safetensors, the base's (or first model's)
    config and tokenizer files, and merge_report.json.

    \b
    Example CONFIG:
      method: ties
      base: ./minilm
      models: [{source: ./minilm-ranking, weight: 1.0}, {source: ./minilm-ctr, weight: 0.5}]
      density: 0.2
      lambda: 1.0

    \b
    Examples:
      fusionrec merge merge.yaml --out ./merged
      fusionrec merge examples/movielens.yaml --out ./merged --json   # a manifest's spec.merge
    """
    from fusionrec.model.merge.runner import load_merge_config, run_merge

    spec, encoders = load_merge_config(config)
    report = run_merge(spec, out_dir, encoders=encoders, overwrite=overwrite)
    summary = report.summary()
    if as_json:
        click.echo(json.dumps({"out": str(out_dir), "method": report.pretty_name,
                               "report": str(out_dir / "merge_report.json"), **summary}, indent=2, default=str))
        return
    models = sum(record.role == "model" for record in report.inputs)
    onto = " onto the base" if any(record.role == "base" for record in report.inputs) else ""
    click.echo(f"merged {models} models{onto} with {report.pretty_name} into {out_dir}")
    click.echo(f"  tensors: {summary['tensorsMerged']} merged, {summary['tensorsCopied']} copied; "
               f"mean |delta| {summary['meanAbsDelta']:.3g}")
    if summary["keptFraction"] is not None:
        click.echo(f"  task-vector entries kept: {summary['keptFraction']:.1%}")
    if summary["signConflictsResolved"] is not None:
        click.echo(f"  sign conflicts resolved: {summary['signConflictsResolved']}")
    click.echo(f"  report: {out_dir / 'merge_report.json'}")
