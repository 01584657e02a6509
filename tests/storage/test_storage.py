"""publish_folder / fetch_folder / is_published / list_published, on a local folder and on a real S3 server
(the `storage`-marked parameter: SeaweedFS on loopback, tests/storage/conftest.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import traceback
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as save_safetensors

from fusionrec import storage
from fusionrec.artifact import load_artifact, write_artifact
from fusionrec.errors import UserError
from fusionrec.files import sha256_file
from fusionrec.spec import FusionRecommenderSpec


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden_entries(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")] if folder.exists() else []


def overwrite(uri: str, data: bytes) -> None:
    location = storage.resolve(uri)
    with location.filesystem.open_output_stream(location.path) as sink:
        sink.write(data)


def all_objects(uri: str) -> list[str]:
    from pyarrow import fs

    location = storage.resolve(uri)
    infos = location.filesystem.get_file_info(fs.FileSelector(location.path, recursive=True, allow_not_found=True))
    return sorted(i.path[len(location.path) + 1:] for i in infos if i.type == fs.FileType.File)


def test_publish_then_fetch_round_trips_bytes_and_sha256(root, sample_folder, tmp_path):
    uri = storage.publish_folder(sample_folder, root)

    assert uri == f"{root}/v1"
    assert storage.is_published(uri)
    assert storage.list_published(root) == ["v1"]
    fetched = storage.fetch_folder(uri, tmp_path / "cache")
    assert fetched == tmp_path / "cache" / "v1"
    got = tree(fetched)
    assert {n: b for n, b in got.items() if n != storage.MANIFEST_NAME} == tree(sample_folder)
    manifest = json.loads(got[storage.MANIFEST_NAME])
    for name, entry in manifest["files"].items():
        assert entry == {"sha256": sha256_file(sample_folder / name), "size": (sample_folder / name).stat().st_size}
    marker = storage.resolve(f"{uri}/{storage.PUBLISHED_NAME}")
    with marker.filesystem.open_input_stream(marker.path) as stream:
        assert stream.read().decode().strip() == hashlib.sha256(got[storage.MANIFEST_NAME]).hexdigest()
    # Nothing temporary is left, locally or in the store, and the local folder was never touched.
    assert hidden_entries(tmp_path / "cache") == []
    assert not [o for o in all_objects(root) if o.startswith(".")]
    assert storage.MANIFEST_NAME not in tree(sample_folder)


def test_an_artifact_keeps_its_own_manifest_and_loads_after_the_fetch(root, tmp_path):
    spec = FusionRecommenderSpec.model_validate({
        "version": "v7", "encoders": [{"name": "minilm", "source": "./models/minilm"}],
        "fusion": {"method": "attention", "dim": 8}})
    weights = save_safetensors({"head.bias": np.arange(4, dtype=np.float32)})
    artifact = write_artifact(tmp_path / "runs", "v7", {"model.safetensors": weights}, spec=spec)

    fetched = storage.fetch_folder(storage.publish_folder(artifact, root), tmp_path / "cache")

    assert (fetched / "MANIFEST.json").read_bytes() == (artifact / "MANIFEST.json").read_bytes()
    assert load_artifact(fetched).spec == spec


def test_a_version_whose_upload_stopped_before_the_marker_is_never_read(root, sample_folder, tmp_path,
                                                                        monkeypatch):
    def crash(target, digest):
        raise RuntimeError("the publisher died here")

    with monkeypatch.context() as patch:
        patch.setattr(storage, "_write_marker", crash)
        with pytest.raises(RuntimeError, match="died"):
            storage.publish_folder(sample_folder, root)
    # Every file and the manifest reached the final prefix: only the marker is missing.
    assert set(all_objects(f"{root}/v1")) == set(tree(sample_folder)) | {storage.MANIFEST_NAME}

    assert not storage.is_published(f"{root}/v1")
    assert storage.list_published(root) == []
    with pytest.raises(UserError, match="not published") as refused:
        storage.fetch_folder(f"{root}/v1", tmp_path / "cache")
    assert "publish_folder" in str(refused.value)
    assert not (tmp_path / "cache" / "v1").exists()
    assert hidden_entries(tmp_path / "cache") == []

    # Publishing again replaces what the unfinished attempt left.
    storage.publish_folder(sample_folder, root)
    assert storage.list_published(root) == ["v1"]
    assert tree(storage.fetch_folder(f"{root}/v1", tmp_path / "cache")).keys() >= tree(sample_folder).keys()


def test_files_only_staged_under_the_temporary_prefix_are_not_a_version(root, sample_folder):
    _, manifest = storage._local_manifest(sample_folder, "v1")
    staging = storage.resolve(root).child(".tmp-v1-abc")
    storage._upload_verified(sample_folder, manifest, staging)

    assert all_objects(staging.uri)
    assert storage.list_published(root) == []
    assert not storage.is_published(staging.uri)


@pytest.mark.parametrize("victim", ["big.dat", "sub/b.json"])
def test_a_corrupted_object_fails_the_fetch_and_leaves_nothing_trusted(root, sample_folder, tmp_path, victim):
    uri = storage.publish_folder(sample_folder, root)
    good = storage.fetch_folder(uri, tmp_path / "good-cache")
    original = (sample_folder / victim).read_bytes()
    overwrite(f"{uri}/{victim}", bytes([original[0] ^ 1]) + original[1:])  # same size, other bytes

    with pytest.raises(UserError, match="sha256") as failed:
        storage.fetch_folder(uri, tmp_path / "cache")
    assert victim in str(failed.value)
    assert not (tmp_path / "cache" / "v1").exists()
    assert hidden_entries(tmp_path / "cache") == []
    # A copy fetched before the corruption is not replaced by a failed fetch.
    (good / "a.txt").write_text("changed locally\n")  # ...and a changed local copy is not trusted either
    with pytest.raises(UserError, match="sha256"):
        storage.fetch_folder(uri, tmp_path / "good-cache")
    assert (good / "a.txt").read_text() == "changed locally\n"


def test_an_altered_manifest_fails_against_the_marker(root, sample_folder, tmp_path):
    uri = storage.publish_folder(sample_folder, root)
    manifest = json.loads((storage.fetch_folder(uri, tmp_path / "first") / "MANIFEST.json").read_text())
    manifest["files"]["a.txt"]["sha256"] = "0" * 64
    overwrite(f"{uri}/MANIFEST.json", json.dumps(manifest).encode())

    with pytest.raises(UserError, match="does not match PUBLISHED"):
        storage.fetch_folder(uri, tmp_path / "cache")
    assert not (tmp_path / "cache" / "v1").exists()


def test_a_local_copy_is_reused_while_it_matches(root, sample_folder, tmp_path, monkeypatch):
    uri = storage.publish_folder(sample_folder, root)
    first = storage.fetch_folder(uri, tmp_path / "cache")
    monkeypatch.setattr(storage, "_download", lambda *a: pytest.fail("downloaded again"))
    assert storage.fetch_folder(uri, tmp_path / "cache") == first


def test_published_versions_are_immutable(root, sample_folder):
    storage.publish_folder(sample_folder, root)
    with pytest.raises(UserError, match="immutable"):
        storage.publish_folder(sample_folder, root)
    storage.publish_folder(sample_folder, root, name="v2")
    assert storage.list_published(root) == ["v1", "v2"]


@pytest.mark.storage
def test_credentials_never_appear_in_errors_or_logs(s3_root, s3_env, sample_folder, tmp_path, monkeypatch,
                                                    caplog):
    caplog.set_level(logging.DEBUG)
    key_id, secret = s3_env["AWS_ACCESS_KEY_ID"], s3_env["AWS_SECRET_ACCESS_KEY"]
    uri = storage.publish_folder(sample_folder, s3_root)
    storage.fetch_folder(uri, tmp_path / "cache")
    assert "published" in caplog.text and "fetched" in caplog.text

    wrong = "W" + secret[1:]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    errors: list[BaseException] = []
    for attempt in (lambda: storage.publish_folder(sample_folder, s3_root, name="v9"),
                    lambda: storage.fetch_folder(uri, tmp_path / "other"),
                    lambda: storage.list_published(s3_root)):
        with pytest.raises(storage.StorageError) as failed:
            attempt()
        errors.append(failed.value)
    for error in errors:
        text = "".join(traceback.format_exception(error))
        for credential in (key_id, secret, wrong):
            assert credential not in text
            assert credential not in caplog.text
    assert "AccessDenied" in str(errors[0]) or "403" in str(errors[0]) or "ACCESS_DENIED" in str(errors[0])


@pytest.mark.storage
def test_a_missing_bucket_is_named(s3_env, sample_folder):
    with pytest.raises(UserError, match="bucket 'no-such-bucket-fr' does not exist"):
        storage.publish_folder(sample_folder, "s3://no-such-bucket-fr/x")


def test_an_object_that_reads_back_wrong_is_not_published(root, sample_folder, monkeypatch):
    monkeypatch.setattr(storage, "_hash_object", lambda location: ("0" * 64, 1))
    with pytest.raises(storage.StorageError, match="do not match the manifest"):
        storage.publish_folder(sample_folder, root)
    assert storage.list_published(root) == []
    assert all_objects(root) == []  # the temporary prefix is gone too


def test_write_object_syncs_every_folder_it_created_and_the_one_above(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A new folder's entry lives in its parent: the first object of a new replica folder must survive a power
    cut with the folders leading to it, so each created folder and the existing one above are fsync'd."""
    import os

    from fusionrec.storage import resolve, write_object

    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_object(resolve(str(tmp_path / "live" / "events" / "ingress-a" / "seg.parquet")), b"x")
    assert (tmp_path / "live" / "events" / "ingress-a" / "seg.parquet").read_bytes() == b"x"
    folders = {str(tmp_path), str(tmp_path / "live"), str(tmp_path / "live" / "events"),
               str(tmp_path / "live" / "events" / "ingress-a")}
    assert folders <= set(synced)
    synced.clear()
    write_object(resolve(str(tmp_path / "live" / "events" / "ingress-a" / "seg2.parquet")), b"y")
    assert str(tmp_path / "live") not in synced  # an existing folder: only its own folder is synced
