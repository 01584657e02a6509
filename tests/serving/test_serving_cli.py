"""`fusionrec serve` / `fusionrec recommend` without starting Ray: finding the artifact, the args it deploys,
what it prints, and the client's errors. (The client against a live server is in test_serving_ray.py.)"""

from __future__ import annotations

import re
import shutil
import stat
import sys

import pytest
import yaml
from click.testing import CliRunner

from fusionrec.cli.main import cli
from fusionrec.cli.serve_cmd import banner, local_args, recommend, resolve_artifact
from fusionrec.errors import UserError
from fusionrec.serving.auth import TokenAuth
from fusionrec.serving.config import parse_args
from fusionrec.serving.errors import ApiError
from fusionrec.serving.local_auth import ensure_token, local_auth, read_token, token_path
from fusionrec.spec import AuthSpec


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
    assert parsed.serving.auth.token_file == str(token_path())  # auth on: the generated token
    secured = parse_args(local_args(artifacts["v1"], token_env="MY_TOKENS"))
    assert secured.serving.auth.token_env == "MY_TOKENS" and secured.serving.auth.token_file is None


# --- auth on by default (issue 17, item 6) ---------------------------------------------------------------------


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    folder = tmp_path / "config"
    monkeypatch.setenv("FUSIONREC_CONFIG_DIR", str(folder))
    return folder


def test_local_serving_generates_a_private_token_and_requires_it(artifacts, config_dir, capsys):
    auth = parse_args(local_args(artifacts["v1"])).serving.auth
    path = config_dir / "serving-token"
    assert auth.token_file == str(path) and not auth.disabled
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(config_dir.stat().st_mode) == 0o700
    token = read_token()
    assert token and len(token) >= 40
    err = capsys.readouterr().err
    assert str(path) in err and token not in err  # where it is, never what it is
    checker = TokenAuth.from_spec(auth)
    with pytest.raises(ApiError) as refused:
        checker.check(None)
    assert refused.value.status == 401
    checker.check(f"Bearer {token}")
    assert parse_args(local_args(artifacts["v1"])).serving.auth.token_file == str(path) and read_token() == token


def test_a_token_file_other_users_can_read_is_refused(artifacts, config_dir):
    config_dir.mkdir()
    (config_dir / "serving-token").write_text("abc\n")
    (config_dir / "serving-token").chmod(0o644)
    with pytest.raises(UserError, match="can be read by other users") as exc:
        local_args(artifacts["v1"])
    assert "chmod 600" in exc.value.fix


def test_no_auth_turns_auth_off_with_a_warning_on_loopback_only(artifacts, config_dir, capsys):
    auth = parse_args(local_args(artifacts["v1"], no_auth=True)).serving.auth
    assert auth.disabled and not (auth.token_file or auth.token_env)
    assert "warning: auth is off (--no-auth)" in capsys.readouterr().err
    assert not (config_dir / "serving-token").exists()
    for host in ("0.0.0.0", "192.168.1.5", "::"):
        with pytest.raises(UserError, match=f"refusing to serve on {re.escape(host)} without auth") as exc:
            local_args(artifacts["v1"], no_auth=True, host=host)
        assert exc.value.field == "--no-auth" and "--host 127.0.0.1" in exc.value.fix
    with pytest.raises(UserError, match="--no-auth cannot be combined"):
        local_args(artifacts["v1"], no_auth=True, token_env="MY_TOKENS")
    # A generated token on a non-loopback host is fine: auth is on.
    assert parse_args(local_args(artifacts["v1"], host="0.0.0.0")).serving.auth.token_file


def test_serve_without_auth_off_loopback_exits_2_before_starting_ray(artifacts, config_dir):
    result = CliRunner().invoke(cli, ["serve", str(artifacts["v1"]), "--host", "0.0.0.0", "--no-auth"])
    assert result.exit_code == 2, result.output
    assert "--no-auth" in result.output and "--host 127.0.0.1" in result.output


def test_spec_auth_disabled_is_honoured_and_checked_like_the_flag(config_dir, capsys):
    assert local_auth(AuthSpec(disabled=True), host="127.0.0.1", say=lambda line: print(line, file=sys.stderr)).disabled
    assert "serving.auth.disabled: true" in capsys.readouterr().err
    with pytest.raises(UserError) as exc:
        local_auth(AuthSpec(disabled=True), host="10.0.0.1")
    assert exc.value.field == "serving.auth.disabled"


def test_a_served_app_refuses_to_start_without_a_token_source_unless_disabled():
    with pytest.raises(UserError, match="names no token source") as exc:
        TokenAuth.from_spec(AuthSpec())
    assert "disabled: true" in exc.value.fix
    assert not TokenAuth.from_spec(AuthSpec(disabled=True)).enabled


def test_recommend_sends_the_generated_token_to_loopback_only(config_dir, monkeypatch):
    import httpx

    ensure_token()
    sent = []

    def post(url, json, headers, timeout):
        sent.append((url, headers))
        return httpx.Response(200, json={"model_version": "v1", "items": []})

    monkeypatch.setattr(httpx, "post", post)
    monkeypatch.delenv("FUSIONREC_TOKEN", raising=False)
    for url in ("http://127.0.0.1:8000", "http://localhost:9", "http://recs.example.com"):
        result = CliRunner().invoke(recommend, ["--user", "u1", "--url", url])
        assert result.exit_code == 0, result.output
    assert [h.get("Authorization") for _, h in sent] == [f"Bearer {read_token()}"] * 2 + [None]
    CliRunner().invoke(recommend, ["--user", "u1", "--token", "mine"])
    assert sent[-1][1] == {"Authorization": "Bearer mine"}


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
