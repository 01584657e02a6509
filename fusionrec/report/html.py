"""The report page: one self-contained HTML file whose images are PNGs beside it (relative links, no
scripts, no stylesheets or fonts from the network), so it opens offline and can be attached to a ticket as
a folder. Every value from the artifact passes through `html.escape`: model names, sources and notes are
user input.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from fusionrec.report.inputs import COMPARISON_NAME, ReportInputs, comparison_or_self

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       color: #222; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { font-size: 1.25rem; margin-top: 2rem;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.fused td { background: #fff4ec; }
img { max-width: 100%; border: 1px solid #eee; }
.note { background: #f6f8fa; border-left: 4px solid #888; padding: 0.5rem 0.8rem; margin: 0.6rem 0; }
.ok { color: #1a7f37; font-weight: 600; } code { background: #f3f3f3; padding: 0 0.2rem; }
"""


def render_page(inputs: ReportInputs, images: dict[str, Path | None], notes: dict[str, str]) -> str:
    """The whole page. `images` maps a section to its PNG (in the page's folder) or None; `notes` maps a
    section to the text shown in place of, or beside, its plot."""
    title = f"fusionrec report: {inputs.version}"
    body = [f"<h1>{escape(title)}</h1>", f"<p>Artifact <code>{escape(str(inputs.artifact))}</code></p>",
            _header(inputs), _section_training(inputs, images, notes), _section_weights(inputs, images, notes),
            _section_comparison(inputs, images, notes), _section_latency(inputs, images, notes)]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


