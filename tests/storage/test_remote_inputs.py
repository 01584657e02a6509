"""Data and models read from object storage: `data.path` (and single data files) and encoder sources in s3:// are
fetched once into the local caches, checked, and read exactly as local folders; a half-uploaded or altered prefix
is refused; missing credentials are named with the fix, and no credential ever reaches an error. The loopback-S3
tests are marked `storage`; the rest need no server."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from pyarrow import fs

from fusionrec import storage
from fusionrec.cli.main import cli
from fusionrec.data import load_dataset
from fusionrec.data.prepare import prepare_files
from fusionrec.errors import UserError
from fusionrec.model.sources import resolve_source
from fusionrec.runner.inputs import data_files
from fusionrec.spec import DataSpec, EncoderSpec

from testkit import shop_files

SECRET = "s3cr3t-VALUE-never-shown-0123"


@pytest.fixture
def homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fresh data and model caches for one test."""
    monkeypatch.setenv("FUSIONREC_DATA_HOME", str(tmp_path / "data-home"))
    monkeypatch.setenv("FUSIONREC_MODEL_HOME", str(tmp_path / "model-home"))
    return tmp_path


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    """The synthetic shop's raw CSV files in a folder named `shop`."""
    folder = tmp_path / "raw" / "shop"
    folder.mkdir(parents=True)
    shop_files(folder)
    return folder


@pytest.fixture
def prepared(shop: Path, tmp_path: Path) -> Path:
    prepare_files(shop / "interactions.csv", shop / "items.csv", name="shop", out=tmp_path / "prepared" / "shop")
    return tmp_path / "prepared" / "shop"


def upload_plain(folder: Path, uri: str) -> None:
    """What `aws s3 cp --recursive` does: every file as an object, no manifest, no marker."""
    target = storage.resolve(uri)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with target.filesystem.open_output_stream(target.child(path.relative_to(folder).as_posix()).path) as sink:
            sink.write(path.read_bytes())


def put(uri: str, data: bytes) -> None:
    location = storage.resolve(uri)
    with location.filesystem.open_output_stream(location.path) as sink:
        sink.write(data)


def same_data(a, b) -> None:
    assert a.name == b.name
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    pd.testing.assert_frame_equal(a.items, b.items)


def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("downloaded again although nothing changed")

    monkeypatch.setattr(storage, "_download_tagged", refuse)


# --- data ---------------------------------------------------------------------------------------------------------


@pytest.mark.storage
def test_a_pushed_dataset_loads_from_its_uri_like_the_local_folder(homes, prepared, s3_root, monkeypatch):
    pushed = CliRunner().invoke(cli, ["data", "push", "shop", s3_root, "--path", str(prepared), "--json"])
    assert pushed.exit_code == 0, pushed.output
    uri = json.loads(pushed.stdout)["uri"]
    assert uri == f"{s3_root}/shop" and storage.is_published(uri)

    local = load_dataset(DataSpec(dataset="shop", path=str(prepared)))
    fetched = load_dataset(DataSpec(dataset="shop", path=uri))
    same_data(fetched, local)
    assert list((homes / "data-home" / ".fetched").glob("*/shop/card.json"))  # in the data cache
    # `fusionrec run` keys its steps by the files load_dataset reads: the fetched copy's, not a missing path.
    keyed = data_files(DataSpec(dataset="shop", path=uri))
    assert keyed and all(f.is_file() and ".fetched" in f.parts for f in keyed)

    with monkeypatch.context() as patch:  # the next run re-uses the verified copy
        no_downloads(patch)
        same_data(load_dataset(DataSpec(dataset="shop", path=uri)), local)

    again = CliRunner().invoke(cli, ["data", "push", "shop", s3_root, "--path", str(prepared)])
    assert again.exit_code == 2 and "already published" in again.stderr


@pytest.mark.storage
def test_a_half_uploaded_or_altered_dataset_is_refused(homes, prepared, s3_root, monkeypatch):
    uri = storage.publish_folder(prepared, s3_root)
    put(f"{uri}/items.parquet", b"PAR1 not the published bytes PAR1")
    with pytest.raises(UserError, match=r"items.parquet: .*corrupted or altered in storage") as altered:
        load_dataset(DataSpec(dataset="shop", path=uri))
    assert altered.value.field == "spec.data.path"

    half = storage.publish_folder(prepared, s3_root, name="shop-2")
    location = storage.resolve(f"{half}/{storage.PUBLISHED_NAME}")
    location.filesystem.delete_file(location.path)  # the publish stopped before its marker
    with pytest.raises(UserError, match="no PUBLISHED marker") as unfinished:
        load_dataset(DataSpec(dataset="shop", path=half))
    assert unfinished.value.field == "spec.data.path"
    assert not list((homes / "data-home" / ".fetched").rglob("*.parquet"))  # nothing half-fetched was kept


