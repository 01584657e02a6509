"""Helpers for the chart tests: find helm, render the chart, pick documents by kind (imported by the tests;
the `helm` fixture is in conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "fusion-recommender"
RELEASE = "fr"
RELEASE_NAMESPACE = "fusionrec-system"
FULLNAME = f"{RELEASE}-fusion-recommender"

# The three configurations the issue asks for, as --set arguments.
MONITORING_ON = ("monitoring.serviceMonitor.enabled=true", "monitoring.prometheusRule.enabled=true",
                 "monitoring.dashboard.enabled=true")
ONE_NAMESPACE = ("watchNamespaces={recs}",)
CONFIGS: dict[str, tuple[str, ...]] = {
    "default": (),
    "monitoring": MONITORING_ON,
    "one-namespace": ONE_NAMESPACE + MONITORING_ON,
}


def find_tool(name: str) -> str | None:
    """The venv's copy first (tools/install-helm.sh puts helm there), then PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    return shutil.which(name)


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], check=False, capture_output=True, text=True, timeout=60, cwd=REPO)


def set_args(sets: Iterable[str]) -> list[str]:
    return [arg for value in sets for arg in ("--set", value)]


def render(helm: str, *sets: str, extra: Iterable[str] = ()) -> list[dict[str, Any]]:
    """`helm template` as a list of documents; fails the test with helm's message when it does."""
    result = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
                      *set_args(sets), *extra)
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
    return found[0]
