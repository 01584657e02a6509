"""`fusionrec.storage.local_copy`: a local folder for readers that open files on disk, whatever put the folder in
object storage. No server: the "bucket" is a local folder seen through pyarrow's SubTreeFileSystem, so paths are
`bucket/prefix/...` as on S3 and every object-store code path runs (the loopback-S3 versions of these checks are
in test_remote_inputs.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pyarrow import fs

from fusionrec import storage
from fusionrec.errors import UserError


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """The local folder that plays the object store: its top-level folders are buckets."""
    (tmp_path / "store" / "bucket").mkdir(parents=True)
    return tmp_path / "store"


def remote(store: Path, path: str) -> storage.Location:
    return storage.Location(fs.SubTreeFileSystem(str(store), fs.LocalFileSystem()), path, f"s3://{path}", "s3")


def upload(store: Path, prefix: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        target = store / prefix / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


SHOP = {"interactions.csv": b"user_id,item_id,timestamp\n1,2,3\n", "items.csv": b"item_id,title\n2,Toy\n",
        "docs/readme.txt": b"the shop's export\n"}


def test_a_local_path_is_the_folder_itself(tmp_path):
    assert storage.local_copy(tmp_path, tmp_path / "cache") == tmp_path
    assert storage.local_copy(f"file://{tmp_path}", tmp_path / "cache") == tmp_path
    assert not (tmp_path / "cache").exists()


def test_a_plain_folder_is_copied_whole_and_recorded(store, tmp_path):
    upload(store, "bucket/data/shop", {**SHOP, ".git/HEAD": b"ref\n", ".tmp-x/y": b"half"})

    copy = storage.local_copy(remote(store, "bucket/data/shop"), tmp_path / "cache")

    assert copy.name == "shop" and copy.parent.parent == tmp_path / "cache"
    files = tree(copy)
    record = json.loads(files.pop(storage.COPY_RECORD))
    assert files == SHOP  # hidden objects (.git/, temporary prefixes) are not copied
    assert record["uri"] == "s3://bucket/data/shop"
    assert {name: entry["size"] for name, entry in record["files"].items()} == {n: len(b) for n, b in SHOP.items()}
    assert all(len(entry["sha256"]) == 64 and entry["mtime_ns"] for entry in record["files"].values())
    assert [p.name for p in copy.parent.iterdir()] == ["shop"]  # no temporary folder left beside it


def test_a_copy_is_reused_until_an_object_changes(store, tmp_path, monkeypatch):
    upload(store, "bucket/data/shop", SHOP)
    source = remote(store, "bucket/data/shop")
    first = storage.local_copy(source, tmp_path / "cache")

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded again although nothing changed")

    with monkeypatch.context() as patch:
        patch.setattr(storage, "_download_tagged", no_download)
        assert storage.local_copy(source, tmp_path / "cache") == first

    # Same size, new content and a new modification time, as a replaced object has.
    changed = store / "bucket/data/shop/items.csv"
    changed.write_bytes(b"item_id,title\n2,Cat\n")
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 2_000_000_000))
    again = storage.local_copy(source, tmp_path / "cache")
    assert again == first and (again / "items.csv").read_bytes() == b"item_id,title\n2,Cat\n"

    (again / "items.csv").write_bytes(b"item_id,title\n2,Dog\n")  # a local copy altered on disk is fetched again
    assert (storage.local_copy(source, tmp_path / "cache") / "items.csv").read_bytes().endswith(b"Cat\n")


def test_objects_changing_during_the_copy_leave_nothing(store, tmp_path, monkeypatch):
    upload(store, "bucket/data/shop", SHOP)
    real = storage._download_tagged

    def racing_upload(location, dest):
        upload(store, "bucket/data/shop", {"late.csv": b"added meanwhile\n"})
        return real(location, dest)

    monkeypatch.setattr(storage, "_download_tagged", racing_upload)
    with pytest.raises(storage.StorageError, match="changed|added, replaced or removed"):
        storage.local_copy(remote(store, "bucket/data/shop"), tmp_path / "cache")
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")] == []


def test_a_published_folder_is_fetched_and_checked_against_its_manifest(store, tmp_path):
    source_folder = tmp_path / "src" / "shop"
    upload(tmp_path / "src", "shop", SHOP)
    storage.publish_folder(source_folder, store / "bucket" / "data")

    copy = storage.local_copy(remote(store, "bucket/data/shop"), tmp_path / "cache")
    assert {n: b for n, b in tree(copy).items() if n != storage.MANIFEST_NAME} == SHOP

    (store / "bucket/data/shop/items.csv").write_bytes(b"item_id,title\n2,Cat\n")  # altered in storage
    with pytest.raises(UserError, match=r"items.csv: .*corrupted or altered in storage"):
        storage.local_copy(remote(store, "bucket/data/shop"), tmp_path / "other-cache")


def test_a_manifest_without_its_marker_is_an_unfinished_publish_and_refused(store, tmp_path):
    upload(tmp_path / "src", "shop", SHOP)
    storage.publish_folder(tmp_path / "src" / "shop", store / "bucket" / "data")
    (store / "bucket/data/shop" / storage.PUBLISHED_NAME).unlink()  # the upload stopped before the marker

    with pytest.raises(UserError, match="MANIFEST.json but no PUBLISHED marker") as refused:
        storage.local_copy(remote(store, "bucket/data/shop"), tmp_path / "cache")
    assert "fusionrec data push" in str(refused.value)
    assert not any((tmp_path / "cache").rglob("*.csv"))


@pytest.mark.parametrize("pickle", ["pytorch_model.bin", "sub/state.pt", "model.ckpt", "extra.PKL"])
def test_pickled_files_are_refused(store, tmp_path, pickle):
    upload(store, "bucket/models/minilm", {"config.json": b"{}", "model.safetensors": b"x", pickle: b"\x80\x04"})
    with pytest.raises(UserError, match="pickled files are refused") as refused:
        storage.local_copy(remote(store, "bucket/models/minilm"), tmp_path / "cache")
    assert pickle in str(refused.value) and "safetensors" in str(refused.value)
    assert not any((tmp_path / "cache").rglob("config.json"))


def test_one_object_is_copied_alone_into_a_folder_named_like_its_own(store, tmp_path):
    upload(store, "bucket/exports/shop", SHOP)

    file = storage.local_copy(remote(store, "bucket/exports/shop/interactions.csv"), tmp_path / "cache")

    assert file.name == "interactions.csv" and file.parent.name == "shop"
    assert file.read_bytes() == SHOP["interactions.csv"]
    assert sorted(p.name for p in file.parent.iterdir()) == [storage.COPY_RECORD, "interactions.csv"]


def test_nothing_at_the_uri_is_named(store, tmp_path):
    with pytest.raises(UserError, match="s3://bucket/data/none: no objects there"):
        storage.local_copy(remote(store, "bucket/data/none"), tmp_path / "cache")
    with pytest.raises(UserError, match="bucket 'other' does not exist"):
        storage.local_copy(remote(store, "other/data/none"), tmp_path / "cache")


def test_shown_uri_never_repeats_user_information():
    assert storage.shown_uri("s3://AKIAEXAMPLE:hunter2@bucket/x") == "s3://..."
    assert storage.shown_uri("s3://bucket/a@b") == "s3://bucket/a@b"
    assert storage.shown_uri("/data/shop") == "/data/shop"


def test_is_remote():
    assert storage.is_remote("s3://b/p") and storage.is_remote("gs://b/p") and storage.is_remote("ftp://x")
    assert not storage.is_remote("/data/shop") and not storage.is_remote("file:///data") \
        and not storage.is_remote("runs")
