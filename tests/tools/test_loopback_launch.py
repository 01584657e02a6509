"""tools/lib/loopback.sh's `launch`: the pid it records is the server's own by the time it returns.

The servers the tests start (etcd, kube-apiserver, weed) are checked with "does /proc/PID/cmdline name DIR/?".
Between the fork and the exec the child still carries the script's command line, so a check made right after
`cmd &` failed on about 1 in 13 starts here, and CI reported "weed: exited during start-up" for a server that
was starting fine.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

LOOPBACK = Path(__file__).resolve().parents[2] / "tools" / "lib" / "loopback.sh"

SCRIPT = r"""
TAG=test; source "$1"
DIR="$2"; mkdir -p "$DIR/logs" "$DIR/pids"
wrong=0
for i in $(seq 100); do
  launch child sh -c 'sleep 2' "$DIR/child"
  pid="$(cat "$DIR/pids/child.pid")"
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$DIR/" || wrong=$((wrong + 1))
  kill "$pid"
done
echo "$wrong"
"""


def test_launch_returns_after_the_exec(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", "-c", SCRIPT, "launch-test", str(LOOPBACK), str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0", f"{done.stdout.strip()}/100 launches returned before the exec"


def test_launch_records_the_pid_and_logs_under_dir(tmp_path: Path) -> None:
    script = 'TAG=test; source "$1"; DIR="$2"; mkdir -p "$DIR/logs" "$DIR/pids"; ' \
             'launch echoer sh -c "echo hello from \\$0" "$DIR/x"; wait'
    done = subprocess.run(["bash", "-c", script, "launch-test", str(LOOPBACK), str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "pids" / "echoer.pid").read_text().strip().isdigit()
    assert (tmp_path / "logs" / "echoer.log").read_text() == f"hello from {tmp_path}/x\n"
