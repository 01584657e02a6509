"""tools/lib/loopback.sh's `launch` and `pid_is_ours`: a server that is starting is never taken for one that exited.

The servers the tests start (etcd, kube-apiserver, weed) are checked with "does /proc/PID/cmdline name DIR/?".
Two windows answered "no" for a server that was starting fine, and CI failed with "exited during start-up":
between the fork and the exec the child still carries the script's command line (about 1 start in 13 here), and
inside each execve of the start chain (setsid, env, the server) the kernel reports an empty command line
(CI's "etcd: exited during start-up" with an empty log, while the stop step found etcd running).
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


# A process that execs itself EXECS times, every image naming DIR/, while the reader asks pid_is_ours about it as
# fast as it can. With the old check (an empty command line = not ours) about 1 read in 15 answered "no" here.
EXEC_WINDOW = r"""
TAG=test; source "$1"
DIR="$2"; mkdir -p "$DIR"
cat > "$DIR/reexec.sh" <<'SH'
n=$1; shift
[ "$n" -gt 0 ] && exec /bin/sh "$0" $((n - 1)) "$@"
sleep 0.2
SH
/bin/sh "$DIR/reexec.sh" "$3" "$DIR/marker" </dev/null >/dev/null 2>&1 &
pid=$!
sleep 0.1
checks=0; wrong=0
while [ -e "/proc/$pid" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; do
  checks=$((checks + 1))
  if ! pid_is_ours "$pid"; then
    # Ended between the check and now is a correct "no"; still running is a wrong one.
    if [ -e "/proc/$pid" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; then
      wrong=$((wrong + 1))
    fi
  fi
done
wait "$pid"
echo "$checks $wrong"
"""


def test_a_process_inside_exec_is_still_ours(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", "-c", EXEC_WINDOW, "exec-window-test", str(LOOPBACK), str(tmp_path), "3000"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    checks, wrong = (int(n) for n in done.stdout.split())
    assert checks >= 20, f"only {checks} checks ran while the process re-exec'd: the test saw too little"
    assert wrong == 0, f"{wrong} of {checks} checks called a re-exec'ing process not ours"


def test_pid_is_ours_refuses_other_and_ended_processes(tmp_path: Path) -> None:
    script = r"""
TAG=test; source "$1"; DIR="$2"
sleep 5 </dev/null >/dev/null 2>&1 & other=$!
sh -c 'exit 0' "$DIR/x" & ended=$!; wait "$ended"
sh -c 'sleep 5; :' "$DIR/x" </dev/null >/dev/null 2>&1 & ours=$!
sleep 0.2
r=""
pid_is_ours "$other" && r="${r}other " ; pid_is_ours "$ended" && r="${r}ended "; pid_is_ours "" && r="${r}empty "
pid_is_ours "$ours" || r="${r}ours-refused"
kill "$other" "$ours"
echo "[$r]"
"""
    done = subprocess.run(["bash", "-c", script, "ours-test", str(LOOPBACK), str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
