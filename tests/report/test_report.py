"""`fusionrec report` on a real (tiny) artifact: every image the page links exists and is a PNG, the
comparison table shows comparison.json's rows, missing optional files give notes instead of broken images,
and an artifact that fails its manifest check exits 2 without a report."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fusionrec.artifact import add_files, load_artifact
from fusionrec.cli import report_cmd
from fusionrec.cli.main import cli
from fusionrec.model.weights_summary import summarise_weights
from fusionrec.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def app():
    if "report" not in cli.commands:  # until fusionrec/cli/main.py registers it; the group maps UserError to 2
        cli.add_command(report_cmd.report)
    return cli


class Page(HTMLParser):
    """The parts of the report page the tests check: image sources, notes and tables (cell texts)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[str] = []
        self.notes: list[str] = []
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        self._note: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "p" and attrs.get("class") == "note":
            self._note = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "p" and self._note is not None:
            self.notes.append("".join(self._note))
            self._note = None

    def handle_data(self, data):
        for buffer in (self._cell, self._note):
            if buffer is not None:
                buffer.append(data)

    def table_starting(self, *header: str) -> list[list[str]]:
        for rows in self.tables:
            if tuple(rows[0][:len(header)]) == header:
                return rows
        raise AssertionError(f"no table with header {header}; headers: {[t[0] for t in self.tables]}")


def comparison_document(metrics: dict) -> dict:
    test = metrics["test"]
    # Shaped like `fusionrec run`'s comparison.json, keys the report does not read included.
    return {"task": "ranking", "split": "leave-one-out", "seed": 7, "protocol": "...", "dataset": {}, "rows": [
        {"model": "fused-attention", "group": "fused", "valid": metrics["valid"], "test": test, "seconds": 12.5,
         "encoders": ["bert", "mpnet", "llama"]},
        {"model": "bert <only> & co", "group": "single", "valid": {"ndcg@10": 0.31},
         "test": {"ndcg@10": 0.25, "hr@10": 0.5, "mrr@10": 0.2}, "seconds": 4.0},
        {"model": "pop", "group": "baseline", "test": {"ndcg@10": 0.125, "hr@10": 0.375}},
    ]}


def latency_document() -> dict:
    rng = np.random.default_rng(0)
    values = [round(float(v), 3) for v in rng.gamma(4.0, 2.0, size=200)]
    return {"requests": 200, "latencies_ms": values, "endpoint": "POST /v1/recommend",
            "when": "2026-01-02T03:04:05+00:00", "what": "test latencies", "failed": 1, "warmup": 5}


def check_images(page: Page, folder: Path) -> None:
    assert page.images, "the page has no images"
    for src in page.images:
        assert "/" not in src and not src.startswith(("http", "data:")), src
        png = folder / src
        assert png.is_file(), f"{src} is linked but missing"
        data = png.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), f"{src} is not a PNG"


def test_report_of_a_complete_artifact(app, artifact, tmp_path):
    metrics = load_artifact(artifact).metrics
    comparison = comparison_document(metrics)
    add_files(artifact, {"comparison.json": json.dumps(comparison).encode(),
                         "latency.json": json.dumps(latency_document()).encode()})
    out = tmp_path / "report"

    result = CliRunner().invoke(app, ["report", str(artifact), "--out", str(out), "--json"])

    assert result.exit_code == 0, result.output
    written = json.loads(result.output)
    assert written["index"] == str(out / "index.html")
    assert set(written["images"]) == {"training", "weights", "comparison", "latency"}
    assert written["notes"] == {}
    text = (out / "index.html").read_text()
    page = Page(text)
    check_images(page, out)
    assert sorted(page.images) == sorted(Path(p).name for p in written["images"].values())
    assert page.notes == []
    assert "<only>" not in text and "bert &lt;only&gt; &amp; co" in text  # names are escaped

    rows = page.table_starting("model", "group")
    header, body = rows[0], rows[1:]
    assert header[2:4] == ["test ndcg@10", "test hr@10"]  # the main metrics come first
    assert [r[:2] for r in body] == [[row["model"], row["group"]] for row in comparison["rows"]]
    for cells, row in zip(body, comparison["rows"]):
        for column, metric in enumerate(("ndcg@10", "hr@10"), start=2):
            assert cells[column] == f"{row['test'][metric]:.4f}"
    assert body[2][header.index("test mrr@10")] == "n/a"  # pop has no mrr@10

    latency = dict(r for r in page.table_starting("endpoint") if len(r) == 2)
    values = latency_document()["latencies_ms"]
    assert latency["p99 (ms)"] == f"{np.percentile(values, 99):.2f}"
    assert (latency["failed"], latency["warmup"]) == ("1", "5")
    assert "split leave-one-out, seed 7." in text
    assert body[0][-1] == "12.5" and body[2][-1] == "n/a"  # seconds; pop has none
    load_artifact(artifact)  # the report left the artifact as it was


