"""The report's plots: one function per plot, each writes one PNG and returns its path.

Figures are built with matplotlib's object API (`Figure`, no pyplot): nothing touches the global backend
or opens a window, so reports render on headless servers and in threads. PNGs are written without the
matplotlib version in their metadata, so the same inputs give the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusionrec.errors import UserError
from fusionrec.report.inputs import Comparison, FusionWeights, Latency

DPI = 100
GROUP_COLOURS = {"fused": "#d95f02", "single": "#1b9e77", "baseline": "#7570b3"}
SERIES_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")


def _figure(width: float, height: float, columns: int, sharey: bool = False) -> tuple[Any, list[Any]]:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("fusionrec report draws with matplotlib, which is not installed",
                        fix="pip install 'fusion-recommender[report]'") from None
    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots(1, columns, squeeze=False, sharey=sharey)[0]
    return figure, list(axes)


def _save(figure: Any, path: Path) -> Path:
    figure.savefig(path, dpi=DPI, format="png", metadata={"Software": None})
    return path


def plot_training(history: Sequence[dict[str, Any]], best_epoch: int | None, selection_metric: str | None,
                  path: Path, metrics: Sequence[str] = ()) -> Path:
    """Training loss, validation metrics and learning rate per epoch, the selected epoch marked.

    `metrics` (plus the selection metric) are the validation curves drawn; every recorded one if none of
    them was recorded (ranking records @5, @10 and @20 of three metrics: nine lines would hide the one that
    selects).
    """
    from matplotlib.ticker import MaxNLocator

    epochs = [row.get("epoch") for row in history]
    recorded = list(dict.fromkeys(k for row in history for k in row if k.startswith("valid_")))
    wanted = {f"valid_{m}" for m in (*metrics, selection_metric) if m}
    valid_keys = [k for k in recorded if k in wanted] or recorded
    rate_keys = [k for k in ("lr", "encoder_lr") if any(k in row for row in history)]
    figure, (loss_ax, valid_ax, rate_ax) = _figure(12, 3.6, 3)

    def series(key: str) -> tuple[list[Any], list[float]]:
        pairs = [(e, float(row[key])) for e, row in zip(epochs, history) if key in row and e is not None]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    loss_ax.plot(*series("loss"), marker="o", markersize=3, color=SERIES_COLOURS[0])
    loss_ax.set(title="training loss", xlabel="epoch", ylabel="loss")
    for n, key in enumerate(valid_keys):
        name = key[len("valid_"):]
        selected = name == selection_metric
        valid_ax.plot(*series(key), marker="o", markersize=3, color=SERIES_COLOURS[n % len(SERIES_COLOURS)],
                      linewidth=2.2 if selected else 1.0, label=f"{name} (selects)" if selected else name)
    valid_ax.set(title="validation", xlabel="epoch")
    if valid_keys:
        valid_ax.legend(fontsize=7, ncol=2)
    for n, key in enumerate(rate_keys):
        rate_ax.plot(*series(key), color=SERIES_COLOURS[n], label=key)
    rate_ax.set(title="learning rate (end of epoch)", xlabel="epoch")
    if rate_keys:
        rate_ax.legend(fontsize=7)
    if best_epoch:
        for ax in (loss_ax, valid_ax, rate_ax):
            ax.axvline(best_epoch, color="#444444", linestyle="--", linewidth=1)
        valid_ax.annotate(f"best epoch {best_epoch}", xy=(best_epoch, 0), xycoords=("data", "axes fraction"),
                          xytext=(3, 4), textcoords="offset points", fontsize=8)
    for ax in (loss_ax, valid_ax, rate_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(figure, path)


def plot_fusion_weights(weights: FusionWeights, path: Path) -> Path:
    """Global weight per model; per-user spread as box plots (whiskers p5-p95) and histograms."""
    figure, (bar_ax, box_ax, hist_ax) = _figure(12, 3.6, 3)
    models = weights.models
    colours = [SERIES_COLOURS[n % len(SERIES_COLOURS)] for n in range(len(models))]
    values = [weights.global_weights.get(m, float("nan")) for m in models]
    bars = bar_ax.bar(models, values, color=colours)
    bar_ax.bar_label(bars, fmt="%.3f", fontsize=8)
    bar_ax.set(title=f"global weight ({weights.method}, {weights.kind})", ylabel="weight")
    bar_ax.set_ylim(0, max([v for v in values if np.isfinite(v)] + [0.0]) * 1.2 or 1.0)

    spread = [weights.per_user.get(m) for m in models]
    quantiled = [s for s in spread if s is not None and len(s.quantiles) == 5]
    if len(quantiled) == len(spread):
        stats: list[dict[str, Any]] = [
            {"label": m, "med": s.quantiles["p50"], "q1": s.quantiles["p25"], "q3": s.quantiles["p75"],
             "whislo": s.quantiles["p5"], "whishi": s.quantiles["p95"], "mean": s.mean, "fliers": []}
            for m, s in zip(models, quantiled)]
        drawn = box_ax.bxp(stats, showmeans=True, patch_artist=True)
        for box, colour in zip(drawn["boxes"], colours):
            box.set(facecolor=colour, alpha=0.6)
        box_ax.set(title=f"per user: p5, p25, median, p75, p95 ({weights.users} users)", ylabel="weight")
    elif any(s is not None for s in spread):  # older artifacts: mean ± std with the min-max range
        for n, s in enumerate(spread):
            if s is not None:
                box_ax.errorbar([n], [s.mean], yerr=[[s.mean - s.min], [s.max - s.mean]], fmt="none",
                                ecolor="#999999", capsize=6)
                box_ax.errorbar([n], [s.mean], yerr=[s.std], fmt="o", color=colours[n], capsize=4)
        box_ax.set_xticks(range(len(models)), models)
        box_ax.set(title=f"per user: mean ± std, min-max ({weights.users} users)", ylabel="weight")
    else:
        box_ax.text(0.5, 0.5, "no per-user weights recorded", ha="center", va="center",
                    transform=box_ax.transAxes)

    histograms = [(m, s) for m, s in zip(models, spread) if s is not None and s.counts]
    for m, s in histograms:
        hist_ax.stairs(s.counts, s.edges, label=m, color=colours[models.index(m)], linewidth=1.5)
    hist_ax.set(title="per-user weight distribution", xlabel="weight", ylabel="users")
    if histograms:
        hist_ax.legend(fontsize=7)
    else:
        hist_ax.text(0.5, 0.5, "no histogram recorded", ha="center", va="center", transform=hist_ax.transAxes)
    for ax in (bar_ax, box_ax, hist_ax):
        ax.grid(alpha=0.3, axis="y")
    return _save(figure, path)


def plot_comparison(comparison: Comparison, metrics: Sequence[str], path: Path) -> Path:
    """One horizontal bar chart per main test metric, one bar per model, coloured by group."""
    shown = [m for m in metrics if any(m in row.test for row in comparison.rows)]
    if not shown:
        raise UserError(f"no row of the comparison has any of the test metrics {list(metrics)}",
                        field="comparison.json: rows[].test")
    from matplotlib.patches import Patch

    rows = comparison.rows
    height = 1.2 + 0.32 * len(rows)
    figure, axes = _figure(1.5 + 4.5 * len(shown), height, len(shown), sharey=True)
    colours = [GROUP_COLOURS[row.group] for row in rows]
    for ax, metric in zip(axes, shown):
        values = [row.test.get(metric, np.nan) for row in rows]
        bars = ax.barh(range(len(rows)), values, color=colours)
        ax.bar_label(bars, labels=[f"{v:.4f}" if np.isfinite(v) else "n/a" for v in values], fontsize=8,
                     padding=2)
        ax.set(title=f"test {metric}", xlabel=metric)
        finite = [v for v in values if np.isfinite(v)]
        ax.set_xlim(0, (max(finite) if finite else 1.0) * 1.25)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(range(len(rows)), [row.model for row in rows])
    axes[0].invert_yaxis()  # first row on top, as in the table (the y axis is shared)
    groups = list(dict.fromkeys(row.group for row in rows))
    figure.legend(handles=[Patch(color=GROUP_COLOURS[g], label=g) for g in groups], loc="outside right upper",
                  fontsize=8)
    return _save(figure, path)


def plot_latency(latency: Latency, path: Path) -> Path:
    """Histogram of request latencies with p50, p95 and p99 marked."""
    from matplotlib.ticker import FuncFormatter

    figure, (ax,) = _figure(8, 3.4, 1)
    values = np.asarray(latency.latencies_ms, dtype=np.float64)
    n_bins = min(50, max(10, len(values) // 5))
    low, median, high = values.min(), np.median(values), values.max()
    if low > 0 and high > 20 * median:  # a long tail: log-spaced bins keep the body and the tail readable
        ax.hist(values, bins=np.geomspace(low, high, n_bins + 1), color=SERIES_COLOURS[0], alpha=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    else:
        ax.hist(values, bins=n_bins, color=SERIES_COLOURS[0], alpha=0.8)
    for q, style in ((50, "-"), (95, "--"), (99, ":")):
        value = latency.percentile(q)
        ax.axvline(value, color="#333333", linestyle=style, linewidth=1.2, label=f"p{q} {value:.2f} ms")
    ax.set(title=f"{latency.endpoint}: {len(values)} latencies", xlabel="latency (ms)", ylabel="requests")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(figure, path)
