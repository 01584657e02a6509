"""A crash at any point of a write leaves either the old version or the new one, never a mixture."""

from __future__ import annotations

import json
import os

import pytest

import fusionrec.artifact.writing as artifact_module
from fusionrec.artifact import add_files, list_versions, load_artifact, write_artifact
from fusionrec.errors import UserError


def _snapshot(path):
    """Every file's bytes, to prove an artifact was left exactly as it was."""
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _boom(dest):
    (dest.parent / "half-written").write_bytes(b"partial")
    raise RuntimeError("disk full")


def test_a_writer_that_raises_leaves_nothing(tmp_path, spec, files):
    root = tmp_path / "runs"
    files["item_index.npy"] = _boom
    with pytest.raises(RuntimeError, match="disk full"):
        write_artifact(root, "v1", files, spec=spec)
    assert os.listdir(root) == []
    assert list_versions(root) == []


@pytest.mark.parametrize("step", ["_write_manifest", "_fsync_tree"])
def test_a_crash_late_in_the_write_leaves_nothing(tmp_path, spec, files, monkeypatch, step):
    def crash(*args, **kwargs):
        raise OSError("killed")

    monkeypatch.setattr(artifact_module, step, crash)
    with pytest.raises(OSError, match="killed"):
        write_artifact(tmp_path / "runs", "v1", files, spec=spec)
    assert os.listdir(tmp_path / "runs") == []


def test_a_hard_kill_leaves_only_a_hidden_temp_folder(tmp_path, spec, files, monkeypatch):
    """No cleanup runs after kill -9: the staging folder stays, but it is never taken for a version."""
    files["item_index.npy"] = _boom
    monkeypatch.setattr(artifact_module.shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(RuntimeError):
        write_artifact(tmp_path / "runs", "v1", files, spec=spec)
    leftovers = os.listdir(tmp_path / "runs")
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-v1-")
    assert list_versions(tmp_path / "runs") == []
    with pytest.raises(UserError, match="does not exist"):
        load_artifact(tmp_path / "runs" / "v1")


def test_an_existing_version_is_not_overwritten_by_default(tmp_path, spec, files):
    path = write_artifact(tmp_path / "runs", "v1", files, spec=spec)
    before = _snapshot(path)
    with pytest.raises(UserError, match="version 'v1' already exists") as info:
        write_artifact(tmp_path / "runs", "v1", files, spec=spec, metrics={"ndcg@10": 0.3})
    assert "overwrite=True" in str(info.value)
    assert _snapshot(path) == before


def test_overwrite_replaces_the_version_whole(tmp_path, spec, files):
    root = tmp_path / "runs"
    write_artifact(root, "v1", {**files, "notes.txt": b"old run"}, spec=spec, metrics={"ndcg@10": 0.1})
    path = write_artifact(root, "v1", files, spec=spec, metrics={"ndcg@10": 0.3}, overwrite=True)
    artifact = load_artifact(path)  # the old notes.txt would fail verification as an unexpected file
    assert artifact.metrics == {"ndcg@10": 0.3} and "notes.txt" not in artifact.files
    assert sorted(os.listdir(root)) == ["v1"]


def test_a_failed_overwrite_keeps_the_old_version(tmp_path, spec, files, monkeypatch):
    root = tmp_path / "runs"
    path = write_artifact(root, "v1", files, spec=spec, metrics={"ndcg@10": 0.1})
    before = _snapshot(path)
    real_rename = os.rename

    def rename(src, dst):  # setting the old version aside works; moving the new one in fails
        if ".tmp-" in str(src):
            raise OSError("killed between the renames")
        real_rename(src, dst)

    monkeypatch.setattr(artifact_module.os, "rename", rename)
    with pytest.raises(OSError, match="between the renames"):
        write_artifact(root, "v1", files, spec=spec, metrics={"ndcg@10": 0.3}, overwrite=True)
    monkeypatch.undo()
    assert _snapshot(path) == before
    assert load_artifact(path).metrics == {"ndcg@10": 0.1}
    assert sorted(os.listdir(root)) == ["v1"]


def test_add_files_extends_the_manifest_and_keeps_the_rest(tmp_path, spec, files):
    path = write_artifact(tmp_path / "runs", "v1", files, spec=spec)
    before = _snapshot(path)
    created = json.loads((path / "MANIFEST.json").read_text())["created"]
    add_files(path, {"encoder.onnx": b"onnx-bytes", "encoder.plan": lambda dest: dest.write_bytes(b"plan")})
    artifact = load_artifact(path)
    assert artifact.onnx_path.read_bytes() == b"onnx-bytes" and artifact.plan_path.read_bytes() == b"plan"
    after = _snapshot(path)
    assert {k: v for k, v in after.items() if k in before and k != "MANIFEST.json"} == {
        k: v for k, v in before.items() if k != "MANIFEST.json"}
    assert artifact.manifest["created"] == created and "updated" in artifact.manifest
    assert sorted(os.listdir(path.parent)) == ["v1"]


def test_add_files_refuses_to_replace_unless_asked(tmp_path, spec, files):
    path = write_artifact(tmp_path / "runs", "v1", files, spec=spec)
    with pytest.raises(UserError, match=r"already has \['tokenizers/mpnet/vocab.txt'\]"):
        add_files(path, {"tokenizers/mpnet": lambda d: (d.mkdir(), (d / "spm.model").write_bytes(b"m"))})
    add_files(path, {"tokenizers/mpnet": lambda d: (d.mkdir(), (d / "spm.model").write_bytes(b"m"))},
              replace=True)
    names = load_artifact(path).files
    assert "tokenizers/mpnet/spm.model" in names and "tokenizers/mpnet/vocab.txt" not in names


def test_a_failed_add_leaves_the_artifact_untouched(tmp_path, spec, files, monkeypatch):
    path = write_artifact(tmp_path / "runs", "v1", files, spec=spec)
    before = _snapshot(path)
    with pytest.raises(RuntimeError, match="disk full"):
        add_files(path, {"encoder.onnx": b"onnx", "encoder.plan": _boom})
    assert _snapshot(path) == before
    monkeypatch.setattr(artifact_module, "_write_manifest", lambda *a: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError, match="killed"):
        add_files(path, {"encoder.onnx": b"onnx"})
    assert _snapshot(path) == before
    assert sorted(os.listdir(path.parent)) == ["v1"]
    monkeypatch.undo()
    load_artifact(path)


def test_add_files_refuses_a_tampered_artifact(tmp_path, spec, files):
    path = write_artifact(tmp_path / "runs", "v1", files, spec=spec)
    (path / "items.parquet").write_bytes(b"changed")
    with pytest.raises(UserError, match="items.parquet"):
        add_files(path, {"encoder.onnx": b"onnx"})
    assert not (path / "encoder.onnx").exists()
