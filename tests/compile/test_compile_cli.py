"""`fusionrec compile`: success prints the parity lines and what was written; bad input exits 2 untouched."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fusionrec.cli import compile_cmd
from fusionrec.cli.main import cli

from helpers import snapshot


@pytest.fixture(scope="module")
def app():
    if "compile" not in cli.commands:  # until fusionrec/cli/main.py registers it
        cli.add_command(compile_cmd.compile_)
    return cli


def test_compile_writes_and_reports(app, text_artifact, fresh_copy):
    path = fresh_copy(text_artifact)
    result = CliRunner().invoke(app, ["compile", str(path), "--backend", "onnxruntime", "--precision", "fp32",
                                      "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "parity user: max_relative_error" in result.output
    assert "encoder.onnx, item_encoder.onnx, compile.json" in result.output
    assert json.loads((path / "compile.json").read_text())["threads"] == 1


def test_compile_json_prints_the_record(app, text_artifact, fresh_copy):
    path = fresh_copy(text_artifact)
    result = CliRunner().invoke(app, ["compile", str(path), "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record == json.loads((path / "compile.json").read_text())
    assert record["backend"] == "onnxruntime" and "parity" not in result.stdout.split("{", 1)[0]


def test_unknown_precision_exits_2_with_the_choices(app, text_artifact):
    before = snapshot(text_artifact)
    result = CliRunner().invoke(app, ["compile", str(text_artifact), "--precision", "int4"])
    assert result.exit_code == 2
    assert "unknown precision 'int4'" in result.output and "fp32" in result.output
    assert snapshot(text_artifact) == before
