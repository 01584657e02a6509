"""Model sources, packaged layouts, pull and verify: all offline, on the tiny models and fake packages."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from fusionrec.cli.main import cli
from fusionrec.cli.models_cmd import models
from fusionrec.errors import UserError
from fusionrec.model import packaged
from fusionrec.model.packaged import atomic_directory, materialise
from fusionrec.model.sources import pull_model, resolve_source, verify_manifest

# Importing a model package could fail or be slow; finding it must not import it.
_EXPLODING_INIT = "raise ImportError('model packages must be found, not imported')\n"


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder on sys.path where a test installs fake model packages."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "model-home"
    monkeypatch.setenv("FUSIONREC_MODEL_HOME", str(folder))
    return folder


def _package(site: Path, name: str) -> Path:
    folder = site / name
    folder.mkdir()
    (folder / "__init__.py").write_text(_EXPLODING_INIT)
    return folder


def _zip_bytes(model: Path, top: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{top}/", "")
        for file in sorted(model.iterdir()):
            archive.write(file, f"{top}/{file.name}")
        archive.writestr(f"{top}/desktop.ini", "[junk]")
    return buffer.getvalue()


def _same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    copied = sorted(p.name for p in b.iterdir() if not p.name.startswith(".") and p.name != "MANIFEST.json")
    return names == copied and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names
    )


# --- local, file://, pvc://, hf://, unknown ---------------------------------------------------------------------


def test_local_folder_and_file_url_resolve_to_the_folder(tiny_models, monkeypatch):
    bert = tiny_models["bert"]
    assert resolve_source(str(bert)) == bert
    assert resolve_source(bert.as_uri()) == bert
    monkeypatch.chdir(bert.parent)
    assert resolve_source("./bert") == bert


def test_missing_folder_names_the_source(tmp_path):
    with pytest.raises(UserError, match=r"source '.*nowhere'.*does not exist") as err:
        resolve_source(str(tmp_path / "nowhere"))
    assert "config.json" in err.value.render()


def test_folder_without_a_model_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("no model here")
    with pytest.raises(UserError, match="holds no model"):
        resolve_source(str(tmp_path))


@pytest.mark.parametrize("source, message", [
    ("ftp://host/model", "models are not loaded from ftp:// sources"),
    ("hdfs://namenode/model", "models are not loaded from hdfs:// sources"),
    ("s3:///model", "names no bucket"),
    ("pkg://", "no package named"),
    ("hf://just-a-name", r"expected hf://<org>/<name>"),
])
def test_bad_sources_say_what_to_write(source, message):
    with pytest.raises(UserError, match=message) as err:
        resolve_source(source)
    assert err.value.fix or "expected" in str(err.value)


def test_hub_off_fails_clearly_without_calling_the_hub(monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("snapshot_download must not be called with the hub off")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        resolve_source("hf://sentence-transformers/all-MiniLM-L6-v2")
    text = err.value.render()
    assert "hub is off" in text
    assert "fusionrec models pull hf://sentence-transformers/all-MiniLM-L6-v2" in text


def test_pvc_source_maps_to_the_mount_root(tiny_models, tmp_path, monkeypatch):
    claim = tmp_path / "mounts" / "models"
    shutil.copytree(tiny_models["mpnet"], claim / "mpnet")
    monkeypatch.setenv("FUSIONREC_PVC_ROOT", str(tmp_path / "mounts"))
    assert resolve_source("pvc://models/mpnet") == claim / "mpnet"
    with pytest.raises(UserError, match="FUSIONREC_PVC_ROOT") as err:
        resolve_source("pvc://other-claim/mpnet")
    assert "other-claim" in str(err.value)


# --- pkg:// -------------------------------------------------------------------------------------------------


def test_package_with_a_model_folder_is_found_without_importing_it(tiny_models, site, cache):
    package = _package(site, "fake_minilm")
    shutil.copytree(tiny_models["bert"], package / "model")
    (package / "model" / "1_Pooling").mkdir()  # sentence-transformers' pooling folder also has a config.json
    (package / "model" / "1_Pooling" / "config.json").write_text("{}")
    assert resolve_source("pkg://fake_minilm") == package / "model"
    assert resolve_source("pkg://fake_minilm/model") == package / "model"
    assert "fake_minilm" not in sys.modules
    assert not cache.exists(), "a plain folder is used in place, not copied"


def test_package_found_by_its_pip_name(tiny_models, site, cache):
    package = _package(site, "fake_pip_model")
    shutil.copytree(tiny_models["bert"], package / "model")
    dist_info = site / "fake_pip_model_dist-0.1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-pip-model-dist\nVersion: 0.1.0\n")
    (dist_info / "RECORD").write_text("fake_pip_model/__init__.py,,\nfake_pip_model/model/config.json,,\n")
    assert resolve_source("pkg://fake-pip-model-dist") == package / "model"


def test_missing_package_and_subfolder_are_named(site, tiny_models):
    with pytest.raises(UserError, match="no installed package named 'not_installed_anywhere'"):
        resolve_source("pkg://not_installed_anywhere")
    package = _package(site, "fake_empty")
    shutil.copytree(tiny_models["bert"], package / "model")
    with pytest.raises(UserError, match="does not exist inside package 'fake_empty'"):
        resolve_source("pkg://fake_empty/weights")


def test_split_zip_over_sibling_packages_is_joined_once(tiny_models, site, cache, monkeypatch):
    data = _zip_bytes(tiny_models["mpnet"], "tiny-mpnet")
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    for number in range(1, 4):
        inputs = _package(site, f"fake-mpnet-part_{number:03d}") / "input"
        inputs.mkdir()
        (inputs / f"tiny-mpnet.zip.{number:03d}").write_bytes(data[cut[number - 1]:cut[number]])

    folder = resolve_source("pkg://fake-mpnet-part_001")
    assert folder == cache / "tiny-mpnet"
    assert _same_files(tiny_models["mpnet"], folder)
    assert not (folder / "desktop.ini").exists()

    def no_rejoin(*args, **kwargs):
        raise AssertionError("a cached model must not be joined again")

    monkeypatch.setattr(packaged, "atomic_directory", no_rejoin)
    assert resolve_source("pkg://fake-mpnet-part_001") == folder


def test_a_second_install_of_the_same_files_reuses_the_cache_and_changed_files_rebuild(
        tiny_models, site, cache, monkeypatch):
    """Two virtual environments with the same package (a second clone, CI) differ only in mtimes: the content
    decides then, so neither rebuilds the other's entry; a changed file still rebuilds."""
    data = _zip_bytes(tiny_models["mpnet"], "tiny-mpnet")
    inputs = _package(site, "fake-mpnet-whole") / "input"
    inputs.mkdir()
    zipped = inputs / "tiny-mpnet.zip"
    zipped.write_bytes(data)
    folder = resolve_source("pkg://fake-mpnet-whole")
    built = folder.stat().st_mtime_ns

    os.utime(zipped, ns=(1_000_000_000, 1_000_000_000))  # the other venv's copy: same bytes, another mtime
    real_directory = packaged.atomic_directory

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the same content must not be rebuilt")

    monkeypatch.setattr(packaged, "atomic_directory", no_rebuild)
    assert resolve_source("pkg://fake-mpnet-whole") == folder
    assert folder.stat().st_mtime_ns == built

    with zipfile.ZipFile(zipped, "a") as archive:  # an upgrade: other bytes
        archive.comment = b"rebuilt by the next release"
    rebuilt = []
    monkeypatch.setattr(packaged, "atomic_directory",
                        lambda *a, **k: rebuilt.append(1) or real_directory(*a, **k))
    resolve_source("pkg://fake-mpnet-whole")
    assert rebuilt == [1]


