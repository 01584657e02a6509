"""Training publishes to object storage: `python -m fusionrec.train --output s3://...` (what the operator's RayJob
runs) trains in a local staging folder and publishes `<output>/<version>/` on the loopback S3 server; the
published version fetches and opens as an artifact, and a second run of the same version is refused before any
training (through `fusionrec train` too)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from fusionrec import storage
from fusionrec.artifact import load_artifact
from fusionrec.cli.main import cli
from fusionrec.train.__main__ import main as train_main

from testkit import fused_spec, shop_files

torch.set_num_threads(1)


def write_manifest(tiny_models: dict[str, Path], folder: Path, *, version: str = "v1") -> Path:
    document = fused_spec(tiny_models, epochs=1, data=shop_files(folder))
    document["version"] = version
    path = folder / f"{version}.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "fusionrec.io/v1alpha1", "kind": "FusionRecommender",
                                    "metadata": {"name": "shop-recs"}, "spec": document}, sort_keys=False))
    return path


@pytest.mark.storage
@pytest.mark.ray
def test_the_rayjob_entry_point_publishes_a_version_that_fetches_and_loads(tiny_models, s3_root, tmp_path,
                                                                            monkeypatch, capsys):
    monkeypatch.setenv("FUSIONREC_EMBEDDING_CACHE", str(tmp_path / "embeddings"))
    manifest = write_manifest(tiny_models, tmp_path)
    work = tmp_path / "work"

    assert train_main(["--manifest", str(manifest), "--output", s3_root, "--work-dir", str(work)]) == 0
    assert f"published: {s3_root}/v1" in capsys.readouterr().out
    assert storage.is_published(f"{s3_root}/v1")
    assert storage.list_published(s3_root) == ["v1"]  # no checkpoints or staging prefix listed
    assert list(work.iterdir()) == []  # the local staging folder is gone once published

    fetched = storage.fetch_folder(f"{s3_root}/v1", tmp_path / "cache")
    artifact = load_artifact(fetched)  # every file verified against the artifact's manifest
    assert artifact.version == "v1"
    assert artifact.metrics["best_epoch"] == 1 and "ndcg@10" in artifact.metrics["test"]

    # Published versions are immutable: refused in preflight, --overwrite included, before Ray starts.
    assert train_main(["--manifest", str(manifest), "--output", s3_root, "--overwrite",
                       "--work-dir", str(work)]) == 2
    assert "already published" in capsys.readouterr().err
    result = CliRunner().invoke(cli, ["train", str(manifest), "--output", s3_root, "--work-dir", str(work)])
    assert result.exit_code == 2 and "already published" in result.stderr
    assert list(work.iterdir()) == []


@pytest.mark.storage
def test_a_missing_bucket_is_refused_before_training(tiny_models, s3_env, tmp_path, capsys):
    manifest = write_manifest(tiny_models, tmp_path)
    assert train_main(["--manifest", str(manifest), "--output", "s3://no-such-bucket-here/runs"]) == 2
    assert "bucket 'no-such-bucket-here' does not exist" in capsys.readouterr().err


def test_an_s3_output_without_credentials_exits_2_naming_them(tiny_models, no_cloud_env, tmp_path, capsys):
    manifest = write_manifest(tiny_models, tmp_path)
    assert train_main(["--manifest", str(manifest), "--output", "s3://bucket/runs"]) == 2
    err = capsys.readouterr().err
    assert "no S3 credentials" in err and "AWS_ACCESS_KEY_ID" in err
    result = CliRunner().invoke(cli, ["train", str(manifest), "--output", "s3://bucket/runs"])
    assert result.exit_code == 2 and "no S3 credentials" in result.stderr
