"""Resolving URIs to a filesystem: local paths and file:// locally, s3:// and gs:// with settings from the
environment only, and errors that say what to set without repeating a secret. No server needed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pyarrow import fs

from fusionrec import storage
from fusionrec.errors import UserError

pytestmark = pytest.mark.usefixtures("no_cloud_env")


def test_local_paths_and_file_uris_resolve_to_the_local_filesystem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for uri, path in [("runs/models", tmp_path / "runs/models"), (str(tmp_path / "x"), tmp_path / "x"),
                      (f"file://{tmp_path}/y", tmp_path / "y"), (tmp_path / "z", tmp_path / "z")]:
        location = storage.resolve(uri)
        assert isinstance(location.filesystem, fs.LocalFileSystem)
        assert location.is_local and Path(location.path) == path


def test_s3_uses_the_environment_credentials_and_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret-0123456789")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    location = storage.resolve("s3://bucket/some/prefix/")
    assert isinstance(location.filesystem, fs.S3FileSystem)
    assert (location.path, location.uri, location.scheme) == ("bucket/some/prefix", "s3://bucket/some/prefix", "s3")
    assert location.filesystem.region == "us-east-1"  # an endpoint without AWS_REGION
    assert location.child("v1", "a.txt").path == "bucket/some/prefix/v1/a.txt"


def test_s3_without_credentials_says_what_to_set():
    with pytest.raises(UserError, match="no S3 credentials") as missing:
        storage.resolve("s3://bucket/prefix")
    assert "AWS_ACCESS_KEY_ID" in str(missing.value)


def test_half_a_key_pair_is_named(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY")
    with pytest.raises(UserError, match="AWS_SECRET_ACCESS_KEY is not set"):
        storage.resolve("s3://bucket/prefix")


def test_credentials_in_a_uri_are_refused_without_repeating_them():
    with pytest.raises(UserError) as refused:
        storage.resolve("s3://AKIAEXAMPLEKEY:hunter2-secret@bucket/prefix")
    assert "AKIAEXAMPLEKEY" not in str(refused.value) and "hunter2" not in str(refused.value)
    assert "environment" in str(refused.value)


@pytest.mark.parametrize("uri", ["s3://bucket/p?endpoint_override=evil:80", "s3:///prefix", "s3://b/a/../c",
                                 "hf://org/model", "pvc://claim/path", "file://otherhost/x"])
def test_unsupported_uris_are_refused(uri, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret-0123456789")
    with pytest.raises(UserError):
        storage.resolve(uri)


def test_a_bad_endpoint_is_refused(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret-0123456789")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "127.0.0.1:9000")
    with pytest.raises(UserError, match="http"):
        storage.resolve("s3://bucket/prefix")


def test_gs_resolves_to_gcs_with_a_key_file(tmp_path, monkeypatch):
    key = tmp_path / "key.json"
    key.write_text('{"type": "service_account"}')
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    location = storage.resolve("gs://bucket/models/v1")
    assert isinstance(location.filesystem, fs.GcsFileSystem)
    assert (location.path, location.scheme) == ("bucket/models/v1", "gs")


def test_gs_without_credentials_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="no Google Cloud credentials") as missing:
        storage.resolve("gs://bucket/models")
    assert "GOOGLE_APPLICATION_CREDENTIALS" in str(missing.value)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    with pytest.raises(UserError, match="not a file"):
        storage.resolve("gs://bucket/models")


def test_gs_emulator_is_anonymous(monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:4443")
    assert isinstance(storage.resolve("gs://bucket/x").filesystem, fs.GcsFileSystem)


def test_publishing_refuses_what_could_not_be_fetched_safely(tmp_path):
    folder = tmp_path / "v1"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    (folder / "link").symlink_to(folder / "a.txt")
    with pytest.raises(UserError, match="symlink"):
        storage.publish_folder(folder, tmp_path / "out")
    (folder / "link").unlink()
    (folder / "weights.pt").write_bytes(b"\x80")
    with pytest.raises(UserError, match="pickled"):
        storage.publish_folder(folder, tmp_path / "out")
    (folder / "weights.pt").unlink()
    (folder / "MANIFEST.json").write_text('{"format_version": 1, "version": "v1", "files": {}}')
    with pytest.raises(UserError, match="does not match its files"):
        storage.publish_folder(folder, tmp_path / "out")
    with pytest.raises(UserError, match="version name"):
        storage.publish_folder(folder, tmp_path / "out", name="../up")
    assert not os.path.exists(tmp_path / "out")
