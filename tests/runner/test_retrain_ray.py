"""`fusionrec retrain` end to end on a real local Ray: v1 is served, a few feedback events and a new item are
stored under the live folder, and the retrain trains v2 on base + events + live catalogue, evaluates, compiles
and rolls it out against v1 through the same canary as `fusionrec run`; the same retrain again reuses the
refreshed dataset and every step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("ray.serve")

from click.testing import CliRunner

from fusionrec.artifact import load_artifact
from fusionrec.cli.main import cli
from fusionrec.data import load_dataset

from runkit import manifest_document, write_manifest
from testkit import local_serve_cluster, run_json, step_statuses, store_events

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from local_serve_cluster(tmp_path_factory, "frt-")


def store_feedback(live: Path) -> None:
    """What serving would have stored in a day: events (one segment, as the ingress writes it) and a new item."""
    from fusionrec.data.item_log import ItemChange, ItemLog

    store_events(live, [("u1", "new-1", "click"), ("u1", "new-1", "purchase"), ("u2", "new-1", "impression"),
                        ("u2", "i1", "click"), ("u3", "i2", "click"), ("u4", "nope", "click")], first_timestamp=10_000)
    ItemLog(str(live)).write([ItemChange("new-1", {"title": "queen cat movie", "genres": "Drama", "year": "2024"})])


def test_retrain_trains_on_the_feedback_and_rolls_out_against_the_served_version(cluster, tiny_models, shop,
                                                                                 tmp_path):
    document = manifest_document(tiny_models, shop, tmp_path / "runs")
    document["spec"]["serving"]["live"] = {"events": True}
    manifest = write_manifest(tmp_path, document)
    code, first, stderr = run_json(manifest)
    assert code == 0 and first["served_version"] == "v1", stderr
    store_feedback(tmp_path / "runs" / "_live")

    result = CliRunner().invoke(cli, ["retrain", str(manifest), "--version", "v2", "--json"])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    status = step_statuses(summary)
    assert status["prepare"] == "ran" and status["train"] == "ran" and status["compile"] == "ran"
    assert "events read      6 (4 click, 1 impression, 1 purchase)" in result.stderr
    assert "1 events on unknown items dropped" in result.stderr
    rollout = summary["rollout"]
    assert (rollout["from"], rollout["to"], rollout["outcome"]) == ("v1", "v2", "Promoted")
    assert summary["served_version"] == "v2"

    artifact = load_artifact(tmp_path / "runs" / "v2")
    data = artifact.spec.data
    assert data.path is not None and Path(data.path).parent == tmp_path / "runs" / "_live" / "datasets"
    trained_on = load_dataset(data)
    assert "new-1" in set(trained_on.items.item_id)  # the live catalogue's item, with its text
    clicked = trained_on.interactions.query("item_id == 'new-1'")
    assert clicked.user_id.tolist() == ["u1"] and clicked.timestamp.tolist() == [10_000]

    again = CliRunner().invoke(cli, ["retrain", str(manifest), "--version", "v2", "--json", "--no-serve"])
    assert again.exit_code == 0, again.stderr
    assert "reused" in again.stderr and set(step_statuses(json.loads(again.stdout)).values()) == {"cached"}
