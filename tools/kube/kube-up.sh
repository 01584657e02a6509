#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for the end-to-end tests: etcd + kube-apiserver +
# kube-controller-manager, no kubelet and no pods. Everything listens on 127.0.0.1 only, on free ports.
#
# Usage: tools/kube/kube-up.sh start DIR   bring it up under DIR (certs/, etcd/, logs/, pids/, admin.kubeconfig);
#                                          returns once /readyz is ok, the controller-manager is healthy and the
#                                          default ServiceAccount exists; prints `export KUBECONFIG=...`
#        tools/kube/kube-up.sh stop DIR    stop exactly the processes `start` recorded in DIR/pids, wait for them
#        tools/kube/kube-up.sh env DIR     print DIR's kubeconfig path
#        tools/kube/kube-up.sh status DIR  say which recorded processes are running
#
# Binaries, per command: $KUBEBUILDER_ASSETS/<name>, then PATH, then (kube-apiserver, kube-controller-manager)
# the cache that tools/kube/build-control-plane.sh builds, (etcd) Debian's etcd-server when running as root.
# Environment: KUBE_UP_TIMEOUT (s, default 180) for each component to become ready;
#   KUBE_UP_ETCD_PORT, KUBE_UP_ETCD_PEER_PORT, KUBE_UP_APISERVER_PORT, KUBE_UP_KCM_PORT fixed ports (checked free);
#   KUBE_UP_CONTROLLERS the controller-manager's --controllers.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TAG=kube-up
# shellcheck source=../lib/loopback.sh
source "$HERE/../lib/loopback.sh"
TIMEOUT="${KUBE_UP_TIMEOUT:-180}"
CONTROLLERS="${KUBE_UP_CONTROLLERS:-garbagecollector,namespace,serviceaccount,serviceaccount-token,root-ca-cert-publisher,clusterrole-aggregation}"
COMPONENTS=(etcd kube-apiserver kube-controller-manager)   # start order; stop runs it backwards

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# --- binaries ---------------------------------------------------------------------------------------------------

find_bin() {  # NAME -> path on stdout, or nothing
  local name="$1"
  if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/$name" ]; then echo "$KUBEBUILDER_ASSETS/$name"; return; fi
  command -v "$name" 2>/dev/null || true
}

resolve_binaries() {
  ETCD_BIN="$(find_bin etcd)"
  if [ -z "$ETCD_BIN" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      log "etcd not found: installing Debian's etcd-server"
      install_etcd_server
      ETCD_BIN="$(command -v etcd || true)"
    fi
    [ -n "$ETCD_BIN" ] || die "etcd not found (set KUBEBUILDER_ASSETS, put etcd on PATH, or apt-get install etcd-server)"
  fi
  APISERVER_BIN="$(find_bin kube-apiserver)"
  KCM_BIN="$(find_bin kube-controller-manager)"
  if [ -z "$APISERVER_BIN" ] || [ -z "$KCM_BIN" ]; then
    local dir
    log "kube-apiserver/kube-controller-manager not found: using tools/kube/build-control-plane.sh's cache (builds on first use)"
    dir="$(bash "$HERE/build-control-plane.sh" | tail -n 1)"
    [ -n "$APISERVER_BIN" ] || APISERVER_BIN="$dir/kube-apiserver"
    [ -n "$KCM_BIN" ] || KCM_BIN="$dir/kube-controller-manager"
  fi
  local b
  for b in "$ETCD_BIN" "$APISERVER_BIN" "$KCM_BIN"; do [ -x "$b" ] || die "not executable: $b"; done
}

# Debian starts a package's service on install unless policy-rc.d forbids it; the package's etcd would then hold
# 127.0.0.1:2379 under /var/lib/etcd. Forbid it for the install and stop it if it still came up.
install_etcd_server() {
  local policy=/usr/sbin/policy-rc.d added=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; added=1; fi
  local rc=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server; } >&2 || rc=$?
  if [ "$added" = 1 ]; then rm -f "$policy"; fi
  [ "$rc" = 0 ] || die "apt-get install etcd-server failed (exit $rc)"
  if pgrep -u etcd -x etcd >/dev/null 2>&1; then
    log "stopping the etcd service the package started"
    if [ -x /etc/init.d/etcd ]; then /etc/init.d/etcd stop >&2 || true; fi
  fi
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now etcd.service >&2 || true
  fi
}

