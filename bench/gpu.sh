#!/usr/bin/env bash
# The one command of a GPU session for issue #5: `bash bench/gpu.sh` from the repo root on the GPU machine,
# with `.whl` carried (made here by `bash bench/gpu_wheels.sh`). Benchmarks fusionrec's own serving path for the
# fused 3-encoder user tower (bench/gpu_bench.py: eager fp32/bf16, CUDA graphs, torch.compile, ONNX Runtime
# CUDA when present) at batch 1/32/256, random weights, and writes $OUT/gpu-bench.{md,json,log} when OUT is set.
#
# Never touches the network: the wheels install with --no-index into $GPU_BENCH_SITE (default /tmp/site),
# then the working tree's fusionrec sources are copied over the wheel's, so a wheel built before the last
# edit still runs the current code. Ends in under 8 minutes: gpu_bench.py skips what does not fit $BUDGET
# seconds and stops at $BUDGET + 30; `timeout` is the backstop.
#
# Settings (environment): BUDGET (360), BATCHES (1,32,256), SEQ (64), REPEATS (20), GPU_BENCH_ARGS (more
# gpu_bench.py flags, e.g. "--modes eager:fp32,cudagraphs:bf16"), PYTHON (python3), and, to check this install
# path on a machine without a GPU (see bench/gpu_wheels.sh): GPU_BENCH_CPU_SMOKE=1 (the tiny CPU mode),
# GPU_BENCH_WHEELS (.whl) and GPU_BENCH_SITE (/tmp/site).
#
# Every inline Python runs with -P: from the repository root, `python -m`/`-c`/`-` would put the root on sys.path,
# where its operator/ folder shadows the stdlib module (`python3.12 -m pip` dies on `from operator import eq`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=${GPU_BENCH_SITE:-/tmp/site}
WHEELS=${GPU_BENCH_WHEELS:-.whl}
BUDGET=${BUDGET:-360}
if [[ -n "${OUT:-}" ]]; then  # the whole session's output comes back with the report
    mkdir -p "$OUT"
    exec > >(tee "$OUT/gpu-bench.log") 2>&1
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
    TOKENIZERS_PARALLELISM=false PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1

shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if ((${#wheels[@]})); then
    echo "installing ${#wheels[@]} wheels into $SITE (offline)"
    "$PY" -P -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    # The working tree's sources over the wheel's, following pyproject's package-dir (train/ -> fusionrec/train).
    "$PY" -P - "$SITE" <<'EOF'
import filecmp, shutil, sys, tomllib
from pathlib import Path

site = Path(sys.argv[1])
mapping = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
copied = []
for package, folder in mapping.items():
    for source in Path(folder).rglob("*"):
        if source.suffix not in {".py", ".yaml", ".json", ".typed"} or "__pycache__" in source.parts:
            continue
        target = site / package.replace(".", "/") / source.relative_to(folder)
        if not target.is_file() or not filecmp.cmp(source, target, shallow=False):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            copied.append(str(source))
print(f"fusionrec sources: {len(copied)} files of the working tree differ from the wheel's"
      + (f" (copied: {', '.join(copied[:8])}{' ...' if len(copied) > 8 else ''})" if copied else ""))
EOF
else
    echo "no $WHEELS/*.whl: using the packages already installed (run bench/gpu_wheels.sh here and carry .whl)"
fi
if [[ "${GPU_BENCH_CPU_SMOKE:-0}" == 1 ]]; then
    args=(--device cpu --tiny --threads 2)
    need_cuda=0
else
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
    args=(--device cuda --batches "${BATCHES:-1,32,256}")
    need_cuda=1
fi
# Fails fast on a broken install or a missing GPU, and shows which fusionrec is imported (the installed one,
# not the repository's fusionrec/ folder).
"$PY" -P -c "
import sys
import fusionrec, fusionrec.compile.graphs, fusionrec.compile.torch_backend, pydantic, torch, transformers
print(f'fusionrec from {fusionrec.__file__}; torch {torch.__version__}, transformers {transformers.__version__}, '
      f'pydantic {pydantic.__version__}; CUDA available: {torch.cuda.is_available()}')
if sys.argv[1] == '1' and not torch.cuda.is_available():
    sys.exit('torch sees no CUDA device')" "$need_cuda"
# SIGINT first: gpu_bench.py writes its report on KeyboardInterrupt; SIGKILL 20 s later if it does not exit.
# shellcheck disable=SC2086  # GPU_BENCH_ARGS is a list of flags
timeout -s INT -k 20 "$((BUDGET + 45))" "$PY" bench/gpu_bench.py "${args[@]}" --seq "${SEQ:-64}" \
    --repeats "${REPEATS:-20}" --budget "$BUDGET" ${GPU_BENCH_ARGS:-}