@dataclass(frozen=True)
class Fixed:
    """A number shown with its own number of decimals (seconds, milliseconds) instead of the default 4."""

    value: float | None
    digits: int


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], row_classes: Sequence[str] | None = None) -> str:
    """An HTML table; numbers are right-aligned and shown with 4 decimals (integers as they are)."""
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    lines = []
    for n, row in enumerate(rows):
        css = f' class="{escape(row_classes[n])}"' if row_classes and row_classes[n] else ""
        lines.append(f"<tr{css}>" + "".join(_cell(value) for value in row) + "</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(lines) + "\n</tbody>\n</table>"


def key_values(pairs: Iterable[tuple[str, Any]]) -> str:
    """A two-column table of facts: the name as a row header, the value formatted like a table cell."""
    lines = [f"<tr><th>{escape(str(key))}</th>{_cell(value)}</tr>" for key, value in pairs]
    return "<table>\n<tbody>\n" + "\n".join(lines) + "\n</tbody>\n</table>"


def ordered_metrics(names: Iterable[str], first: Sequence[str]) -> list[str]:
    """`first` (those present), then the rest by name and cut-off: hr@5, hr@10, hr@20, mrr@5..."""
    def key(name: str) -> tuple[str, int]:
        base, _, k = name.partition("@")
        return base, int(k) if k.isdigit() else 0

    present = list(dict.fromkeys(names))
    return [m for m in first if m in present] + sorted((m for m in present if m not in first), key=key)


def _cell(value: Any) -> str:
    if isinstance(value, Fixed):
        if value.value is None or not math.isfinite(value.value):
            return '<td class="num">n/a</td>'
        return f'<td class="num">{value.value:.{value.digits}f}</td>'
    if isinstance(value, bool) or value is None:
        return f"<td>{'' if value is None else escape(str(value))}</td>"
    if isinstance(value, int):
        return f'<td class="num">{value:,}</td>'
    if isinstance(value, float):
        return f'<td class="num">{"n/a" if not math.isfinite(value) else f"{value:.4f}"}</td>'
    return f"<td>{escape(str(value))}</td>"


def _image(images: dict[str, Path | None], key: str, alt: str) -> str:
    path = images.get(key)
    if path is None:
        return ""
    return f'<p><img src="{escape(path.name)}" alt="{escape(alt)}"></p>'


def _note(notes: dict[str, str], key: str) -> str:
    return f'<p class="note">{escape(notes[key])}</p>' if key in notes else ""


def _header(inputs: ReportInputs) -> str:
    data = inputs.data
    created = inputs.created + (f" (files added {inputs.updated})" if inputs.updated else "")
    facts = [("version", inputs.version), ("task", inputs.task), ("created", created),
             ("dataset", data.get("name", "unknown")), ("users", data.get("users")), ("items", data.get("items")),
             ("interactions", data.get("interactions")), ("fusion", inputs.fusion),
             ("written by", f"fusionrec {inputs.fusionrec_version}")]
    size_mb = inputs.manifest_bytes / 1e6
    status = (f'<p><span class="ok">Manifest verified</span>: the sha256 and size of all {inputs.manifest_files} '
              f"files ({size_mb:.1f} MB) match MANIFEST.json.</p>")
    encoders = table(["encoder", "source", "pooling", "max length", "training"],
                     [(e.name, e.source, e.pooling, e.max_length, e.training) for e in inputs.encoders])
    metrics = ""
    if inputs.test:
        names = ordered_metrics(inputs.test, inputs.main_metrics)
        metrics = ("<h3>This model</h3>\n"
                   + table(["stage", *names], [("valid", *(inputs.valid.get(m, math.nan) for m in names)),
                                               ("test", *(inputs.test[m] for m in names))]))
    return "\n".join([status, key_values(facts), "<h3>Encoders</h3>", encoders, metrics])


def _section_training(inputs: ReportInputs, images: dict[str, Path | None], notes: dict[str, str]) -> str:
    selected = (f"The checkpoint of epoch {inputs.best_epoch} was kept (best validation "
                f"{inputs.selection_metric}); the test metrics are that epoch's.") \
        if inputs.best_epoch and inputs.selection_metric else ""
    return "\n".join(["<h2>1. Training and validation</h2>", f"<p>{escape(selected)}</p>" if selected else "",
                      _image(images, "training", "training loss, validation metrics and learning rate per epoch"),
                      _note(notes, "training")])


def _section_weights(inputs: ReportInputs, images: dict[str, Path | None], notes: dict[str, str]) -> str:
    parts = ["<h2>2. Fusion weights</h2>",
             _image(images, "weights", "fusion weight per model, globally and across users"), _note(notes, "weights")]
    weights = inputs.weights
    if weights is not None:
        header = ["model", "global", "users: mean", "std", "p5", "p25", "median", "p75", "p95", "min", "max"]
        rows = []
        for name in weights.models:
            spread = weights.per_user.get(name)
            stats: list[Any] = [math.nan] * 10
            if spread is not None:
                q = spread.quantiles
                stats = [spread.mean, spread.std, *(q.get(k, math.nan) for k in ("p5", "p25", "p50", "p75", "p95")),
                         spread.min, spread.max]
            rows.append((name, weights.global_weights.get(name, math.nan), *stats))
        parts.append(table(header, rows))
    return "\n".join(parts)


def _section_comparison(inputs: ReportInputs, images: dict[str, Path | None], notes: dict[str, str]) -> str:
    parts = ["<h2>3. Fused vs single encoders vs baselines</h2>"]
    comparison = comparison_or_self(inputs)
    if inputs.comparison is not None:  # then `comparison` is this one
        given = inputs.comparison
        seed = f", seed {given.seed}" if given.seed is not None else ""
        parts.append(f"<p>From <code>{COMPARISON_NAME}</code>: split {escape(given.split)}{seed}.</p>")
        if given.source:
            parts.append(f'<p class="note">Source: {escape(given.source)}</p>')
    parts += [_note(notes, "selection"), _note(notes, "comparison"),
              _image(images, "comparison", "test metrics of every compared model")]
    if comparison is not None:
        metrics = ordered_metrics((m for row in comparison.rows for m in row.test), inputs.main_metrics)
        selection = inputs.selection_metric
        # Setup (building the model) and train (fitting, testing) apart; a file from before the split has one total.
        split = any(row.setup_seconds is not None or row.train_seconds is not None for row in comparison.rows)
        header = ["model", "group", *(f"test {m}" for m in metrics),
                  *([f"valid {selection}"] if selection else []), *(["setup s", "train s"] if split else ["seconds"])]
        shipped = inputs.comparison.shipped if inputs.comparison is not None else None
        rows = [(row.model + (" (shipped)" if shipped and row.model == shipped else ""), row.group,
                 *(row.test.get(m, math.nan) for m in metrics),
                 *([row.valid.get(selection, math.nan)] if selection else []),
                 *((Fixed(row.setup_seconds, 1), Fixed(row.train_seconds, 1)) if split else (Fixed(row.seconds, 1),)))
                for row in comparison.rows]
        parts.append(table(header, rows, [row.group for row in comparison.rows]))
    return "\n".join(parts)


def _section_latency(inputs: ReportInputs, images: dict[str, Path | None], notes: dict[str, str]) -> str:
    parts = ["<h2>4. Serving latency</h2>", _note(notes, "latency")]
    latency = inputs.latency
    if latency is not None:
        if latency.what:
            parts.append(f"<p>Measured: {escape(latency.what)}</p>")
        parts.append(_image(images, "latency", "histogram of request latencies"))
        facts = [("endpoint", latency.endpoint), ("when", latency.when.isoformat()), ("requests", latency.requests),
                 ("latencies recorded", len(latency.latencies_ms)),
                 *((key, getattr(latency, key)) for key in ("failed", "warmup") if getattr(latency, key) is not None),
                 *((f"p{q} (ms)", Fixed(latency.percentile(q), 2)) for q in (50, 95, 99)),
                 ("mean (ms)", Fixed(sum(latency.latencies_ms) / len(latency.latencies_ms), 2)),
                 ("max (ms)", Fixed(max(latency.latencies_ms), 2))]
        parts.append(key_values(facts))
    return "\n".join(parts)