def test_missing_optional_files_give_notes_not_broken_images(app, artifact, tmp_path):
    out = write_report(artifact, tmp_path / "report")

    page = Page(out.read_text())
    check_images(page, out.parent)
    assert sorted(page.images) == ["comparison.png", "fusion_weights.png", "training.png"]
    assert any("No comparison.json" in note and "fusionrec run" in note for note in page.notes)
    assert any("No latency.json" in note for note in page.notes)
    rows = page.table_starting("model", "group")
    test = load_artifact(artifact).metrics["test"]
    assert rows[1][:4] == ["v1", "fused", f"{test['ndcg@10']:.4f}", f"{test['hr@10']:.4f}"]  # its own one row
    weights = page.table_starting("model", "global")
    assert [r[0] for r in weights[1:]] == ["bert", "mpnet", "llama"]


@pytest.mark.slow
def test_default_out_is_reports_version_and_a_rerun_replaces_it(app, artifact, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = CliRunner().invoke(app, ["report", str(artifact)])
    assert first.exit_code == 0, first.output
    assert "wrote reports/v1/index.html (3 plots)" in first.output and "note: No latency.json" in first.output

    add_files(artifact, {"latency.json": json.dumps(latency_document()).encode()})
    again = CliRunner().invoke(app, ["report", str(artifact)])
    assert again.exit_code == 0, again.output
    assert "(4 plots)" in again.output and (tmp_path / "reports" / "v1" / "latency.png").is_file()


def test_the_report_warns_when_a_single_validated_better_than_the_shipped_fused_model(app, artifact, tmp_path):
    document = comparison_document(load_artifact(artifact).metrics)
    fused_valid = document["rows"][0]["valid"]["ndcg@10"]
    document["rows"][1]["valid"]["ndcg@10"] = fused_valid + 0.1
    document["rows"][0].update(setup_seconds=10.0, train_seconds=2.5)
    document["rows"][1].update(setup_seconds=1.0, train_seconds=3.0)
    document.update(select="fused", metric="ndcg@10", higher_is_better=True, shipped="fused-attention",
                    fused_beats_members=False)
    add_files(artifact, {"comparison.json": json.dumps(document).encode()})
    out = tmp_path / "report"

    result = CliRunner().invoke(app, ["report", str(artifact), "--out", str(out)])

    assert result.exit_code == 0, result.output
    warning = next(line for line in result.output.splitlines() if line.startswith("warning:"))
    assert "bert <only> & co" in warning and "evaluation.select: best" in warning
    assert f"{fused_valid + 0.1:.4f} vs {fused_valid:.4f}" in warning
    page = Page((out / "index.html").read_text())
    assert any(note.startswith("warning:") for note in page.notes)
    rows = page.table_starting("model", "group")
    assert rows[0][-2:] == ["setup s", "train s"]
    assert rows[1][0] == "fused-attention (shipped)" and rows[1][-2:] == ["10.0", "2.5"]
    assert rows[3][-2:] == ["n/a", "n/a"]  # pop recorded no times


def test_the_report_says_what_shipped_under_select_best(app, artifact, tmp_path):
    document = comparison_document(load_artifact(artifact).metrics)
    document["rows"][1]["valid"]["ndcg@10"] = document["rows"][0]["valid"]["ndcg@10"] + 0.1
    document.update(select="best", metric="ndcg@10", shipped="bert <only> & co", fused_beats_members=False)
    add_files(artifact, {"comparison.json": json.dumps(document).encode()})

    result = CliRunner().invoke(app, ["report", str(artifact), "--out", str(tmp_path / "report"), "--json"])

    assert result.exit_code == 0, result.output
    line = json.loads(result.output)["selection"]
    assert line.startswith("shipped: bert <only> & co (evaluation.select: best)")
    assert "validated better than the fused model" in line


def test_tampered_artifact_exits_2_naming_the_file(app, artifact, tmp_path):
    metrics = artifact / "metrics.json"
    metrics.write_text(metrics.read_text().replace('"task"', '"TASK"'))
    out = tmp_path / "report"

    result = CliRunner().invoke(app, ["report", str(artifact), "--out", str(out)])

    assert result.exit_code == 2
    assert "metrics.json" in result.output and "tampered" in result.output
    assert not out.exists()


def test_bad_comparison_exits_2_naming_the_field(app, artifact, tmp_path):
    document = comparison_document(load_artifact(artifact).metrics)
    document["rows"][1]["group"] = "ensemble"
    add_files(artifact, {"comparison.json": json.dumps(document).encode()})

    result = CliRunner().invoke(app, ["report", str(artifact), "--out", str(tmp_path / "report")])

    assert result.exit_code == 2
    assert "comparison.json" in result.output and "rows[1].group" in result.output


def test_out_inside_the_artifact_is_refused(app, artifact):
    result = CliRunner().invoke(app, ["report", str(artifact), "--out", str(artifact / "report")])

    assert result.exit_code == 2 and "--out" in result.output and "inside the artifact" in result.output
    load_artifact(artifact)


@pytest.mark.slow
def test_a_rerun_keeps_other_files_and_drops_plots_it_no_longer_draws(app, artifact, tmp_path):
    out = tmp_path / "example"
    out.mkdir()
    (out / "README.md").write_text("how this example was made")
    (out / "latency.png").write_bytes(PNG_MAGIC)  # from an earlier report of an artifact with latency.json

    write_report(artifact, out)

    assert (out / "README.md").read_text() == "how this example was made"
    assert not (out / "latency.png").exists()
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "comparison.png", "fusion_weights.png",
                                                     "index.html", "training.png"]  # no staging folder left


