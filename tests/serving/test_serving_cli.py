"""`fusionrec serve` / `fusionrec recommend` without starting Ray: finding the artifact, the args it deploys,
what it prints, and the client's errors. (The client against a live server is in test_serving_ray.py.)"""

from __future__ import annotations

import shutil

import pytest
import yaml
from click.testing import CliRunner

from fusionrec.cli.serve_cmd import banner, local_args, recommend, resolve_artifact
from fusionrec.errors import UserError
from fusionrec.serving.config import parse_args


def test_an_artifact_folder_is_served_as_given(artifacts):
    assert resolve_artifact(artifacts["v1"]) == artifacts["v1"]


def test_a_manifest_is_served_from_its_storage_uri(artifacts, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(artifacts["v2"], runs / "shop-recs" / "v2")  # the operator's <uri>/<name>/<version> layout
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump({"apiVersion": "fusionrec.io/v1alpha1", "kind": "FusionRecommender",
                                        "metadata": {"name": "shop-recs"},
                                        "spec": {"version": "v2", "encoders": [{"name": "a", "source": "/x"}],
                                                 "storage": {"uri": str(runs)}}}))
    assert resolve_artifact(manifest) == runs / "shop-recs" / "v2"
    manifest.write_text(manifest.read_text().replace("version: v2", "version: v9"))
    with pytest.raises(UserError, match="no artifact for version 'v9'") as exc:
        resolve_artifact(manifest)
    assert "fusionrec train" in exc.value.fix


def test_a_folder_that_is_not_an_artifact_is_refused(tmp_path):
    with pytest.raises(UserError, match="not an artifact folder"):
        resolve_artifact(tmp_path)


def test_local_args_are_valid_app_args(artifacts):
    args = local_args(artifacts["v1"], replicas=2)
    parsed = parse_args(args)
    assert parsed.weights == {"v1": 100} and parsed.versions[0].artifact == str(artifacts["v1"].resolve())
    assert parsed.serving.min_replicas == parsed.serving.max_replicas == 2
    assert parsed.serving.auth.token_file is None and parsed.serving.auth.token_env is None  # auth off locally
    secured = parse_args(local_args(artifacts["v1"], token_env="MY_TOKENS"))
    assert secured.serving.auth.token_env == "MY_TOKENS"


def test_replicas_above_the_artifacts_max_replicas_fix_the_count(artifacts, capsys):
    """Issue 17 item 5: `fusionrec serve --replicas N` with N > serving.maxReplicas crashed (a traceback)."""
    from fusionrec.artifact import load_artifact

    most = load_artifact(artifacts["v1"], verify=False).spec.serving.max_replicas
    parsed = parse_args(local_args(artifacts["v1"], replicas=most + 2))
    assert parsed.serving.min_replicas == parsed.serving.max_replicas == most + 2
    assert f"--replicas {most + 2} is above the artifact's serving.maxReplicas ({most})" in capsys.readouterr().err
    assert parse_args(local_args(artifacts["v1"], replicas=1)).serving.max_replicas == 1  # below: fixed too


def test_banner_shows_a_request_that_works(artifacts):
    text = banner("http://127.0.0.1:8000", artifacts["v1"], auth=True)
    assert "curl -s http://127.0.0.1:8000/v1/recommend" in text and "Bearer" in text
    assert '"user_id": "u' in text and "fusionrec recommend --user u" in text


def test_recommend_needs_a_user_or_a_history():
    result = CliRunner().invoke(recommend, [])
    assert isinstance(result.exception, UserError) and result.exception.field == "--user"


def test_recommend_explains_an_unreachable_server():
    result = CliRunner().invoke(recommend, ["--user", "1", "--url", "http://127.0.0.1:9"])
    assert isinstance(result.exception, UserError) and "fusionrec serve" in result.exception.fix
