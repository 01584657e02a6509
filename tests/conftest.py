"""Test-wide settings: no hub, no network, small thread pools (2-core machines run this suite)."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Local serving keeps its generated bearer token under the user's config folder: never the real one in tests.
os.environ["FUSIONREC_CONFIG_DIR"] = tempfile.mkdtemp(prefix="fusionrec-config-")
atexit.register(shutil.rmtree, os.environ["FUSIONREC_CONFIG_DIR"], ignore_errors=True)


import pytest  # noqa: E402  (the environment above must be set before anything imports transformers)

# Two tiers: `make test-fast` runs `-m "not slow"` (under 5 minutes on a quiet 2-core machine), `make test` runs
# both. Slow is whatever trains a real model or to a quality bar (`integration`), starts Ray (`ray`) or needs the
# control plane (`e2e`) or the loopback S3 server (`storage`), plus unit tests marked `slow` by hand for taking more
# than a few seconds. Those are budgeted in epochs; their timeout only catches a hang, so it is generous where a
# loaded machine is slow.
SLOW_TIER_MARKERS = ("integration", "ray", "e2e", "storage")
SLOW_TIER_HANG_TIMEOUT_S = 2400


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(name) for name in SLOW_TIER_MARKERS):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIER_HANG_TIMEOUT_S))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory):
    """{"bert" | "mpnet" | "llama": HF folder} of tiny seeded random models, built once per test session;
    treat the folders as read-only."""
    from tiny_models import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))
