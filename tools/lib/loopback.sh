# Shared by tools/kube/kube-up.sh and tools/s3/s3-up.sh (sourced, not run): time stamps, loopback ports and the
# command-line dispatch of the servers the tests start. Each script sets TAG (its name in messages) before sourcing
# and defines usage, do_start, do_stop, do_env and do_status, then ends with `run_command "$@"`.

log() { echo "[$TAG $(date +%H:%M:%S)] $*" >&2; }
die() { echo "$TAG: $*" >&2; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

free_ports() {  # N -> N distinct free loopback ports, one a line (held together while chosen, so all differ)
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print("\n".join(str(s.getsockname()[1]) for s in socks))
PY
}

port_free() {  # PORT -> exit 0 when 127.0.0.1:PORT can be bound
  python3 - "$1" <<'PY'
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
}

# PID -> exit 0 when PID is a live process (not a zombie) whose command line names DIR/: a server these scripts
# started, not whatever reuses its pid later. While a process is inside execve the kernel reports an empty command
# line (the new image's arguments are not in place yet); every server here starts through a chain of execs (setsid,
# env, the binary), and on a loaded or cold machine a check landed in that window often enough for CI to report
# "etcd: exited during start-up" for an etcd that was starting fine. So an empty command line is read again, for up
# to 2 s, rather than taken as "not ours".
pid_is_ours() {
  local pid="$1" line i
  [ -n "$pid" ] || return 1
  for i in $(seq 40); do
    grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null && return 1
    line="$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)" || return 1
    if [ -n "$line" ]; then [[ "$line" == *"$DIR/"* ]]; return; fi
    sleep 0.05
  done
  return 1
}

# NAME COMMAND...: start COMMAND in its own session, stdin closed, output to DIR/logs/NAME.log, its pid in
# DIR/pids/NAME.pid; return once the forked shell has exec'd it. Until then /proc/PID/cmdline is this script's own
# line, which pid_is_ours reads as "not ours": on a loaded machine that raced the first readiness check into
# "exited during start-up" while the server was starting fine.
launch() {
  local name="$1" pid i self line
  shift
  self="$(tr '\0' ' ' < "/proc/$$/cmdline")"
  setsid "$@" </dev/null >"$DIR/logs/$name.log" 2>&1 &
  pid=$!
  echo "$pid" > "$DIR/pids/$name.pid"
  for i in $(seq 200); do   # at most 10 s; a process that is already gone is the readiness check's to report
    line="$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)" || return 0
    [ -n "$line" ] && [ "$line" != "$self" ] && return 0   # empty: inside the exec, look again
    sleep 0.05
  done
}

run_command() {  # start|stop|env|status DIR: DIR made for start; a missing DIR is nothing to stop
  [ $# -eq 2 ] || usage
  local cmd="$1"
  if [ "$cmd" = start ]; then mkdir -p "$2"; fi
  if [ ! -d "$2" ]; then
    case "$cmd" in stop|status) log "no such folder: $2 (nothing to do)"; [ "$cmd" = stop ]; exit ;; esac
    die "not a folder: $2"
  fi
  DIR="$(cd "$2" && pwd)"
  case "$cmd" in
    start) do_start ;;
    stop) do_stop ;;
    env) do_env ;;
    status) do_status ;;
    *) usage ;;
  esac
}