def test_summarise_weights_keeps_its_keys_and_adds_quantiles_and_a_histogram():
    per_user = torch.softmax(torch.randn(101, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    report = {"method": "attention", "kind": "per_example", "models": ["a", "b", "c"],
              "global": {"a": 0.3, "b": 0.3, "c": 0.4}, "per_user": per_user}

    summary = summarise_weights(report)

    assert {k: summary[k] for k in ("method", "kind", "models", "global")} == {
        k: report[k] for k in ("method", "kind", "models", "global")}
    assert summary["per_user"]["users"] == 101
    values = per_user.double().numpy()
    edges = summary["per_user"]["a"]["histogram"]["edges"]
    for m, name in enumerate("abc"):
        stats = summary["per_user"][name]
        assert stats["mean"] == pytest.approx(values[:, m].mean(), abs=1e-6)
        assert stats["std"] == pytest.approx(values[:, m].std(), abs=1e-6)
        assert (stats["min"], stats["max"]) == pytest.approx((values[:, m].min(), values[:, m].max()), abs=1e-6)
        for q in (5, 25, 50, 75, 95):
            assert stats[f"p{q}"] == pytest.approx(np.percentile(values[:, m], q), abs=1e-6)
        assert stats["p5"] <= stats["p25"] <= stats["p50"] <= stats["p75"] <= stats["p95"]
        assert stats["histogram"]["edges"] == edges  # shared, so histograms can be overlaid
        assert len(stats["histogram"]["counts"]) == 20 and sum(stats["histogram"]["counts"]) == 101
    assert edges[0] == pytest.approx(values.min(), abs=1e-6) and edges[-1] == pytest.approx(values.max(), abs=1e-6)
    json.dumps(summary)


def test_summarise_weights_of_identical_users_has_one_filled_bin():
    report = {"method": "weighted", "kind": "global", "models": ["a", "b"], "global": {"a": 0.5, "b": 0.5},
              "per_user": torch.full((5, 2), 0.5)}
    stats = summarise_weights(report)["per_user"]["b"]
    assert stats["p5"] == stats["p95"] == 0.5 and stats["std"] == 0.0
    edges, counts = stats["histogram"]["edges"], stats["histogram"]["counts"]
    assert edges[0] < 0.5 < edges[-1] and sorted(counts)[-2:] == [0, 5]
