#!/usr/bin/env bash
# Builds SeaweedFS's `weed` (Apache-2.0) from the Go module proxy, cached by version: the S3-compatible server the
# object-storage tests run on loopback (tools/s3/s3-up.sh). MinIO is AGPL, so it is not used.
#
# Why build at all: the only registries this project may use are PyPI, Debian, npm, crates.io, Maven Central and
# the Go module proxy; none ships a SeaweedFS binary. github.com/seaweedfs/seaweedfs is served as a Go module, but
# its go.mod has a `replace` directive, so `go install ...@version` refuses it. So a tiny main module requires it at
# one pinned pseudo-version, repeats its module-path replaces (a replace only applies in the main module), and
# builds ./weed. SeaweedFS's own go.mod pins every dependency, so `go mod tidy` resolves the same versions each time.
#
# Usage: tools/s3/build-seaweedfs.sh [DEST_DIR]
#   SEAWEEDFS_VERSION (default v0.0.0-20261109003541-7506e5f91cd6, weed 4.53)  the module version to build
#   FUSIONREC_S3_CACHE (default ~/.cache/fusionrec/s3)                          the cache root
#   prints the folder that holds `weed` on its last line.
# First build: minutes on 2 cores (it prints how long it took); later runs reuse the cache at once.
set -euo pipefail

SEAWEEDFS_VERSION="${SEAWEEDFS_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}"
CACHE_ROOT="${FUSIONREC_S3_CACHE:-$HOME/.cache/fusionrec/s3}"
DEST="${1:-$CACHE_ROOT/$SEAWEEDFS_VERSION/bin}"

if [ -x "$DEST/weed" ]; then echo "$DEST"; exit 0; fi

command -v go >/dev/null || { echo "build-seaweedfs: Go is not installed (it is needed to build weed $SEAWEEDFS_VERSION)" >&2; exit 2; }
log() { echo "[build-seaweedfs $(date +%H:%M:%S)] $*" >&2; }

# One build at a time per version (two `s3-up.sh start` on a cold cache would share the same src folder):
# wait for the other one, then use what it built.
mkdir -p "$CACHE_ROOT/$SEAWEEDFS_VERSION"
if command -v flock >/dev/null; then
  exec 9>"$CACHE_ROOT/$SEAWEEDFS_VERSION/.build.lock"
  if ! flock -n 9; then
    log "another build of $SEAWEEDFS_VERSION is running: waiting for it"
    flock 9
  fi
  if [ -x "$DEST/weed" ]; then echo "$DEST"; exit 0; fi
fi

work="$CACHE_ROOT/$SEAWEEDFS_VERSION/src"
mkdir -p "$work" "$DEST"
cd "$work"

# GOTOOLCHAIN=local unless the caller set one: this version declares go 1.26.6, which the installed Go satisfies.
export GOFLAGS=-mod=mod CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
t0=$(date +%s)

log "fetching github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION's go.mod"
upstream_mod="$(go mod download -json "github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')"
[ -f "$upstream_mod" ] || { echo "build-seaweedfs: could not download github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION" >&2; exit 1; }
go_directive="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$upstream_mod" | head -1)"

{
  echo "module fusionrec.local/seaweedfs"
  echo
  echo "go $go_directive"
  echo
  sed -n 's/^godebug \(.*\)$/godebug \1/p' "$upstream_mod"
  echo
  echo "require github.com/seaweedfs/seaweedfs $SEAWEEDFS_VERSION"
  echo
  # Upstream's replaces by module path (one-line form; local-path replaces are comments there or skipped here).
  sed -n 's#^replace \([^ ]*\) => \([^ ./][^ ]*\) \(v[^ ]*\)$#replace \1 => \2 \3#p' "$upstream_mod"
} > go.mod
cat > tools.go <<'GO'
//go:build tools

// Package tools pins the command this module builds.
package tools

import _ "github.com/seaweedfs/seaweedfs/weed"
GO

log "resolving modules (go mod tidy)"
go mod tidy -e >&2
log "building weed $SEAWEEDFS_VERSION (several minutes on 2 cores; -v lists packages as they compile)"
go build -v -trimpath -ldflags "-s -w" -o "$DEST/weed.tmp" github.com/seaweedfs/seaweedfs/weed >&2
mv "$DEST/weed.tmp" "$DEST/weed"      # published last: an interrupted build never leaves a half binary
t1=$(date +%s)
log "built $DEST/weed in $((t1 - t0)) s ($(du -m "$DEST/weed" | cut -f1) MB)"
echo "$DEST"
