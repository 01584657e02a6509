"""`fusionrec report ARTIFACT`: an offline HTML report with PNG plots for one model version."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("report")
@click.argument("artifact", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for index.html and the PNGs, the only files written there (default: "
                   "./reports/<version>/). Never inside the artifact: it is verified against MANIFEST.json.")
@click.option("--json", "as_json", is_flag=True, help="Print the written paths as JSON.")
def report(artifact: Path, out: Path | None, as_json: bool) -> None:
    """Write an HTML report of ARTIFACT (a version folder), after verifying its manifest.

    \b
    Plots: training and validation curves (best epoch marked); fusion weights per model, globally and
    across users; fused vs single encoders vs baselines (from comparison.json, else the model's own test
    metrics); serving latency p50/p95/p99 (from latency.json). A tampered artifact exits with code 2.
    When comparison.json records the selection, one line says what shipped and why, or warns that an encoder
    alone validated better than the shipped fused model.

    \b
    Examples:
      fusionrec report runs/v1                      # -> reports/v1/index.html
      fusionrec report runs/v1 --out /tmp/v1-report --json
    """
    from fusionrec.report import render_report

    written = render_report(artifact, out)
    if as_json:
        click.echo(json.dumps({"index": str(written.index),
                               "images": {key: str(path) for key, path in written.images.items()},
                               "notes": written.notes, "selection": written.selection}, indent=2))
        return
    click.echo(f"wrote {written.index} ({len(written.images)} plots)")
    if written.selection:
        click.echo(written.selection)
    for note in written.notes.values():
        click.echo(f"  note: {note}")