def test_split_zip_with_a_missing_part_says_so(tiny_models, site, cache):
    data = _zip_bytes(tiny_models["mpnet"], "tiny-mpnet")
    half = len(data) // 2
    inputs = _package(site, "fake-broken-part_001") / "input"
    inputs.mkdir()
    (inputs / "broken.zip.001").write_bytes(data[:half])
    with pytest.raises(UserError, match=r"a part is probably missing") as err:
        resolve_source("pkg://fake-broken-part_001")
    assert "broken.zip.002" in err.value.render()
    assert not (cache / "broken").exists()
    assert not any(p.name.startswith(".broken.tmp") for p in cache.iterdir())


def test_zip_members_cannot_escape(tmp_path, cache):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../../escaped.txt", "gotcha")
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "evil.zip").write_bytes(buffer.getvalue())
    with pytest.raises(UserError, match="outside the extraction folder"):
        materialise(tmp_path / "evil")
    assert not (tmp_path / "escaped.txt").exists()


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_directory(dest, replace=True) as staging:
            (staging / "config.json").write_text("{}")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


# --- pull and verify ----------------------------------------------------------------------------------------


def test_pull_writes_a_manifest_that_verifies(tiny_models, tmp_path):
    dest = pull_model(str(tiny_models["llama"]), tmp_path / "pulled")
    manifest = json.loads((dest / "MANIFEST.json").read_text())
    assert set(manifest["files"]) == {p.name for p in tiny_models["llama"].iterdir()}
    assert manifest["source"] == str(tiny_models["llama"])
    assert verify_manifest(dest)["files"] == manifest["files"]
    assert _same_files(tiny_models["llama"], dest)


