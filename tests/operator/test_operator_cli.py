"""The operator's entry points, run as a user would (from outside the repository)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "ray", "transformers", "pandas", "onnxruntime")


def run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_the_operator_imports_nothing_heavy(tmp_path):
    """The operator image carries pydantic, kopf, httpx and prometheus-client; no torch, no Ray."""
    code = ("import sys, fusionrec.operator.handlers, fusionrec.operator.crd; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))")
    result = run(tmp_path, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_crd_module_prints_the_committed_crd(tmp_path):
    result = run(tmp_path, "-m", "fusionrec.operator.crd")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (REPO / "charts/fusion-recommender/crds/fusionrecommenders.yaml").read_text()


def test_operator_help_and_bad_settings(tmp_path):
    result = run(tmp_path, "-m", "fusionrec.operator", "--help")
    assert result.returncode == 0 and "--liveness" in result.stdout and "--namespace" in result.stdout
    result = run(tmp_path, "-m", "fusionrec.operator", env={"FUSIONREC_SYNC_INTERVAL": "soon"})
    assert result.returncode == 2
    assert "FUSIONREC_SYNC_INTERVAL='soon' is not a number" in result.stderr


def test_settings_from_the_environment():
    import pytest

    from fusionrec.errors import UserError
    from fusionrec.operator.config import OperatorConfig

    config = OperatorConfig.from_env({"FUSIONREC_RAY_IMAGE": "r/ray:1", "FUSIONREC_PROMETHEUS_URL": "http://p:9090",
                                      "FUSIONREC_SYNC_INTERVAL": "2.5", "FUSIONREC_METRICS_PORT": "0"})
    assert (config.ray_image, config.prometheus_url, config.sync_interval, config.metrics_port) == \
        ("r/ray:1", "http://p:9090", 2.5, 0)
    from fusionrec import __version__

    assert OperatorConfig.from_env({}).ray_image == f"fusionrec/ray-runtime:{__version__}"
    with pytest.raises(UserError, match="FUSIONREC_PROMETHEUS_SELECTOR.*bad placeholder"):
        OperatorConfig.from_env({"FUSIONREC_PROMETHEUS_SELECTOR": 'job="{job}"'})
    with pytest.raises(UserError, match="FUSIONREC_IMAGE_PULL_POLICY"):
        OperatorConfig.from_env({"FUSIONREC_IMAGE_PULL_POLICY": "Sometimes"})
    with pytest.raises(UserError, match="must be >= 0.1"):
        OperatorConfig.from_env({"FUSIONREC_SYNC_INTERVAL": "0"})
