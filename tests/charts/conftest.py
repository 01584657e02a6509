"""The `helm` fixture: the chart tests skip, saying why, where helm is not installed."""

from __future__ import annotations

import pytest

from _chart_helpers import find_tool


@pytest.fixture(scope="session")
def helm() -> str:
    path = find_tool("helm")
    if path is None:
        pytest.skip("helm is not installed: run tools/install-helm.sh")
    return path