@pytest.mark.parametrize("tamper, message", [
    (lambda d: (d / "tokenizer.json").write_text((d / "tokenizer.json").read_text().replace("[UNK]", "[UNX]")),
     r"tokenizer.json: modified \(sha256"),
    (lambda d: (d / "tokenizer_config.json").write_text((d / "tokenizer_config.json").read_text() + " "),
     r"tokenizer_config.json: modified \(size"),
    (lambda d: _flip_last_byte(d / "model.safetensors"), r"model.safetensors: modified \(sha256"),
    (lambda d: (d / "config.json").unlink(), r"config.json: missing"),
    (lambda d: (d / "extra.bin").write_bytes(b"pickle?"), r"extra.bin: not in the manifest"),
])
def test_verify_names_the_tampered_file(tiny_models, tmp_path, tamper, message):
    dest = pull_model(str(tiny_models["bert"]), tmp_path / "pulled")
    tamper(dest)
    with pytest.raises(UserError, match=message):
        verify_manifest(dest)


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_pull_refuses_a_non_empty_destination_unless_forced(tiny_models, tmp_path):
    dest = tmp_path / "pulled"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        pull_model(str(tiny_models["bert"]), dest)
    assert (dest / "keep.txt").exists()
    pull_model(str(tiny_models["bert"]), dest, force=True)
    assert not (dest / "keep.txt").exists()
    verify_manifest(dest)


def test_cli_pull_verify_list_info_from_a_fake_package(tiny_models, site, cache, tmp_path):
    if "models" not in cli.commands:  # until fusionrec/cli/main.py registers the group
        cli.add_command(models)
    package = _package(site, "fake_cli_model")
    shutil.copytree(tiny_models["bert"], package / "model")
    runner = CliRunner()
    dest = tmp_path / "air-gapped" / "bert"

    result = runner.invoke(cli, ["models", "pull", "pkg://fake_cli_model", str(dest)])
    assert result.exit_code == 0, result.output
    assert "pulled pkg://fake_cli_model" in result.output
    result = runner.invoke(cli, ["models", "verify", str(dest)])
    assert result.exit_code == 0 and "ok: 4 files match" in result.output, result.output
    result = runner.invoke(cli, ["models", "info", str(dest)])
    assert result.exit_code == 0 and "bert" in result.output and "hidden_size        32" in result.output
    assert json.loads(runner.invoke(cli, ["models", "info", str(dest), "--json"]).stdout)["hidden_size"] == 32
    assert json.loads(runner.invoke(cli, ["models", "verify", str(dest), "--json"]).stdout) == {
        "folder": str(dest), "ok": True, "files": 4}

    (dest / "config.json").write_text("{}")
    result = runner.invoke(cli, ["models", "verify", str(dest)])
    assert result.exit_code == 2
    assert "config.json: modified" in result.output

    result = runner.invoke(cli, ["models", "list"])
    assert result.exit_code == 0 and "no models cached" in result.output
    assert json.loads(runner.invoke(cli, ["models", "list", "--json"]).stdout)["models"] == []
