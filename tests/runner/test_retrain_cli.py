"""`fusionrec retrain`: what it refuses (exit 2, before any work) and what it hands to `fusionrec run`'s path."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from fusionrec.cli import retrain_cmd
from fusionrec.cli.main import cli
from fusionrec.spec import Manifest

from runkit import manifest_document, write_manifest
from testkit import store_events

MODELS = {"bert": Path("/models/bert"), "llama": Path("/models/llama")}  # never loaded: nothing trains here


def manifest(folder: Path, shop: dict, *, version: str = "v1", events: bool = True) -> Path:
    document = manifest_document(MODELS, shop, folder / "runs", version=version)
    document["spec"]["serving"]["live"] = {"items": True, "events": events}
    return write_manifest(folder, document)


def retrain(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["retrain", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stderr


def post_events(live: Path, rows: list[tuple[str, str, str]]) -> None:
    """(user, item, type) events stored as the ingress stores a segment."""
    store_events(live, rows, first_timestamp=5000)


def test_events_off_is_refused_with_what_to_do(tmp_path, shop):
    code, stderr = retrain(str(manifest(tmp_path, shop, events=False)))
    assert code == 2
    assert "spec.serving.live.events is false" in stderr and "--allow-empty" in stderr


def test_a_live_folder_without_events_is_refused_with_what_to_do(tmp_path, shop):
    code, stderr = retrain(str(manifest(tmp_path, shop)), "--version", "v2")
    assert code == 2
    assert f"{tmp_path / 'runs' / '_live'} holds no feedback events" in stderr
    assert "POST /v1/events" in stderr and "--allow-empty" in stderr


@pytest.mark.parametrize("version, words", [
    ("V2_final", "lowercase letters"),
    ("v" * 41, "at most 40"),
    ("v1", "is the manifest's own spec.version"),
])
def test_a_bad_version_is_refused(tmp_path, shop, version, words):
    code, stderr = retrain(str(manifest(tmp_path, shop)), "--version", version)
    assert code == 2 and "--version" in stderr and words in stderr


def test_the_default_version_fits_even_for_a_long_base(tmp_path, shop, monkeypatch):
    handed: list[Manifest] = []
    monkeypatch.setattr(retrain_cmd, "run_document", lambda document, **flags: handed.append(document))
    post_events(tmp_path / "runs" / "_live", [("u1", "i3", "click")])
    code, stderr = retrain(str(manifest(tmp_path, shop, version="release-2025.01.31-with-a-long-name")))
    assert code == 0, stderr
    (document,) = handed
    assert document.spec.version.startswith("release-2025.01.31-with-a-r2") and len(document.spec.version) <= 40


def test_the_refreshed_manifest_goes_through_the_run_path(tmp_path, shop, monkeypatch):
    handed: list[tuple[Manifest, dict]] = []
    monkeypatch.setattr(retrain_cmd, "run_document", lambda document, **flags: handed.append((document, flags)))
    live = tmp_path / "elsewhere"
    post_events(live, [("u1", "i3", "click"), ("u1", "i3", "impression"), ("u2", "nope", "click")])
    code, stderr = retrain(str(manifest(tmp_path, shop)), "--version", "v2", "--live", str(live), "--no-serve",
                           "--json")
    assert code == 0, stderr
    ((document, flags),) = handed
    assert document.spec.version == "v2" and document.spec.serving.live.uri == str(live)
    assert document.spec.data.path.startswith(str(live / "datasets")) and document.spec.data.interactions is None
    assert flags["serve"] is False and flags["as_json"] is True and flags["output"] is None
    assert "events read      3 (2 click, 1 impression)" in stderr and "1 events on unknown items dropped" in stderr


def test_allow_empty_retrains_on_the_base_data_and_the_catalogue(tmp_path, shop, monkeypatch):
    handed: list[Manifest] = []
    monkeypatch.setattr(retrain_cmd, "run_document", lambda document, **flags: handed.append(document))
    code, stderr = retrain(str(manifest(tmp_path, shop, events=False)), "--version", "v2", "--allow-empty")
    assert code == 0, stderr
    assert handed[0].spec.data.dataset.startswith("inter-live-") and "events read      0 (none)" in stderr


def test_the_training_entry_point_refreshes_before_it_trains(tmp_path, shop, monkeypatch, capsys):
    """What the operator's scheduled RayJob runs: `python -m fusionrec.train ... --refresh`."""
    import fusionrec.train.distributed as distributed
    from fusionrec.train.__main__ import main

    trained: list[Manifest] = []
    monkeypatch.setattr(distributed, "train_distributed", lambda manifest, output, **_: trained.append(manifest))
    monkeypatch.setattr(distributed, "summary_table", lambda result: "trained")
    document = manifest_document(MODELS, shop, tmp_path / "runs", version="v1-r202501011300")
    document["spec"]["serving"]["live"] = {"events": True}
    without_uri = write_manifest(tmp_path, document, "no-uri.yaml")
    assert main(["--manifest", str(without_uri), "--output", str(tmp_path / "out"), "--refresh"]) == 2
    assert "spec.serving.live.uri" in capsys.readouterr().err and not trained

    live = tmp_path / "live"  # the operator writes the resolved live URI into the pod's manifest
    document["spec"]["serving"]["live"]["uri"] = str(live)
    post_events(live, [("u1", "i3", "click")])
    path = write_manifest(tmp_path, document, "pod.yaml")
    assert main(["--manifest", str(path), "--output", str(tmp_path / "out"), "--refresh"]) == 0
    (manifest,) = trained
    assert manifest.spec.version == "v1-r202501011300" and Path(manifest.spec.data.path).parent == live / "datasets"
    assert "interactions     +1 (0 new users)" in capsys.readouterr().err


def test_the_canary_asks_only_for_items_both_versions_know(tmp_path):
    """A retrain adds catalogue items the serving version does not have: a history naming one would be answered
    404 by it, so the canary's keyed requests leave them out."""
    from fusionrec.runner.local_rollout import keyed_requests
    from fusionrec.runner.local_serve import Version

    for version, items in (("v1", [f"i{k}" for k in range(8)]), ("v2", [f"i{k}" for k in range(8)] + ["new-1"])):
        (tmp_path / version).mkdir()
        pd.DataFrame({"user_id": ["u1"]}).to_parquet(tmp_path / version / "users.parquet")
        pd.DataFrame({"item_id": items}).to_parquet(tmp_path / version / "items.parquet")
    stable, candidate = Version("v1", tmp_path / "v1"), Version("v2", tmp_path / "v2")
    weights = {"v1": 50, "v2": 50}
    named = {i for _, body in keyed_requests(weights, candidate, 40, seed=0) for i in body["history"]}
    assert "new-1" in named, "without the stable version every candidate item may be asked for"
    shared = keyed_requests(weights, candidate, 40, seed=0, stable=stable)
    assert shared and all("new-1" not in body["history"] for _, body in shared)
