#!/usr/bin/env bash
# A real S3-compatible server on loopback for the object-storage tests: SeaweedFS's `weed server` (master, volume
# server, filer and S3 gateway in one process; Apache-2.0). Everything listens on 127.0.0.1 only, on free ports;
# nothing reaches the network (telemetry off).
#
# Usage: tools/s3/s3-up.sh start DIR   bring it up under DIR (data/, logs/, pids/, s3.json, env) with fresh static
#                                      credentials; returns once a signed S3 request succeeds and a volume server
#                                      has joined; prints `. DIR/env`
#        tools/s3/s3-up.sh stop DIR    stop exactly the process `start` recorded in DIR/pids, wait for it, remove
#                                      DIR/env and the sockets it made in /tmp
#        tools/s3/s3-up.sh env DIR     print DIR/env (export AWS_ACCESS_KEY_ID=..., AWS_SECRET_ACCESS_KEY,
#                                      AWS_REGION, AWS_ENDPOINT_URL_S3=http://127.0.0.1:PORT)
#        tools/s3/s3-up.sh status DIR  say whether the recorded process is running
#
# Binary: $S3_UP_WEED, else the cache that tools/s3/build-seaweedfs.sh builds (on first use; never a `weed` from
# PATH, which may be another version). Environment: S3_UP_TIMEOUT (s, default 120) to become ready;
# S3_UP_PORT a fixed S3 port (checked free); S3_UP_REGION (default us-east-1); S3_UP_STOP_GRACE (s, default 3)
# between SIGTERM and SIGKILL; S3_UP_VOLUMES (default 256) volumes of 64 MB, the capacity (written as used; a
# publish stages a version, then copies it: twice its size for a moment). The data is scratch: `start` wipes DIR/data.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TAG=s3-up
# shellcheck source=../lib/loopback.sh
source "$HERE/../lib/loopback.sh"
TIMEOUT="${S3_UP_TIMEOUT:-120}"
REGION="${S3_UP_REGION:-us-east-1}"
# weed stops its volume server first, then its filer retries flushing its metadata log to that volume server for
# ~15 s before giving up. Nothing here outlives the server (start wipes DIR/data), so a short grace, then SIGKILL.
STOP_GRACE="${S3_UP_STOP_GRACE:-3}"
VOLUMES="${S3_UP_VOLUMES:-256}"

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

resolve_binary() {
  if [ -n "${S3_UP_WEED:-}" ]; then
    WEED_BIN="$S3_UP_WEED"
  else
    local dir
    dir="$(bash "$HERE/build-seaweedfs.sh" | tail -n 1)" || die "building weed failed (tools/s3/build-seaweedfs.sh)"
    WEED_BIN="$dir/weed"
  fi
  [ -x "$WEED_BIN" ] || die "not executable: $WEED_BIN"
}

# --- ports --------------------------------------------------------------------------------------------------------

# Every listener gets an explicit port: weed's default gRPC port is HTTP port + 10000, which may be taken or,
# for an ephemeral port, above 65535.
pick_ports() {
  local p=()
  mapfile -t p < <(free_ports 8)
  S3_PORT="${p[0]}" S3_GRPC_PORT="${p[1]}" MASTER_PORT="${p[2]}" MASTER_GRPC_PORT="${p[3]}"
  VOLUME_PORT="${p[4]}" VOLUME_GRPC_PORT="${p[5]}" FILER_PORT="${p[6]}" FILER_GRPC_PORT="${p[7]}"
  if [ -n "${S3_UP_PORT:-}" ]; then
    port_free "$S3_UP_PORT" || die "S3_UP_PORT=$S3_UP_PORT: 127.0.0.1:$S3_UP_PORT is in use"
    S3_PORT="$S3_UP_PORT"
  fi
}

# --- probes -------------------------------------------------------------------------------------------------------

# GET URL plainly (never through a proxy: everything is on 127.0.0.1); body on stdout; exit 0 on HTTP 200.
probe() {
  python3 - "$1" <<'PY' 2>/dev/null
import sys, urllib.request
try:
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(sys.argv[1], timeout=5) as r:
        sys.stdout.write(r.read().decode(errors="replace"))
        sys.exit(0 if r.status == 200 else 1)
except Exception as e:
    sys.stdout.write(str(e)); sys.exit(1)
PY
}

