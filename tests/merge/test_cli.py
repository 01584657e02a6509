"""`fusionrec merge CONFIG --out DIR` with a bare merge spec and with a full manifest."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from click.testing import CliRunner

from fusionrec.cli.merge_cmd import merge
from fusionrec.errors import UserError


def invoke(*args: str):
    return CliRunner().invoke(merge, list(args), catch_exceptions=True)


def test_bare_merge_spec(bert, tmp_path):
    config = tmp_path / "merge.yaml"
    config.write_text(yaml.safe_dump({
        "method": "dare_ties", "base": str(bert.base), "density": 0.4, "lambda": 0.8, "seed": 3,
        "models": [{"source": str(bert.a), "weight": 1.0}, {"source": str(bert.b), "weight": 0.5}],
    }))
    result = invoke(str(config), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert "DARE-TIES" in result.output and "sign conflicts resolved" in result.output
    report = json.loads((tmp_path / "out/merge_report.json").read_text())
    assert report["parameters"] == {"lambda": 0.8, "density": 0.4, "rescale": True, "seed": 3}
    assert [i["weight"] for i in report["inputs"]] == [None, 1.0, 0.5]
    again = invoke(str(config), "--out", str(tmp_path / "again"), "--json")
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert summary["method"] == "DARE-TIES" and summary["out"] == str(tmp_path / "again")
    assert summary["signConflictsResolved"] is not None


def test_manifest_uses_spec_merge_and_encoder_names(bert, tmp_path):
    config = tmp_path / "recs.yaml"
    config.write_text(yaml.safe_dump({
        "apiVersion": "fusionrec.io/v1alpha1", "kind": "FusionRecommender", "metadata": {"name": "recs"},
        "spec": {
            "version": "v1",
            "encoders": [{"name": "minilm", "source": str(bert.base)}, {"name": "ranking", "source": str(bert.a)},
                         {"name": "ctr", "source": str(bert.b)}],
            "merge": {"method": "ties", "base": "minilm", "density": 0.2,
                      "models": [{"source": "ranking"}, {"source": "ctr"}]},
        },
    }))
    result = invoke(str(config), "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out/merge_report.json").read_text())
    assert report["method"] == "ties"
    assert [i["path"] for i in report["inputs"]] == [str(bert.base), str(bert.a), str(bert.b)]


@pytest.mark.parametrize(
    "document,match",
    [
        ({"method": "ties", "base": "x", "models": [{"source": "y"}]}, r"merge\.density: required for method ties"),
        ({"method": "linear", "models": [{"source": "y", "wieght": 2}]}, r"merge\.models\[0\]\.wieght: unknown field"),
        ({"apiVersion": "fusionrec.io/v1alpha1", "kind": "FusionRecommender", "metadata": {"name": "r"},
          "spec": {"version": "v1", "encoders": [{"name": "e", "source": "x"}]}}, r"has no spec\.merge"),
        (["method", "linear"], r"must be a mapping"),
    ],
)
def test_bad_configs_are_user_errors(document, match, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(document))
    result = invoke(str(config), "--out", str(tmp_path / "out"))
    assert isinstance(result.exception, UserError), result.output
    assert re.search(match, str(result.exception)), str(result.exception)


def test_missing_config_is_a_user_error(tmp_path):
    result = invoke(str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "out"))
    assert isinstance(result.exception, UserError) and "does not exist" in str(result.exception)
