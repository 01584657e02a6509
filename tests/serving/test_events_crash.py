"""A crash loses no acknowledged event: the events server (the real create_api, bench/events_server.py) is
SIGKILLed while clients stream events, restarted on the same folder, and everything is sent again."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _bench():  # the bench script holds the crash run, so the bench and this test count the same way
    spec = importlib.util.spec_from_file_location("events_ingest", ROOT / "bench" / "events_ingest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sigkill_mid_stream_loses_no_acknowledged_event_and_stores_none_twice(tmp_path: Path) -> None:
    counts = _bench().crash_run(tmp_path, clients=6, batch=10, kill_after=1500)
    print(f"sent {counts['sent']}, stored {counts['stored']}, acknowledged {counts['acknowledged']}")
    assert counts["sent"] >= counts["stored"] >= counts["acknowledged"] >= 1500
    assert counts["acknowledged_but_lost"] == 0 and counts["stored_but_never_sent"] == 0
    assert counts["stored_more_than_once"] == 0
    # Re-sending everything after the restart: what was stored is recognised, the rest is stored once.
    assert counts["resend_duplicates"] == counts["stored"]
    assert counts["resend_stored"] == counts["sent"] - counts["stored"]
    assert counts["after_resend_stored"] == counts["read_events_rows"] == counts["sent"]
    assert counts["after_resend_more_than_once"] == 0
