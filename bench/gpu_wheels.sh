#!/usr/bin/env bash
# Run HERE (not on the GPU machine), from any directory: fills .whl/ with exactly the wheels the GPU machine
# lacks for fusionrec's import path, for bench/gpu.sh to install offline there (carry `.whl` in the run).
#
# The GPU image (/work/.library/device/KINDS.md) has torch 2.11, transformers 5.17, huggingface_hub 1.33,
# tokenizers 0.23.2, safetensors 0.8.0, numpy, pandas, pyarrow, scipy, scikit-learn, pyyaml, click, tqdm,
# regex, typer, onnx and onnxruntime, but no pydantic (nor annotated-types, typing-inspection). It gets:
#   - pydantic, pydantic-core, annotated-types, typing-inspection, and typing-extensions (pydantic needs
#     >= 4.16; the image's version is not recorded);
#   - transformers as tested here (5.24: its masking code is CUDA-graph-capture aware); its other needs are
#     met there (huggingface-hub >=1.31,<3; tokenizers >=0.23.1,<0.24; safetensors >=0.8; regex as 5.17 needs);
#   - fusionrec itself (gpu.sh also copies the working tree's sources over it, so a stale wheel is harmless).
# Versions are the ones installed in this environment, i.e. the ones the test suite runs against.
# WHEEL_DIR (.whl) and WHEEL_PYTHON (3.12, the GPU machine's) exist to check gpu.sh's install path here:
#   WHEEL_PYTHON=3.11 WHEEL_DIR=/tmp/w bash bench/gpu_wheels.sh
#   GPU_BENCH_WHEELS=/tmp/w GPU_BENCH_SITE=/tmp/site GPU_BENCH_CPU_SMOKE=1 bash bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=${WHEEL_DIR:-.whl}
TAG=${WHEEL_PYTHON:-3.12}
PACKAGES=(pydantic pydantic-core annotated-types typing-inspection typing-extensions transformers)

pins=()
for name in "${PACKAGES[@]}"; do
    pins+=("$name==$("$PY" -P -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
done
echo "wheels for CPython $TAG (the GPU machine: 3.12): ${pins[*]} + fusionrec"
rm -rf "$DEST"
mkdir -p "$DEST"
# The machine runs CPython 3.12 on x86-64; pip matches each manylinux tag exactly, so several are listed.
"$PY" -P -m pip download -q --no-deps --only-binary=:all: --python-version "$TAG" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEST" "${pins[@]}"
# fusionrec from a copy of its sources (pyproject's package-dir folders), so no build/ or egg-info is left in
# the checkout and no stale build/lib file from an earlier build gets into the wheel.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
"$PY" -P - "$src" <<'EOF'
import shutil, sys, tomllib
from pathlib import Path

src = Path(sys.argv[1])
project = tomllib.loads(Path("pyproject.toml").read_text())
for name in ["pyproject.toml", project["project"]["readme"], *Path(".").glob("LICEN[CS]E*")]:
    shutil.copy(name, src)
for folder in set(project["tool"]["setuptools"]["package-dir"].values()):
    shutil.copytree(folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
EOF
"$PY" -P -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "$src"

# The fusionrec wheel must hold every package pyproject lists (train/, serving/, operator/ come in through
# package-dir), and .whl/ one version of each distribution (two stop the offline install).
"$PY" -P - "$DEST" <<'EOF'
import sys
import tomllib
import zipfile
from pathlib import Path

dest = Path(sys.argv[1])
wheels = sorted(dest.glob("*.whl"))
names = [w.name.split("-")[0].lower() for w in wheels]
repeated = sorted({n for n in names if names.count(n) > 1})
if repeated:
    sys.exit(f"{dest}: several wheels of {repeated}")
ours = [w for w in wheels if w.name.startswith("fusion_recommender-")]
if len(ours) != 1:
    sys.exit(f"{dest}: expected one fusion_recommender wheel, found {[w.name for w in ours]}")
packages = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
files = set(zipfile.ZipFile(ours[0]).namelist())
missing = [p for p in packages if f"{p.replace('.', '/')}/__init__.py" not in files]
if missing:
    sys.exit(f"{ours[0].name} lacks packages {missing}")
for probe in ("fusionrec/compile/graphs.py", "fusionrec/compile/torch_backend.py", "fusionrec/model/fused.py"):
    if probe not in files:
        sys.exit(f"{ours[0].name} lacks {probe}")
total = 0
for wheel in wheels:
    size = wheel.stat().st_size
    total += size
    print(f"{size / 2**20:7.2f} MiB  {wheel.name}")
print(f"{total / 2**20:7.2f} MiB  total in {dest}/ ({len(packages)} fusionrec packages checked)")
EOF
