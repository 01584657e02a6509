#!/usr/bin/env bash
# GPU benchmark of the fused 3-encoder tower for a session with a GPU (e.g. one H200): torch eager fp32 vs
# bf16 vs torch.compile + CUDA graphs at batch 1/32/256, and ONNX Runtime GPU if its CUDA provider is present.
# Installs nothing big: only transformers (pure Python, ~10 MB) if it is missing; weights are random.
# Runs in well under 10 minutes (slow modes are skipped past --budget); prints a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'" 
"$PY" -c "import transformers" 2>/dev/null || "$PY" -m pip install -q "transformers>=4.45"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 570 "$PY" bench/gpu_bench.py --batches "${BATCHES:-1,32,256}" --seq "${SEQ:-64}" --repeats "${REPEATS:-20}" \
    --budget "${BUDGET:-420}"
