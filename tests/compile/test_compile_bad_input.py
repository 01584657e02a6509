"""Bad input to compile and load: each gives a clear UserError naming the field or file, and the artifact's
existing files stay exactly as they were."""

from __future__ import annotations

import json
import logging

import pytest

from fusionrec.artifact import add_files
from fusionrec.compile import compile_artifact, load_compiled
from fusionrec.compile.tensorrt_backend import EngineMismatch, check_engine_compatible
from fusionrec.errors import UserError

from helpers import siblings, snapshot

SIDECAR = {"tensorrt_version": "10.9.0", "gpu_name": "NVIDIA H200", "precision": "fp16"}


@pytest.mark.parametrize(("backend", "precision", "message"), [
    ("onnxruntime", "fp8", "unknown precision 'fp8'"),
    ("onnxruntime", "bf16", "backend onnxruntime does not compile bf16"),
    ("torch", "int8", "backend torch does not compile int8"),
    ("openvino", "fp32", "unknown backend 'openvino'"),
])
def test_bad_choices_are_refused_before_anything_runs(text_artifact, backend, precision, message):
    before = snapshot(text_artifact)
    with pytest.raises(UserError, match=message) as caught:
        compile_artifact(text_artifact, backend=backend, precision=precision)
    assert caught.value.field in ("compile.precision", "compile.backend")
    assert snapshot(text_artifact) == before


@pytest.fixture()
def compiled(text_artifact, fresh_copy):
    path = fresh_copy(text_artifact)
    compile_artifact(path, threads=1, report=lambda line: None)
    return path


def test_a_corrupt_onnx_file_is_refused_by_name(compiled):
    add_files(compiled, {"encoder.onnx": b"\x08\x07garbage, not a protobuf"}, replace=True)
    before, around = snapshot(compiled), siblings(compiled)
    with pytest.raises(UserError, match="encoder.onnx") as caught:
        load_compiled(compiled, threads=1)
    assert caught.value.field == "encoder.onnx"
    assert snapshot(compiled) == before and siblings(compiled) == around


def test_a_tampered_onnx_file_fails_artifact_verification(compiled):
    with (compiled / "encoder.onnx").open("r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff\xff\xff\xff")
    with pytest.raises(UserError, match="encoder.onnx: sha256 does not match"):
        load_compiled(compiled)


def test_an_uncompiled_artifact_says_how_to_compile_it(text_artifact):
    with pytest.raises(UserError, match="not compiled"):
        load_compiled(text_artifact)


def test_engine_sidecar_check_refuses_another_gpu_or_version():
    check_engine_compatible(SIDECAR, "10.9.0", "NVIDIA H200")  # the machine it was built on
    with pytest.raises(EngineMismatch, match="built for GPU 'NVIDIA H200', this machine has 'NVIDIA L4'"):
        check_engine_compatible(SIDECAR, "10.9.0", "NVIDIA L4")
    with pytest.raises(EngineMismatch, match="TensorRT 10.9.0, this machine has TensorRT 10.13.2"):
        check_engine_compatible(SIDECAR, "10.13.2", "NVIDIA H200")
    with pytest.raises(EngineMismatch, match="no 'gpu_name'"):
        check_engine_compatible({"tensorrt_version": "10.9.0"}, "10.9.0", "NVIDIA H200")


def _fake_tensorrt_compile(path):
    """Turn an ORT-compiled artifact into what a TensorRT compile on another machine would have written."""
    record = json.loads((path / "compile.json").read_text())
    record.update(backend="tensorrt", precision="fp16")
    for kind, plan in (("user", "encoder.plan"), ("item", "item_encoder.plan")):
        record["graphs"][kind]["plan"] = plan
    add_files(path, {"compile.json": json.dumps(record).encode(), "encoder.plan": b"not an engine",
                     "encoder.plan.json": json.dumps({**SIDECAR, "gpu_name": "NVIDIA A10G"}).encode()},
              replace=True)


def test_an_engine_for_another_machine_falls_back_to_onnx_with_a_warning(compiled, caplog):
    _fake_tensorrt_compile(compiled)
    before = snapshot(compiled)
    with caplog.at_level(logging.WARNING, logger="fusionrec.compile.runtime"):
        runtime = load_compiled(compiled, threads=1)
    assert runtime.backend == "onnxruntime" and runtime.precision == "fp32"
    assert "falling back to ONNX Runtime" in caplog.text
    assert runtime.run(runtime.inputs.tokens(["star war", "cat"])).shape == (2, 16)
    with pytest.raises(UserError, match="tensorrt|GPU|TensorRT"):
        load_compiled(compiled, strict=True)
    assert snapshot(compiled) == before
