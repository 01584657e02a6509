"""Test-wide settings: no hub, no network, small thread pools (2-core machines run this suite)."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Local serving keeps its generated bearer token under the user's config folder: never the real one in tests.
os.environ["FUSIONREC_CONFIG_DIR"] = tempfile.mkdtemp(prefix="fusionrec-config-")


import pytest  # noqa: E402  (the environment above must be set before anything imports transformers)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory):
    """{"bert" | "mpnet" | "llama": HF folder} of tiny seeded random models, built once per test session;
    treat the folders as read-only."""
    from tiny_models import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))
