"""Serving reads from object storage: a version published to the loopback S3 server loads into a scorer from its
s3:// URI (fetched and verified into the local artifact cache first, as a Serve replica's `ModelServer` does) and
answers; a half-uploaded version (its files but no PUBLISHED marker) is refused, never served."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from fusionrec import storage
from fusionrec.errors import UserError
from fusionrec.serving.artifacts import artifact_cache_dir, local_artifact
from fusionrec.serving.engine import VersionEngine
from fusionrec.serving.scorer import VersionScorer
from fusionrec.spec import Manifest
from fusionrec.train.job import train_and_evaluate

from testkit import fused_spec, shop_files

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory) -> tuple[Path, Path]:
    """A tiny trained artifact (no Ray) and its embedding cache."""
    folder = tmp_path_factory.mktemp("trained")
    document = fused_spec(tiny_models, epochs=1, data=shop_files(folder))
    path = train_and_evaluate(Manifest.model_validate({"metadata": {"name": "shop-recs"}, "spec": document}),
                              folder / "runs", embeddings=folder / "embeddings")
    return path, folder / "embeddings"


@pytest.mark.storage
def test_a_published_version_is_served_from_its_s3_uri(trained, s3_root, tmp_path, monkeypatch):
    artifact, embeddings = trained
    monkeypatch.setenv("FUSIONREC_ARTIFACT_CACHE", str(tmp_path / "cache"))
    uri = storage.publish_folder(artifact, s3_root)

    scorer = VersionScorer.load(uri, embeddings=embeddings)
    assert scorer.version == "v1"
    assert scorer.artifact.path.is_relative_to(tmp_path / "cache")  # loaded from the verified local copy
    engine = VersionEngine(scorer)
    answer = asyncio.run(engine.recommend({"user_id": "u1", "k": 3}))
    assert answer["model_version"] == "v1" and len(answer["items"]) == 3
    scores = asyncio.run(engine.score({"user_id": "u1", "item_ids": [answer["items"][0]["item_id"]]}))
    assert scores["scores"][0]["score"] == pytest.approx(answer["items"][0]["score"], abs=1e-4)

    # A second replica on the same node finds the copy current and loads it without downloading again.
    assert local_artifact(uri) == scorer.artifact.path


@pytest.mark.storage
def test_a_half_uploaded_version_is_refused(trained, s3_root, tmp_path, monkeypatch):
    artifact, embeddings = trained
    monkeypatch.setenv("FUSIONREC_ARTIFACT_CACHE", str(tmp_path / "cache"))
    uri = storage.publish_folder(artifact, s3_root)
    location = storage.resolve(uri)
    location.filesystem.delete_file(location.child(storage.PUBLISHED_NAME).path)  # files, but no marker
    assert not storage.is_published(uri)

    with pytest.raises(UserError, match="not published") as caught:
        VersionScorer.load(uri, embeddings=embeddings)
    assert caught.value.field == "args.versions.artifact" and uri in caught.value.message
    kept = [path for path in (tmp_path / "cache").rglob("*") if path.is_file() and path.suffix != ".lock"]
    assert kept == []  # nothing of it kept


def test_local_locations_are_loaded_in_place_and_the_cache_is_configurable(tmp_path, monkeypatch):
    assert local_artifact(tmp_path / "v1") == tmp_path / "v1"
    assert local_artifact(f"file://{tmp_path}/v1") == tmp_path / "v1"
    monkeypatch.delenv("FUSIONREC_ARTIFACT_CACHE", raising=False)
    monkeypatch.setenv("FUSIONREC_CACHE", str(tmp_path / "c"))
    assert artifact_cache_dir() == tmp_path / "c" / "artifacts"
    monkeypatch.setenv("FUSIONREC_ARTIFACT_CACHE", str(tmp_path / "a"))
    assert artifact_cache_dir() == tmp_path / "a"


def test_an_unknown_scheme_is_refused(no_cloud_env, tmp_path):
    with pytest.raises(UserError, match="not a storage location"):
        local_artifact("http://example.com/v1", cache=tmp_path)
