#!/usr/bin/env bash
# GPU readiness in one run of at most 10 minutes on one GPU; writes bench/results/gpu.json.
#   bench/gpu_check.sh                      # the GPU torch and FAISS see first
#   CUDA_VISIBLE_DEVICES=3 bench/gpu_check.sh
#   PYTHON=.venv/bin/python bench/gpu_check.sh --only spt_200k_64 tiny_gpu
# Sections and their limits: bench/gpu_check.py. Exit status 0 only if every section passed;
# without a CUDA device it records why in gpu.json and exits 1 without running anything.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader || true
else
  echo "[gpu_check] nvidia-smi not found: torch decides whether a GPU is visible"
fi
# The whole check is bounded; each section has its own, smaller limit inside.
exec timeout --kill-after=10 600 "$PYTHON" bench/gpu_check.py "$@"