@pytest.mark.storage
def test_a_folder_uploaded_with_other_tools_is_read_and_fetched_again_when_it_changes(homes, shop, s3_root):
    uri = f"{s3_root}/shop"
    upload_plain(shop, uri)
    files = {"interactions": "interactions.csv", "items": "items.csv"}

    remote = load_dataset(DataSpec(dataset=None, path=uri, **files))
    same_data(remote, load_dataset(DataSpec(dataset=None, path=str(shop), **files)))

    items = pd.read_csv(shop / "items.csv")
    items.loc[0, "title"] = "king movie renamed in storage"
    put(f"{uri}/items.csv", items.to_csv(index=False).encode())
    changed = load_dataset(DataSpec(dataset=None, path=uri, **files))
    assert changed.items.loc[changed.items["item_id"] == items.loc[0, "item_id"], "title"].item() == \
        "king movie renamed in storage"


@pytest.mark.storage
def test_single_data_files_may_be_uris(homes, shop, s3_root):
    uri = f"{s3_root}/shop"
    upload_plain(shop, uri)
    remote = load_dataset(DataSpec(dataset=None, interactions=f"{uri}/interactions.csv", items=f"{uri}/items.csv"))
    local = load_dataset(DataSpec(dataset=None, interactions=str(shop / "interactions.csv"),
                                  items=str(shop / "items.csv")))
    same_data(remote, local)  # named `shop` both ways: after the folder of interactions.csv


@pytest.mark.storage
def test_credentials_never_appear_in_data_errors(homes, prepared, s3_root, s3_env, monkeypatch):
    uri = storage.publish_folder(prepared, s3_root)
    key_id, secret = s3_env["AWS_ACCESS_KEY_ID"], s3_env["AWS_SECRET_ACCESS_KEY"]
    wrong = "W" + secret[1:]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    with pytest.raises(storage.StorageError) as failed:
        load_dataset(DataSpec(dataset="shop", path=uri))
    text = "".join(traceback.format_exception(failed.value))
    assert "spec.data.path" in text
    for credential in (key_id, secret, wrong):
        assert credential not in text

    result = CliRunner().invoke(cli, ["data", "push", "shop", s3_root, "--path", str(prepared), "--json"])
    assert result.exit_code == 1 and result.stderr.startswith("error: object storage: ")
    assert not any(credential in result.output for credential in (key_id, secret, wrong))


def test_data_without_credentials_names_the_field_and_what_to_set(homes, no_cloud_env, monkeypatch):
    with pytest.raises(UserError, match="no S3 credentials") as missing:
        load_dataset(DataSpec(dataset="shop", path="s3://bucket/datasets/shop"))
    assert missing.value.field == "spec.data.path" and "AWS_ACCESS_KEY_ID" in str(missing.value)

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)  # half a pair: named, never repeated
    with pytest.raises(UserError, match="AWS_ACCESS_KEY_ID is not set") as half:
        load_dataset(DataSpec(dataset=None, interactions="s3://bucket/shop/interactions.csv"))
    assert half.value.field == "spec.data.interactions" and SECRET not in str(half.value)

    with pytest.raises(UserError, match="no Google Cloud credentials") as google:
        load_dataset(DataSpec(dataset="shop", path="gs://bucket/datasets/shop"))
    assert google.value.field == "spec.data.path" and "GOOGLE_APPLICATION_CREDENTIALS" in str(google.value)

    with pytest.raises(UserError) as in_uri:
        load_dataset(DataSpec(dataset="shop", path=f"s3://AKIAEXAMPLE:{SECRET}@bucket/shop"))
    assert SECRET not in str(in_uri.value) and "AKIAEXAMPLE" not in str(in_uri.value)


def test_pushing_needs_a_prepared_folder(homes, tmp_path):
    result = CliRunner().invoke(cli, ["data", "push", "shop", str(tmp_path / "published")])
    assert result.exit_code == 2 and "is not a prepared dataset" in result.stderr
    assert "fusionrec data prepare shop" in result.stderr


