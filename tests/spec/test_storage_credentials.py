"""spec.storage.credentialsSecret outside a cluster: accepted (the manifest is the one a cluster gets), and named
once on stderr by the commands that touch storage, since a workstation reads its environment instead."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fusionrec.cli.cluster_only import cluster_only_notes
from fusionrec.cli.main import cli
from fusionrec.errors import UserError
from fusionrec.spec import manifest_from_dict

DOC = {
    "apiVersion": "fusionrec.io/v1alpha1",
    "kind": "FusionRecommender",
    "metadata": {"name": "shop-recs"},
    "spec": {"version": "v1", "encoders": [{"name": "minilm", "source": "./models/minilm"}],
             "storage": {"uri": "s3://models/recs", "credentialsSecret": "s3-creds"}},
}


def test_the_secret_name_is_accepted_and_noted_once():
    spec = manifest_from_dict(DOC).spec
    assert spec.storage.credentials_secret == "s3-creds"
    (note,) = cluster_only_notes(spec)
    assert "spec.storage.credentialsSecret 's3-creds'" in note and "AWS_ACCESS_KEY_ID" in note
    assert cluster_only_notes(manifest_from_dict({**DOC, "spec": {**DOC["spec"], "storage": {}}}).spec) == []


@pytest.mark.parametrize("name", ["S3-Creds", "s3_creds", "creds.", ""])
def test_a_name_kubernetes_would_refuse_is_refused_here_too(name):
    with pytest.raises(UserError, match="spec.storage.credentialsSecret"):
        manifest_from_dict({**DOC, "spec": {**DOC["spec"], "storage": {"credentialsSecret": name}}})


def test_fusionrec_train_says_where_credentials_come_from(tmp_path: Path, monkeypatch):
    """The note comes before any work (here a stand-in training that refuses at once)."""
    def refuse(*args, **kwargs):
        raise UserError("stopped by the test", field="spec")

    stub = types.ModuleType("fusionrec.train.distributed")
    stub.train_distributed, stub.summary_table = refuse, str  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fusionrec.train.distributed", stub)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump(DOC))
    result = CliRunner().invoke(cli, ["train", str(manifest)])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("spec.storage.credentialsSecret 's3-creds' is a cluster Secret") == 1
    assert "stopped by the test" in result.stderr
