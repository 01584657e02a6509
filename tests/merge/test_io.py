"""Reading and writing checkpoints: refusals name the tensor and both shapes; writes are atomic."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fusionrec.errors import UserError
from fusionrec.model.merge import io, run_merge
from fusionrec.spec import MergeSpec


def linear(*folders: Path) -> MergeSpec:
    return MergeSpec.model_validate(dict(method="linear", models=[{"source": str(f)} for f in folders]))


def test_mismatched_shapes_name_the_tensor_and_both_shapes(bert, bert_wider, tmp_path):
    with pytest.raises(UserError) as caught:
        run_merge(MergeSpec.model_validate(dict(method="ties", base=str(bert.base), density=0.5,
                            models=[{"source": str(bert.a)}, {"source": str(bert_wider)}])), tmp_path / "out")
    message = str(caught.value)
    # Tensors are checked in checkpoint order; the first that differs is the first MLP's bias.
    assert "tensor 'encoder.layer.0.intermediate.dense.bias' has shape [48] in models[1]" in message
    assert f"but [64] in base '{bert.base}'" in message
    assert list(tmp_path.iterdir()) == []


def test_missing_tensor_is_named(bert, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(bert.a, partial)
    tensors = load_file(partial / "model.safetensors")
    del tensors["pooler.dense.bias"]
    save_file(tensors, partial / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"'pooler\.dense\.bias' is in models\[0\] .* but missing from models\[1\]"):
        run_merge(linear(bert.a, partial), tmp_path / "out")
    with pytest.raises(UserError, match=r"'pooler\.dense\.bias' is in models\[1\] .* but missing from models\[0\]"):
        run_merge(linear(partial, bert.a), tmp_path / "out")


def test_other_architectures_are_refused(bert, llama, tmp_path):
    with pytest.raises(UserError, match=r"cannot merge a 'llama' model .* into a 'bert' model"):
        run_merge(linear(bert.a, llama.a), tmp_path / "out")


def test_pytorch_bin_weights_are_read_with_weights_only(bert, tmp_path):
    as_bin = tmp_path / "as_bin"  # transformers 5 no longer writes .bin files; older checkpoints have them
    shutil.copytree(bert.b, as_bin)
    (as_bin / "model.safetensors").unlink()
    torch.save(load_file(bert.b / "model.safetensors"), as_bin / "pytorch_model.bin")

    run_merge(linear(bert.a, as_bin), tmp_path / "from_bin")
    run_merge(linear(bert.a, bert.b), tmp_path / "from_safetensors")
    from_bin = load_file(tmp_path / "from_bin/model.safetensors")
    from_st = load_file(tmp_path / "from_safetensors/model.safetensors")
    assert all(torch.equal(from_bin[k], from_st[k]) for k in from_st)


def test_pickles_that_need_code_are_refused(bert, tmp_path):
    evil = tmp_path / "evil"
    evil.mkdir()
    torch.save({"w": torch.ones(2), "payload": Path("/etc/passwd")}, evil / "pytorch_model.bin")
    with pytest.raises(UserError, match=r"cannot be loaded as plain weights.*refused"):
        io.CheckpointReader(evil)


def test_folder_without_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"no weights in .*found config\.json"):
        io.CheckpointReader(tmp_path)


def test_sharded_safetensors_are_read_through_the_index(bert, tmp_path):
    sharded = tmp_path / "sharded"
    shutil.copytree(bert.a, sharded)
    tensors = load_file(sharded / "model.safetensors")
    (sharded / "model.safetensors").unlink()
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, sharded / shard, metadata={"format": "pt"})
    io.write_json(sharded / "model.safetensors.index.json",
                  {"metadata": {}, "weight_map": {k: shard for shard, keys in halves.items() for k in keys}})
    with io.CheckpointReader(sharded) as reader:
        assert sorted(reader.names()) == names
        assert torch.equal(reader.tensor(names[3]), tensors[names[3]])
    run_merge(linear(sharded, bert.a), tmp_path / "out")
    assert not any(p.name.endswith("index.json") for p in (tmp_path / "out").iterdir())


def test_sources_resolve_encoder_names_then_model_sources(bert, tmp_path):
    assert io.resolve_source(f"file://{bert.a}") == bert.a
    assert io.resolve_source("ranking", {"ranking": str(bert.b)}) == bert.b
    with pytest.raises(UserError, match=r"'ftp://host/model': models are not loaded from ftp:// sources"):
        io.resolve_source("ftp://host/model")
    with pytest.raises(UserError, match=r"nope does not exist"):
        io.resolve_source(str(tmp_path / "nope"))


def test_a_non_empty_output_folder_needs_overwrite(bert, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match=r"exists and is not empty.*\n  fix: .*--overwrite"):
        run_merge(linear(bert.a, bert.b), out)
    assert (out / "keep.txt").read_text() == "mine"
    run_merge(linear(bert.a, bert.b), out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_input_folder_is_never_the_output(bert, tmp_path):
    copy = tmp_path / "a"
    shutil.copytree(bert.a, copy)
    before = io.sha256_file(copy / "model.safetensors")
    with pytest.raises(UserError, match=r"would replace the input model"):
        run_merge(linear(copy, bert.b), copy, overwrite=True)
    assert io.sha256_file(copy / "model.safetensors") == before


def test_a_failed_write_leaves_nothing_behind(bert, tmp_path, monkeypatch):
    def crash(tensors, path):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_tensors", crash)
    with pytest.raises(OSError, match="disk full"):
        run_merge(linear(bert.a, bert.b), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_side_files_skip_weights_and_weight_folders(bert, tmp_path):
    reference = tmp_path / "ref"
    shutil.copytree(bert.a, reference)
    (reference / "1_Pooling").mkdir()
    (reference / "1_Pooling/config.json").write_text("{}")
    (reference / "onnx").mkdir()
    (reference / "onnx/model.onnx").write_bytes(b"onnx")
    (reference / "README.md").write_text("the base model's card")
    dest = tmp_path / "dest"
    dest.mkdir()
    copied = io.copy_side_files(reference, dest)
    assert "config.json" in copied and "1_Pooling" in copied and "tokenizer_config.json" in copied
    assert not {"onnx", "README.md", "model.safetensors"} & set(copied)