# A SigV4-signed ListBuckets with DIR/env's credentials: proves the gateway, the filer behind it and the identity
# config all work. Prints the HTTP status or the error; exit 0 on 200.
probe_signed() {
  python3 - "$DIR/env" <<'PY' 2>/dev/null
import datetime, hashlib, hmac, sys, urllib.error, urllib.request
env = dict(line.removeprefix("export ").strip().split("=", 1) for line in open(sys.argv[1]) if "=" in line)
host = env["AWS_ENDPOINT_URL_S3"].split("://", 1)[1]
region, key, secret = env["AWS_REGION"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
t = datetime.datetime.now(datetime.UTC)
amz_date, day = t.strftime("%Y%m%dT%H%M%SZ"), t.strftime("%Y%m%d")
empty = hashlib.sha256(b"").hexdigest()
headers = {"host": host, "x-amz-content-sha256": empty, "x-amz-date": amz_date}
signed = ";".join(sorted(headers))
canonical = "\n".join(["GET", "/", "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, empty])
scope = f"{day}/{region}/s3/aws4_request"
to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
k = ("AWS4" + secret).encode()
for part in (day, region, "s3", "aws4_request"):
    k = hmac.new(k, part.encode(), hashlib.sha256).digest()
signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
request = urllib.request.Request(f"http://{host}/", headers={
    "x-amz-content-sha256": empty, "x-amz-date": amz_date,
    "Authorization": f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders={signed}, Signature={signature}"})
try:
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=5) as r:
        print(r.status); sys.exit(0 if r.status == 200 else 1)
except urllib.error.HTTPError as e:
    print(f"HTTP {e.code}: {e.read()[:200]!r}"); sys.exit(1)
except Exception as e:
    print(e); sys.exit(1)
PY
}

# --- process ------------------------------------------------------------------------------------------------------

# The pid recorded for weed, if that process is still the one we started (its command line names DIR).
live_pid() {
  local f="$DIR/pids/weed.pid" pid
  [ -f "$f" ] || return 1
  pid="$(cat "$f")"
  pid_is_ours "$pid" || return 1
  echo "$pid"
}

fail_with_log() {  # MESSAGE
  echo "s3-up: weed: $1" >&2
  echo "---- last 40 lines of $DIR/logs/weed.log ----" >&2
  tail -n 40 "$DIR/logs/weed.log" >&2 || true
  echo "----" >&2
  log "stopping what was started"
  do_stop >&2 || true
  exit 1
}

wait_until() {  # WHAT COMMAND...  (retry until COMMAND succeeds; fail if weed exits or TIMEOUT passes)
  local what="$1" deadline out=""
  shift
  deadline=$(( $(date +%s) + TIMEOUT ))
  while :; do
    live_pid >/dev/null || fail_with_log "exited during start-up"
    if out="$("$@")"; then return 0; fi
    [ "$(date +%s)" -lt "$deadline" ] || fail_with_log "$what not ready after ${TIMEOUT}s (${out:0:300})"
    sleep 0.5
  done
}

volume_joined() {  # the master lists our volume server
  local body
  body="$(probe "http://127.0.0.1:$MASTER_PORT/dir/status")" || { echo "$body"; return 1; }
  [[ "$body" == *"127.0.0.1:$VOLUME_PORT"* ]] || { echo "no volume server in /dir/status yet"; return 1; }
}

random_string() {  # LENGTH ALPHABET
  python3 -c 'import secrets, sys; print("".join(secrets.choice(sys.argv[2]) for _ in range(int(sys.argv[1]))))' "$1" "$2"
}

do_start() {
  if live_pid >/dev/null; then
    if [ -f "$DIR/env" ]; then log "already running under $DIR"; print_env; return 0; fi
    log "a server without DIR/env is running under $DIR: stopping it first"
    do_stop
  fi
  local t0 t1 t2 t3 access_key secret_key
  t0=$(now)
  resolve_binary
  t1=$(now)
  do_stop_sockets
  rm -rf "$DIR/data" "$DIR/logs" "$DIR/pids" "$DIR/env" "$DIR/s3.json" "$DIR/sockets"
  mkdir -p "$DIR/data" "$DIR/logs" "$DIR/pids"
  chmod 700 "$DIR"
  pick_ports
  access_key="FR$(random_string 18 ABCDEFGHIJKLMNOPQRSTUVWXYZ234567)"
  secret_key="$(random_string 40 abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789)"
  ( umask 077
    cat > "$DIR/s3.json" <<JSON
{
  "identities": [
    {
      "name": "fusionrec",
      "credentials": [{"accessKey": "$access_key", "secretKey": "$secret_key"}],
      "actions": ["Admin", "Read", "Write", "List", "Tagging"]
    }
  ]
}
JSON
    printf 'export AWS_ACCESS_KEY_ID=%s\nexport AWS_SECRET_ACCESS_KEY=%s\nexport AWS_REGION=%s\nexport AWS_ENDPOINT_URL_S3=http://127.0.0.1:%s\n' \
      "$access_key" "$secret_key" "$REGION" "$S3_PORT" > "$DIR/env.tmp"
  )
  # weed puts its gRPC sockets in /tmp by fixed names; the HTTP ones go under DIR when the path is short enough.
  local filer_sock="$DIR/filer.sock" s3_sock="$DIR/s3.sock"
  if [ "${#DIR}" -gt 90 ]; then filer_sock="/tmp/fusionrec-s3-filer-$FILER_PORT.sock"; s3_sock="/tmp/fusionrec-s3-$S3_PORT.sock"; fi
  printf '%s\n' "$filer_sock" "$s3_sock" "/tmp/seaweedfs-master-grpc-$MASTER_GRPC_PORT.sock" \
    "/tmp/seaweedfs-volume-grpc-$VOLUME_GRPC_PORT.sock" "/tmp/seaweedfs-filer-grpc-$FILER_GRPC_PORT.sock" \
    "/tmp/seaweedfs-s3-grpc-$S3_GRPC_PORT.sock" > "$DIR/sockets"
  t2=$(now)
  log "binary: $WEED_BIN"
  log "ports: s3 $S3_PORT (grpc $S3_GRPC_PORT), master $MASTER_PORT ($MASTER_GRPC_PORT), volume $VOLUME_PORT ($VOLUME_GRPC_PORT), filer $FILER_PORT ($FILER_GRPC_PORT)"

  # glog writes under DIR/logs (it would otherwise write files to /tmp).
  launch weed "$WEED_BIN" -logdir="$DIR/logs" server -dir="$DIR/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -master.port="$MASTER_PORT" -master.port.grpc="$MASTER_GRPC_PORT" -master.telemetry=false \
    -master.volumeSizeLimitMB=64 -volume.max="$VOLUMES" -volume.preStopSeconds=0 \
    -volume.port="$VOLUME_PORT" -volume.port.grpc="$VOLUME_GRPC_PORT" \
    -filer -filer.port="$FILER_PORT" -filer.port.grpc="$FILER_GRPC_PORT" -filer.localSocket="$filer_sock" \
    -s3 -s3.port="$S3_PORT" -s3.port.grpc="$S3_GRPC_PORT" -s3.localSocket="$s3_sock" -s3.config="$DIR/s3.json" \
    -s3.port.iceberg=0 -s3.port.lance=0 -s3.autoCreateBucket=false

  wait_until "master" probe "http://127.0.0.1:$MASTER_PORT/cluster/healthz"
  wait_until "volume server" volume_joined
  wait_until "filer" probe "http://127.0.0.1:$FILER_PORT/healthz"
  mv "$DIR/env.tmp" "$DIR/env"
  wait_until "S3 gateway (a signed ListBuckets)" probe_signed
  t3=$(now)
  log "S3 on http://127.0.0.1:$S3_PORT in $(secs "$t0" "$t3") s (binary $(secs "$t0" "$t1") s, setup $(secs "$t1" "$t2") s, weed $(secs "$t2" "$t3") s)"
  print_env
}

print_env() {
  echo ". $DIR/env"
}

do_stop_sockets() {  # the socket files this DIR's weed made (it leaves them behind)
  local s
  [ -f "$DIR/sockets" ] || return 0
  while IFS= read -r s; do [ -S "$s" ] && rm -f "$s"; done < "$DIR/sockets"
  return 0
}

do_stop() {
  local pid deadline
  if pid="$(live_pid)"; then
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$(( $(date +%s) + STOP_GRACE ))
    while live_pid >/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
    if live_pid >/dev/null; then
      log "weed (pid $pid) still running ${STOP_GRACE} s after SIGTERM: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      while live_pid >/dev/null; do sleep 0.1; done
    fi
    log "stopped weed (pid $pid)"
  else
    log "nothing running under $DIR"
  fi
  rm -f "$DIR/pids/weed.pid" "$DIR/env" "$DIR/env.tmp" "$DIR/s3.json"   # the credentials die with the server
  do_stop_sockets
}

do_status() {
  local pid
  if pid="$(live_pid)"; then echo "weed running (pid $pid)"; else echo "weed not running"; return 1; fi
}

do_env() { [ -f "$DIR/env" ] || die "no $DIR/env: not started"; cat "$DIR/env"; }

run_command "$@"
