"""The operator as a subprocess (`python -m fusionrec.operator`), for the tests that run it whole: kmock's
emulator and the real control plane. It can be SIGKILLed, as when a node dies, and started again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path


class OperatorProcess:
    """`python -m fusionrec.operator *args` with `env` on top of this process's environment, logging to `log`.

    Its working folder is the log's, outside the repository: the repository root holds a folder named
    `operator`, which must not shadow the standard library's.
    """

    def __init__(self, log: Path, args: Sequence[str], env: Mapping[str, str]) -> None:
        self.log = log
        self.args = list(args)
        self.env = {**os.environ, "PYTHONSAFEPATH": "1", "PYTHONUNBUFFERED": "1", **env}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "fusionrec.operator", *self.args], env=self.env,
                                            stdout=out, stderr=subprocess.STDOUT, cwd=self.log.parent)

    def kill(self) -> None:
        """SIGKILL: no clean-up handler runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"
