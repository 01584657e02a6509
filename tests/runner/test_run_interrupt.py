"""Ctrl-C in `fusionrec run` once training has started (issue 18, item 5): training stops, Ray is shut down,
nothing is published, one line says so, and the exit code is 130. Before the fix, Ray Train's own SIGINT handler
(left installed after the run's Ray was stopped) started a fresh Ray and exited 1 with "Can't find actor".

A real subprocess in its own session, interrupted the way a terminal does it: SIGINT to the whole process group.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runkit import manifest_document, write_manifest

pytestmark = pytest.mark.ray

STARTED = "epoch 1/"  # a training worker finished its first epoch: training is under way


def _interruptible() -> None:
    """In the child: SIGINT back to its default. A test run started in the background by a shell without job
    control (`(make test &)`, CI scripts) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt:
    the run would train on as if Ctrl-C had not been pressed (a terminal's foreground job never has it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _processes_naming(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (Ray's processes name their session folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command:
            found.append(f"{entry.name}: {command[:200]}")
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ctrl_c_during_training_stops_ray_publishes_nothing_and_exits_130(tiny_models, shop, tmp_path):
    document = manifest_document(tiny_models, shop, tmp_path / "runs")
    document["spec"]["training"].update(epochs=500, earlyStopping={"patience": 500})
    manifest = write_manifest(tmp_path, document)
    log_path = tmp_path / "run.log"
    env = {**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1",
           "FUSIONREC_EMBEDDING_CACHE": str(tmp_path / "embeddings")}
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "fusionrec", "run", str(manifest), "--no-serve"],
                                   stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                   start_new_session=True, preexec_fn=_interruptible)
    try:
        deadline = time.monotonic() + 300
        while STARTED not in log_path.read_text() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert process.poll() is None, f"the run ended before training started:\n{log_path.read_text()[-3000:]}"
        assert STARTED in log_path.read_text(), "training did not start within 300 s"
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    output = log_path.read_text()

    assert code == 130, output[-3000:]
    assert "interrupted: nothing published for version v1; run again to train it" in output
    assert "Can't find actor" not in output and "Traceback" not in output
    assert not (tmp_path / "runs" / "v1").exists(), "a half-trained version was published"
    session = re.search(r"session files in (\S+)", output)
    assert session, output[-3000:]
    deadline = time.monotonic() + 30  # Ray's processes get a moment to exit after ray.shutdown()
    while (_processes_naming(session.group(1)) or _group_alive(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _processes_naming(session.group(1)), "Ray processes of the run are still alive"
    assert not _group_alive(process.pid), "processes of the run are still alive"
