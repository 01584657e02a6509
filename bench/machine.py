"""What a bench result records about the machine it ran on, so results from different machines are not compared."""

from __future__ import annotations

from pathlib import Path


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo ("unknown CPU" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"
