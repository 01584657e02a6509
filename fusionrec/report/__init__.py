"""`fusionrec report`: an offline HTML page with PNG plots for one model version, so a reviewer can see how
it trained, which language model carries the recommendations, whether fusion beat each single encoder and
the baselines, and how fast it served, without opening a notebook.

The report is written outside the artifact (an artifact is immutable once its manifest is written: a file
added beside it would fail verification). Only the report's own files in the output folder are written (each
staged, then renamed in, the page last so it never links a missing image) or, when a plot is no longer drawn,
removed; anything else there, such as a README beside a committed example, is left alone.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fusionrec.errors import UserError
from fusionrec.protocol import selection_note
from fusionrec.report.html import render_page
from fusionrec.report.inputs import COMPARISON_NAME, LATENCY_NAME, ReportInputs, comparison_or_self, read_inputs
from fusionrec.report.plots import plot_comparison, plot_fusion_weights, plot_latency, plot_training

INDEX_NAME = "index.html"
IMAGE_NAMES = {"training": "training.png", "weights": "fusion_weights.png", "comparison": "comparison.png",
               "latency": "latency.png"}

COMPARISON_HINT = (f"No {COMPARISON_NAME} in this artifact, so only this model's own metrics are shown. "
                   "`fusionrec run <manifest>` trains each single encoder and the baselines on the same split "
                   f"and adds {COMPARISON_NAME} to the artifact.")
LATENCY_HINT = (f"No {LATENCY_NAME} in this artifact, so there is no latency plot. It records a serving run "
                '({"requests", "latencies_ms", "endpoint", "when"}) and is added to the artifact with '
                "fusionrec.artifact.add_files.")


@dataclass(frozen=True)
class Report:
    """What `render_report` wrote: the page, its plots by section, the notes shown instead of plots, and the
    selection line (what shipped and why, or a warning that one encoder alone validated better than the
    shipped fused model; None when comparison.json has nothing to say about it)."""

    index: Path
    images: dict[str, Path] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    selection: str | None = None


def default_out(version: str) -> Path:
    """`./reports/<version>/`: beside the working directory, never inside the artifact."""
    return Path("reports") / version


def write_report(artifact: Path, out: Path) -> Path:
    """Verify `artifact`, write its report to `out` (index.html and PNGs) and return the index.html path."""
    return render_report(artifact, out).index


def render_report(artifact: Path, out: Path | None = None) -> Report:
    """Like `write_report`, returning every path; `out` defaults to `default_out(version)`.

    Raises UserError when the artifact fails verification (the message names the file), when an optional
    file is malformed, or when `out` lies inside the artifact or is a file.
    """
    inputs = read_inputs(artifact)
    out = Path(out) if out is not None else default_out(inputs.version)
    _check_out(out, inputs.artifact)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".report-", dir=out) as staging:
        images, notes = _draw(inputs, Path(staging))
        (Path(staging) / INDEX_NAME).write_text(render_page(inputs, images, notes), encoding="utf-8")
        for path in images.values():
            if path is not None:
                os.replace(path, out / path.name)
        os.replace(Path(staging) / INDEX_NAME, out / INDEX_NAME)
    for key, name in IMAGE_NAMES.items():
        if images[key] is None:
            (out / name).unlink(missing_ok=True)  # a plot from an earlier report that this one does not draw
    return Report(index=out / INDEX_NAME, images={k: out / p.name for k, p in images.items() if p is not None},
                  notes={k: v for k, v in notes.items() if k != "selection"}, selection=notes.get("selection"))


def _draw(inputs: ReportInputs, folder: Path) -> tuple[dict[str, Path | None], dict[str, str]]:
    images: dict[str, Path | None] = dict.fromkeys(IMAGE_NAMES)
    notes: dict[str, str] = {}
    if any("loss" in row or any(k.startswith("valid_") for k in row) for row in inputs.history):
        images["training"] = plot_training(inputs.history, inputs.best_epoch, inputs.selection_metric,
                                           folder / IMAGE_NAMES["training"], inputs.main_metrics)
    else:
        notes["training"] = "metrics.json has no per-epoch history, so there is no training curve."
    if inputs.weights is not None:
        images["weights"] = plot_fusion_weights(inputs.weights, folder / IMAGE_NAMES["weights"])
    else:
        notes["weights"] = "metrics.json has no fusion_weights (not a fused model, or an older artifact)."
    comparison = comparison_or_self(inputs)
    if inputs.comparison is None:
        notes["comparison"] = COMPARISON_HINT
    else:
        line = selection_note(inputs.comparison.model_dump())
        if line:
            notes["selection"] = line
    if comparison is not None and any(m in row.test for row in comparison.rows for m in inputs.main_metrics):
        images["comparison"] = plot_comparison(comparison, inputs.main_metrics, folder / IMAGE_NAMES["comparison"])
    elif comparison is None:
        notes["comparison"] = "metrics.json has no test metrics and there is no comparison.json."
    if inputs.latency is not None:
        images["latency"] = plot_latency(inputs.latency, folder / IMAGE_NAMES["latency"])
    else:
        notes["latency"] = LATENCY_HINT
    return images, notes


def _check_out(out: Path, artifact: Path) -> None:
    resolved, inside = out.resolve(), artifact.resolve()
    if resolved == inside or inside in resolved.parents:
        raise UserError(f"--out {out} is inside the artifact {artifact}; a file added there would fail the "
                        "artifact's manifest check", field="--out", fix="write the report outside the artifact")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder", field="--out")
