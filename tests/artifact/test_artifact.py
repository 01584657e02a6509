"""Round trip, and every way a load must refuse an artifact (with the file named)."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch
import yaml

from fusionrec import __version__
from fusionrec.artifact import FORMAT_VERSION, content_hash, list_versions, load_artifact, write_artifact
from fusionrec.errors import UserError


def test_round_trip(tmp_path, spec, files, state_dict):
    root = tmp_path / "runs"
    path = write_artifact(root, "v1", files, spec=spec, metrics={"ndcg@10": 0.25})
    assert path == root / "v1" and list_versions(root) == ["v1"]
    assert sorted(os.listdir(root)) == ["v1"]  # no temp or set-aside folders left

    manifest = json.loads((path / "MANIFEST.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION and manifest["fusionrec_version"] == __version__
    assert manifest["version"] == "v1" and manifest["created"].endswith("+00:00")
    assert sorted(manifest["files"]) == [
        "item_index.npy", "items.parquet", "metrics.json", "model.safetensors", "spec.yaml",
        "tokenizers/minilm/tokenizer_config.json", "tokenizers/minilm/vocab.txt", "tokenizers/mpnet/vocab.txt"]
    for name, entry in manifest["files"].items():
        data = (path / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    artifact = load_artifact(path)
    assert artifact.spec == spec and artifact.version == "v1"
    assert artifact.metrics == {"ndcg@10": 0.25}
    loaded = artifact.load_state_dict()
    assert loaded.keys() == state_dict.keys()
    for key, tensor in state_dict.items():
        torch.testing.assert_close(loaded[key], tensor)
    np.testing.assert_array_equal(artifact.load_item_index(), np.arange(12, dtype=np.float32).reshape(3, 4))
    assert (artifact.tokenizer_dir("mpnet") / "vocab.txt").read_text().startswith("<pad>")
    assert artifact.onnx_path is None and artifact.items_path == path / "items.parquet"
    with pytest.raises(UserError, match=r"no tokenizer for encoder 'gpt2'; it has \['minilm', 'mpnet'\]"):
        artifact.tokenizer_dir("gpt2")


def test_spec_may_be_given_as_a_whole_manifest_file(tmp_path, spec, files):
    document = {"apiVersion": "fusionrec.io/v1alpha1", "kind": "FusionRecommender",
                "metadata": {"name": "shop"}, "spec": spec.model_dump(mode="json", by_alias=True)}
    files["spec.yaml"] = yaml.safe_dump(document).encode()
    assert load_artifact(write_artifact(tmp_path, "v1", files)).spec == spec


@pytest.fixture
def written(tmp_path, spec, files):
    return write_artifact(tmp_path / "runs", "v1", files, spec=spec)


def test_tampered_file_is_named(written):
    data = bytearray((written / "items.parquet").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    (written / "items.parquet").write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"items.parquet: sha256 does not match MANIFEST.json \(tampered\)"):
        load_artifact(written)
    load_artifact(written, verify=False)  # sizes still match: only hashing catches this


def test_resized_file_is_refused_even_without_hashing(written):
    with open(written / "spec.yaml", "a") as handle:
        handle.write("# edited\n")
    with pytest.raises(UserError, match=r"spec.yaml: size \d+ != \d+ in MANIFEST.json"):
        load_artifact(written, verify=False)


def test_missing_and_unexpected_files_are_named(written):
    (written / "item_index.npy").unlink()
    (written / "tokenizers" / "minilm" / "notes.txt").write_text("hi")
    with pytest.raises(UserError) as info:
        load_artifact(written)
    message = str(info.value)
    assert "item_index.npy: missing (listed in MANIFEST.json)" in message
    assert "tokenizers/minilm/notes.txt: unexpected file, not in MANIFEST.json" in message
    assert info.value.field == "item_index.npy"


def test_pickled_weights_beside_an_artifact_are_refused(written):
    torch.save({"w": torch.zeros(2)}, written / "model.pt")
    with pytest.raises(UserError, match=r"model.pt holds pickled weights, which are refused") as info:
        load_artifact(written)
    assert "safetensors" in str(info.value)


@pytest.mark.parametrize("name", ["model.bin", "weights/extra.pt", "state.pkl"])
def test_pickled_files_cannot_be_written(tmp_path, spec, files, name):
    files[name] = b"not really a pickle"
    with pytest.raises(UserError, match="pickled files are refused"):
        write_artifact(tmp_path, "v1", files, spec=spec)
    assert list(tmp_path.iterdir()) == [tmp_path / "tok-src"]


def test_a_writer_that_drops_a_pickle_is_caught(tmp_path, spec, files):
    files["tokenizers/minilm"] = lambda dest: (dest.mkdir(), torch.save({}, dest / "pytorch_model.bin"))
    with pytest.raises(UserError, match=r"pickled files are refused: \['tokenizers/minilm/pytorch_model.bin'\]"):
        write_artifact(tmp_path / "runs", "v1", files, spec=spec)
    assert os.listdir(tmp_path / "runs") == []


def test_weights_must_be_safetensors(tmp_path, spec, files):
    files["model.safetensors"] = lambda dest: torch.save({"w": torch.zeros(2)}, dest)
    with pytest.raises(UserError, match="model.safetensors is not a readable safetensors file"):
        write_artifact(tmp_path / "runs", "v1", files, spec=spec)


def test_required_files_and_version_agreement(tmp_path, spec, files, make_spec):
    weights = files.pop("model.safetensors")
    with pytest.raises(UserError, match="lacks model.safetensors"):
        write_artifact(tmp_path / "a", "v1", files, spec=spec)
    files["model.safetensors"] = weights
    with pytest.raises(UserError, match="lacks spec.yaml"):
        write_artifact(tmp_path / "b", "v1", files)
    with pytest.raises(UserError, match="spec.yaml has version 'v2' but the artifact is written as 'v1'"):
        write_artifact(tmp_path / "c", "v1", files, spec=make_spec("v2"))
    files["spec.yaml"] = b"version: v1\nencoders: []\n"
    with pytest.raises(UserError, match=r"not a valid FusionRecommender spec:\n  spec.encoders"):
        write_artifact(tmp_path / "d", "v1", files)


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/passwd", "a/../../b", "MANIFEST.json", "a\\b"])
def test_names_cannot_leave_the_version_folder(tmp_path, spec, files, name):
    files[name] = b"x"
    with pytest.raises(UserError, match="is not allowed"):
        write_artifact(tmp_path / "runs", "v1", files, spec=spec)
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize("version", ["V1", "../v1", ".hidden", "", "v1/"])
def test_version_names_are_checked(tmp_path, spec, files, version):
    with pytest.raises(UserError, match="must look like a spec version"):
        write_artifact(tmp_path, version, files, spec=spec)


def test_manifest_from_a_newer_fusionrec_is_refused(written):
    manifest = json.loads((written / "MANIFEST.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (written / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=rf"format_version {FORMAT_VERSION + 1} is not readable"):
        load_artifact(written)


def test_a_manifest_entry_pointing_outside_is_refused(written):
    manifest = json.loads((written / "MANIFEST.json").read_text())
    manifest["files"]["../../etc/hosts"] = {"sha256": "0" * 64, "size": 1}
    (written / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"'../../etc/hosts' is not allowed"):
        load_artifact(written)


def test_symlinks_are_refused(written, tmp_path):
    (tmp_path / "outside.txt").write_text("secret")
    (written / "link.txt").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(UserError, match="link.txt is a symlink"):
        load_artifact(written)


def test_not_an_artifact(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_artifact(tmp_path / "nope")
    with pytest.raises(UserError, match="has no MANIFEST.json"):
        load_artifact(tmp_path)


def test_content_hash_is_canonical_and_sensitive(make_spec):
    spec = make_spec()
    as_dict = spec.model_dump(mode="json", by_alias=True)
    reordered = dict(reversed(list(as_dict.items())))
    assert list(reordered) != list(as_dict)
    assert content_hash(spec, "data-1") == content_hash(reordered, "data-1") == content_hash(as_dict, "data-1")
    assert content_hash(spec, "data-1") != content_hash(spec, "data-2")
    assert content_hash(spec, "data-1") != content_hash(make_spec("v2"), "data-1")
    assert content_hash(spec.training, {"rows": 3}) == content_hash(make_spec("v2").training, {"rows": 3})
