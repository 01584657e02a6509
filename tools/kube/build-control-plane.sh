#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager from the Go module proxy, cached by version.
#
# Why build at all: the only registries this project may use are PyPI, Debian, npm, crates.io, Maven Central and
# the Go module proxy; none ships a kube-apiserver binary. k8s.io/kubernetes is served as a Go module, but its
# go.mod replaces every k8s.io/* staging module with ./staging/src/..., which a module download does not contain.
# So a tiny main module requires k8s.io/kubernetes at one pinned release and replaces each staging module with
# its published v0.x twin (same minor, same patch), then builds the two commands.
#
# Usage: tools/kube/build-control-plane.sh [DEST_DIR]
#   KUBE_VERSION (default v1.36.3)  the release to build
#   prints the folder that holds the binaries on its last line.
# First build: 10-40 min on 2 cores (the apiserver is ~100 MB of Go); later runs reuse the cache at once.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.36.3}"
CACHE_ROOT="${FUSIONREC_KUBE_CACHE:-$HOME/.cache/fusionrec/kube}"
DEST="${1:-$CACHE_ROOT/$KUBE_VERSION/bin}"
COMMANDS=(kube-apiserver kube-controller-manager)

have_all() {
  local c
  for c in "${COMMANDS[@]}"; do [ -x "$DEST/$c" ] || return 1; done
}
if have_all; then echo "$DEST"; exit 0; fi

command -v go >/dev/null || { echo "build-control-plane: Go is not installed (it is needed to build $KUBE_VERSION)" >&2; exit 2; }

# One build at a time per version (two `kube-up.sh start` on a cold cache would share the same src folder):
# wait for the other one, then use what it built.
mkdir -p "$CACHE_ROOT/$KUBE_VERSION"
if command -v flock >/dev/null; then
  exec 9>"$CACHE_ROOT/$KUBE_VERSION/.build.lock"
  if ! flock -n 9; then
    echo "[build-control-plane $(date +%H:%M:%S)] another build of $KUBE_VERSION is running: waiting for it" >&2
    flock 9
  fi
  if have_all; then echo "$DEST"; exit 0; fi
fi

minor_patch="${KUBE_VERSION#v1.}"          # 36.3
staging_version="v0.${minor_patch}"        # v0.36.3
work="$CACHE_ROOT/$KUBE_VERSION/src"
mkdir -p "$work" "$DEST"
cd "$work"

export GOFLAGS=-mod=mod CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
log() { echo "[build-control-plane $(date +%H:%M:%S)] $*" >&2; }

log "fetching k8s.io/kubernetes@$KUBE_VERSION's go.mod"
upstream_mod="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')"
[ -f "$upstream_mod" ] || { echo "build-control-plane: could not download k8s.io/kubernetes@$KUBE_VERSION" >&2; exit 1; }
go_directive="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$upstream_mod" | head -1)"
staging_modules="$(sed -n 's#^\t\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$upstream_mod")"
[ -n "$staging_modules" ] || { echo "build-control-plane: no staging replaces found in $upstream_mod" >&2; exit 1; }

{
  echo "module fusionrec.local/kube-control-plane"
  echo
  echo "go $go_directive"
  echo
  # The same GODEBUG defaults the release was built with.
  sed -n 's/^godebug \(.*\)$/godebug \1/p' "$upstream_mod"
  echo
  echo "require k8s.io/kubernetes $KUBE_VERSION"
  echo
  echo "replace ("
  for m in $staging_modules; do echo "	$m => $m $staging_version"; done
  echo ")"
} > go.mod
cat > tools.go <<'GO'
//go:build tools

// Package tools pins the commands this module builds.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
GO

log "resolving modules (go mod tidy)"
go mod tidy -e >&2
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1"
ldflags="$ldflags -X k8s.io/component-base/version.gitMinor=${minor_patch%%.*} -X k8s.io/component-base/version.gitTreeState=clean"
ldflags="$ldflags -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
for c in "${COMMANDS[@]}"; do
  [ -x "$DEST/$c" ] && continue
  log "building $c $KUBE_VERSION (several minutes on 2 cores; -v lists packages as they compile)"
  go build -v -tags providerless -trimpath -ldflags "$ldflags" -o "$DEST/$c.tmp" "k8s.io/kubernetes/cmd/$c" >&2
  mv "$DEST/$c.tmp" "$DEST/$c"      # published last: an interrupted build never leaves a half binary
  log "built $DEST/$c"
done
echo "$DEST"
