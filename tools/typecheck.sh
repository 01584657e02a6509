#!/usr/bin/env bash
# mypy over the package as Python imports it once installed. pyproject maps operator/, serving/ and train/ into
# `fusionrec` (package-dir), which mypy cannot follow from the source tree, so a tree of symlinks in a temporary
# folder gives it the installed layout; reported paths are mapped back to the files in this repository.
#   bash tools/typecheck.sh [mypy args]      (settings: [tool.mypy] in pyproject.toml)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${VENV_BIN:-$root/.venv/bin}
tree=$(mktemp -d "${TMPDIR:-/tmp}/fusionrec-typecheck.XXXXXX")
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/fusionrec"
for entry in "$root"/fusionrec/*; do ln -s "$entry" "$tree/fusionrec/"; done
for package in operator serving train; do ln -s "$root/$package" "$tree/fusionrec/$package"; done
cd "$tree"
set +e
"$bin/mypy" --config-file "$root/pyproject.toml" --python-executable "$bin/python" \
    --cache-dir "${XDG_CACHE_HOME:-$HOME/.cache}/fusionrec/mypy" -p fusionrec "$@" 2>&1 \
    | sed -E 's#^fusionrec/(operator|serving|train)/#\1/#'
exit "${PIPESTATUS[0]}"