def test_pushing_to_a_folder_publishes_a_version_that_loads(homes, prepared, tmp_path):
    result = CliRunner().invoke(cli, ["data", "push", "shop-v2", str(tmp_path / "published"), "--path",
                                      str(prepared)])
    assert result.exit_code == 0, result.output
    assert storage.list_published(tmp_path / "published") == ["shop-v2"]
    same_data(load_dataset(DataSpec(dataset="shop", path=str(tmp_path / "published" / "shop-v2"))),
              load_dataset(DataSpec(dataset="shop", path=str(prepared))))


# --- models -------------------------------------------------------------------------------------------------------


@pytest.mark.storage
def test_a_published_model_folder_is_fetched_once_and_loads(homes, tiny_models, s3_root, monkeypatch):
    from fusionrec.model.encoders import TextEncoder

    uri = storage.publish_folder(tiny_models["bert"], f"{s3_root}/models", name="bert")
    folder = resolve_source(uri)
    assert folder.is_relative_to(homes / "model-home")
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (folder / name).read_bytes() == (tiny_models["bert"] / name).read_bytes()

    with monkeypatch.context() as patch:
        no_downloads(patch)
        encoder = TextEncoder(EncoderSpec(name="bert", source=uri, freeze=True, max_length=16), dim=8)
    assert encoder.folder == folder
    assert encoder.pooled_texts(["a cat sits on the mat", "star war"]).shape[0] == 2


@pytest.mark.storage
def test_a_model_folder_uploaded_with_other_tools_loads_unless_it_holds_pickles(homes, tiny_models, s3_root):
    uri = f"{s3_root}/models/bert-plain"
    upload_plain(tiny_models["bert"], uri)
    folder = resolve_source(uri)
    assert (folder / "model.safetensors").read_bytes() == (tiny_models["bert"] / "model.safetensors").read_bytes()

    put(f"{uri}/pytorch_model.bin", b"\x80\x04 a pickle that could run code")
    with pytest.raises(UserError, match=r"pickled files are refused.*pytorch_model\.bin") as refused:
        resolve_source(uri)
    assert refused.value.field == "source" and uri in str(refused.value)


@pytest.mark.storage
def test_a_half_uploaded_model_is_refused(homes, tiny_models, s3_root):
    uri = storage.publish_folder(tiny_models["mpnet"], f"{s3_root}/models", name="mpnet")
    marker = storage.resolve(f"{uri}/{storage.PUBLISHED_NAME}")
    marker.filesystem.delete_file(marker.path)
    with pytest.raises(UserError, match="no PUBLISHED marker"):
        resolve_source(uri)
    assert not list((homes / "model-home").rglob("config.json"))


def test_model_sources_in_object_storage_pass_the_spec_and_name_missing_credentials(homes, no_cloud_env):
    for source in ("s3://bucket/models/minilm", "gs://bucket/models/minilm"):
        assert EncoderSpec(name="minilm", source=source).source == source
    with pytest.raises(UserError, match="no Google Cloud credentials") as google:
        resolve_source("gs://bucket/models/minilm")
    assert "GOOGLE_APPLICATION_CREDENTIALS" in str(google.value) and google.value.field == "source"
    with pytest.raises(UserError, match="no S3 credentials"):
        resolve_source("s3://bucket/models/minilm")
    with pytest.raises(UserError, match="names no bucket"):
        resolve_source("gs:///minilm")
    with pytest.raises(UserError) as in_uri:
        resolve_source(f"s3://AKIAEXAMPLE:{SECRET}@bucket/minilm")
    assert SECRET not in str(in_uri.value) and "AKIAEXAMPLE" not in str(in_uri.value)


def test_gs_sources_resolve_to_google_cloud_storage(tmp_path, no_cloud_env, monkeypatch):
    """Without Google: the URI parses to a GCS filesystem and path (the transfer itself is the S3 tests' code)."""
    key = tmp_path / "key.json"
    key.write_text('{"type": "service_account"}')
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    location = storage.resolve("gs://models-bucket/encoders/minilm/")
    assert isinstance(location.filesystem, fs.GcsFileSystem)
    assert (location.path, location.uri, location.scheme) == ("models-bucket/encoders/minilm",
                                                              "gs://models-bucket/encoders/minilm", "gs")
