"""How the operator finds its API server: an explicit kubeconfig is used alone, never a fall-through."""

from __future__ import annotations

import logging
from pathlib import Path

import kopf
import pytest
import yaml

from fusionrec.errors import UserError
from fusionrec.operator.config import OperatorConfig
from fusionrec.operator.kube import kubeconfig_connection, resolve_connection


def _kubeconfig(path: Path, server: str, **user: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": server, "certificate-authority": "ca.crt"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": "recs"}}],
    }), encoding="utf-8")
    return path


def test_an_explicit_kubeconfig_wins_over_kubeconfig_and_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    _kubeconfig(home / ".kube" / "config", "https://real-cluster:6443", token="real")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KUBECONFIG", str(home / ".kube" / "config"))
    chosen = _kubeconfig(tmp_path / "e2e.kubeconfig", "https://127.0.0.1:6443", token="test-token")
    info = resolve_connection(OperatorConfig(kubeconfig=str(chosen)), settings=kopf.OperatorSettings(),
                              logger=logging.getLogger())
    assert info.server == "https://127.0.0.1:6443" and info.token == "test-token"
    assert info.ca_path == str(tmp_path / "ca.crt")  # relative to the kubeconfig, as kubectl reads it
    assert info.default_namespace == "recs"


def test_a_missing_explicit_kubeconfig_is_an_error_not_a_fall_through(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "other", "https://other:6443", token="t")))
    with pytest.raises(UserError, match="FUSIONREC_KUBECONFIG"):
        resolve_connection(OperatorConfig(kubeconfig=str(tmp_path / "absent")), settings=kopf.OperatorSettings(),
                           logger=logging.getLogger())


def test_kubeconfig_is_read_at_login_not_at_import(tmp_path, monkeypatch):
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "late", "https://late:6443", token="late")))
    info = resolve_connection(OperatorConfig(), settings=kopf.OperatorSettings(), logger=logging.getLogger())
    assert info.server == "https://late:6443" and info.token == "late"


def test_client_certificates_and_token_files(tmp_path):
    (tmp_path / "token").write_text("from-file\n", encoding="utf-8")
    info = kubeconfig_connection(str(_kubeconfig(tmp_path / "k", "https://x:6443", tokenFile="token")))
    assert info.token == "from-file"
    info = kubeconfig_connection(str(_kubeconfig(tmp_path / "k", "https://x:6443", **{
        "client-certificate-data": "Y2VydA==", "client-key-data": "a2V5"})))
    assert (info.certificate_data, info.private_key_data, info.token) == ("Y2VydA==", "a2V5", None)