# --- ports --------------------------------------------------------------------------------------------------------

pick_ports() {
  local auto=() i=0 var
  mapfile -t auto < <(free_ports 4)
  for var in KUBE_UP_ETCD_PORT KUBE_UP_ETCD_PEER_PORT KUBE_UP_APISERVER_PORT KUBE_UP_KCM_PORT; do
    if [ -n "${!var:-}" ]; then
      port_free "${!var}" || die "$var=${!var}: 127.0.0.1:${!var} is in use"
      printf -v "$var" '%s' "${!var}"
    else
      printf -v "$var" '%s' "${auto[$i]}"
    fi
    i=$((i + 1))
  done
  ETCD_PORT=$KUBE_UP_ETCD_PORT ETCD_PEER_PORT=$KUBE_UP_ETCD_PEER_PORT
  APISERVER_PORT=$KUBE_UP_APISERVER_PORT KCM_PORT=$KUBE_UP_KCM_PORT
}

# --- certificates ---------------------------------------------------------------------------------------------------

ec_key() { ( umask 077; openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" ) 2>/dev/null; }

make_certs() {  # DIR/certs. TLS keys are ECDSA P-256 (RSA keygen costs ~0.4 s each here); the ServiceAccount
  # signing key is RSA 2048 (RS256, what every token consumer expects).
  local c="$1" ca ext
  mkdir -p "$c"
  for ca in ca front-proxy-ca; do
    ec_key "$c/$ca.key"
    openssl req -x509 -new -key "$c/$ca.key" -sha256 -days 3650 -subj "/CN=fusionrec-e2e-$ca" -out "$c/$ca.crt" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      2>/dev/null
  done
  ( umask 077; openssl genrsa -out "$c/sa.key" 2048 && openssl rsa -in "$c/sa.key" -pubout -out "$c/sa.pub" ) 2>/dev/null
  sign() {  # NAME SUBJECT EXTENSIONS [CA]
    local by="${4:-ca}"
    ec_key "$c/$1.key"
    openssl req -new -key "$c/$1.key" -subj "$2" -out "$c/$1.csr" 2>/dev/null
    printf '%s\n' "$3" > "$c/$1.ext"
    openssl x509 -req -in "$c/$1.csr" -CA "$c/$by.crt" -CAkey "$c/$by.key" -CAcreateserial -sha256 -days 3650 \
      -extfile "$c/$1.ext" -out "$c/$1.crt" 2>/dev/null
    rm -f "$c/$1.csr" "$c/$1.ext"
  }
  ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment"
  sign apiserver "/CN=kube-apiserver" "$ext
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  sign admin "/O=system:masters/CN=kubernetes-admin" "$ext
extendedKeyUsage=clientAuth"
  sign controller-manager "/CN=system:kube-controller-manager" "$ext
extendedKeyUsage=clientAuth"
  # The controller-manager's own secure port (its /healthz), instead of the self-signed one it would make.
  sign controller-manager-serving "/CN=kube-controller-manager" "$ext
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost"
  # The aggregation layer's client identity; the controller-manager reads its CA from
  # kube-system/extension-apiserver-authentication and logs errors forever when it is missing.
  sign front-proxy-client "/CN=front-proxy-client" "$ext
extendedKeyUsage=clientAuth" front-proxy-ca
}

write_kubeconfig() {  # FILE USER CERTNAME
  local c="$DIR/certs"
  ( umask 077; cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: fusionrec-e2e
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 < "$c/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 < "$c/$3.crt")
    client-key-data: $(base64 -w0 < "$c/$3.key")
contexts:
- name: fusionrec-e2e
  context:
    cluster: fusionrec-e2e
    user: $2
    namespace: default
current-context: fusionrec-e2e
EOF
  )
}

# --- processes ------------------------------------------------------------------------------------------------------

# GET URL with the admin client certificate (https) or plainly (http); body on stdout; exit 0 on HTTP 200.
# Never through a proxy from the environment: everything is on 127.0.0.1.
probe() {
  python3 - "$1" "$DIR/certs" <<'PY' 2>/dev/null
import ssl, sys, urllib.request
url, certs = sys.argv[1], sys.argv[2]
handlers = [urllib.request.ProxyHandler({})]
if url.startswith("https://"):
    ctx = ssl.create_default_context(cafile=f"{certs}/ca.crt")
    ctx.load_cert_chain(f"{certs}/admin.crt", f"{certs}/admin.key")
    handlers.append(urllib.request.HTTPSHandler(context=ctx))
try:
    with urllib.request.build_opener(*handlers).open(url, timeout=5) as r:
        sys.stdout.write(r.read().decode(errors="replace"))
        sys.exit(0 if r.status == 200 else 1)
except Exception as e:
    sys.stdout.write(str(e)); sys.exit(1)
PY
}

# The pid recorded for NAME, if that process is still the one we started (its command line names DIR).
live_pid() {
  local f="$DIR/pids/$1.pid" pid
  [ -f "$f" ] || return 1
  pid="$(cat "$f")"
  pid_is_ours "$pid" || return 1
  echo "$pid"
}

fail_with_log() {  # NAME MESSAGE
  echo "kube-up: $1: $2" >&2
  echo "---- last 40 lines of $DIR/logs/$1.log ----" >&2
  tail -n 40 "$DIR/logs/$1.log" >&2 || true
  echo "----" >&2
  log "stopping what was started"
  do_stop >&2 || true
  exit 1
}

wait_ready() {  # NAME URL EXPECT
  local name="$1" url="$2" expect="$3" deadline body=""
  deadline=$(( $(date +%s) + TIMEOUT ))
  while :; do
    live_pid "$name" >/dev/null || fail_with_log "$name" "exited during start-up"
    if body="$(probe "$url")" && [[ "$body" == *"$expect"* ]]; then return 0; fi
    [ "$(date +%s)" -lt "$deadline" ] || fail_with_log "$name" "not ready after ${TIMEOUT}s ($url: ${body:0:300})"
    sleep 0.5
  done
}

do_start() {
  local running=0 n
  for n in "${COMPONENTS[@]}"; do if live_pid "$n" >/dev/null; then running=$((running + 1)); fi; done
  if [ "$running" -gt 0 ]; then
    if [ "$running" = "${#COMPONENTS[@]}" ] && [ -f "$DIR/admin.kubeconfig" ]; then
      log "already running under $DIR"
      print_env; return 0
    fi
    log "a partial control plane is running under $DIR: stopping it first"
    do_stop
  fi
  local t0 t1 t2 t3 t4 t5
  t0=$(now)
  resolve_binaries
  t1=$(now)
  rm -rf "$DIR/certs" "$DIR/etcd" "$DIR/logs" "$DIR/pids" "$DIR"/*.kubeconfig
  mkdir -p "$DIR/logs" "$DIR/pids"
  chmod 700 "$DIR"
  pick_ports
  make_certs "$DIR/certs"
  write_kubeconfig "$DIR/admin.kubeconfig" kubernetes-admin admin
  write_kubeconfig "$DIR/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
  t2=$(now)
  log "binaries: $ETCD_BIN, $APISERVER_BIN, $KCM_BIN"
  log "ports: etcd $ETCD_PORT (peer $ETCD_PEER_PORT), kube-apiserver $APISERVER_PORT, kube-controller-manager $KCM_PORT"

  # etcd reads ETCD_* variables too, and refuses to start when one shadows a flag: start it without them.
  local etcd_env=() v
  for v in $(compgen -e | grep '^ETCD_' || true); do etcd_env+=(-u "$v"); done
  launch etcd env "${etcd_env[@]}" "$ETCD_BIN" --name=fusionrec-e2e --data-dir="$DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="fusionrec-e2e=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state=new \
    --initial-cluster-token="fusionrec-e2e-$$" --logger=zap --log-level=warn --quota-backend-bytes=2147483648
  wait_ready etcd "http://127.0.0.1:$ETCD_PORT/health" '"health":"true"'
  t3=$(now)
  log "etcd ready ($(secs "$t2" "$t3") s)"

  # --endpoint-reconciler-type=none: the "kubernetes" Service's Endpoints may not hold a loopback address (the
  # apiserver would log a validation error every 10 s); nothing runs in-cluster here to use them anyway.
  local c="$DIR/certs"
  launch kube-apiserver "$APISERVER_BIN" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
    --tls-cert-file="$c/apiserver.crt" --tls-private-key-file="$c/apiserver.key" --client-ca-file="$c/ca.crt" \
    --authorization-mode=RBAC \
    --enable-admission-plugins=NamespaceLifecycle,ServiceAccount,OwnerReferencesPermissionEnforcement \
    --service-account-issuer=https://kubernetes.default.svc --api-audiences=https://kubernetes.default.svc \
    --service-account-key-file="$c/sa.pub" --service-account-signing-key-file="$c/sa.key" \
    --requestheader-client-ca-file="$c/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$c/front-proxy-client.crt" --proxy-client-key-file="$c/front-proxy-client.key" \
    --service-cluster-ip-range=10.96.0.0/16 --endpoint-reconciler-type=none \
    --allow-privileged=true --profiling=false
  wait_ready kube-apiserver "https://127.0.0.1:$APISERVER_PORT/readyz" ok
  t4=$(now)
  log "kube-apiserver ready ($(secs "$t3" "$t4") s)"

  # --use-service-account-credentials: each controller acts as its own ServiceAccount in kube-system, bound by
  # the default RBAC to its system:controller:* role (the garbage collector needs to delete any kind, which
  # system:kube-controller-manager alone may not).
  launch kube-controller-manager "$KCM_BIN" \
    --kubeconfig="$DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$DIR/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
    --tls-cert-file="$c/controller-manager-serving.crt" --tls-private-key-file="$c/controller-manager-serving.key" \
    --leader-elect=false --use-service-account-credentials=true --controllers="$CONTROLLERS" \
    --root-ca-file="$c/ca.crt" --service-account-private-key-file="$c/sa.key" --profiling=false
  wait_ready kube-controller-manager "https://127.0.0.1:$KCM_PORT/healthz" ok
  # Healthy is not yet working: wait until its serviceaccount controller has made default/default.
  wait_ready kube-controller-manager "https://127.0.0.1:$APISERVER_PORT/api/v1/namespaces/default/serviceaccounts/default" '"name":"default"'
  t5=$(now)
  log "kube-controller-manager ready ($(secs "$t4" "$t5") s)"
  log "control plane up in $(secs "$t0" "$t5") s (binaries $(secs "$t0" "$t1") s, certs $(secs "$t1" "$t2") s, etcd $(secs "$t2" "$t3") s, kube-apiserver $(secs "$t3" "$t4") s, kube-controller-manager $(secs "$t4" "$t5") s)"
  print_env
}

print_env() {
  echo "export KUBECONFIG=$DIR/admin.kubeconfig"
}

do_stop() {
  local i n pid pids=() names=() deadline
  for (( i=${#COMPONENTS[@]}-1; i>=0; i-- )); do
    n="${COMPONENTS[$i]}"
    if pid="$(live_pid "$n")"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid"); names+=("$n")
      # The apiserver drains and etcd flushes best once their clients are gone: stop in order, one at a time.
      deadline=$(( $(date +%s) + 30 ))
      while live_pid "$n" >/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
      if live_pid "$n" >/dev/null; then
        log "$n (pid $pid) did not exit after SIGTERM within 30 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while live_pid "$n" >/dev/null; do sleep 0.1; done
      fi
      log "stopped $n (pid $pid)"
    fi
    rm -f "$DIR/pids/$n.pid"
  done
  [ "${#pids[@]}" -gt 0 ] || log "nothing running under $DIR"
}

do_status() {
  local n pid rc=0
  for n in "${COMPONENTS[@]}"; do
    if pid="$(live_pid "$n")"; then echo "$n running (pid $pid)"; else echo "$n not running"; rc=1; fi
  done
  return $rc
}

do_env() { echo "$DIR/admin.kubeconfig"; }

run_command "$@"
