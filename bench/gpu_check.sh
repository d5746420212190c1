#!/usr/bin/env bash
# GPU readiness in at most 8 minutes on one GPU (sections and budgets: bench/gpu_check.py).
#   bench/gpu_check.sh --dry-run                     # the plan with each section's budget; writes nothing
#   bench/gpu_check.sh --out "$OUT/gpu.json"         # results file rewritten after every section
#   CUDA_VISIBLE_DEVICES=3 bench/gpu_check.sh --only spt_200k_64 resume --out /tmp/gpu.json
#   bench/gpu_check.sh --wheelhouse .whl --out "$OUT/gpu.json"   # first install carried wheels
# Without --out a GPU run writes bench/results/gpu.json; without a CUDA device nothing is written.
# Exit status 0 only if every section passed; the last lines are a table of the sections.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}"
if [ "${1:-}" = "--wheelhouse" ]; then
  # Wheels carried to a machine without a package index (bench/gpu_wheelhouse.sh makes them).
  site="${TMPDIR:-/tmp}/egra-gpu-check-site"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "$2"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  shift 2
fi
# The project from this checkout, installed or not.
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,compute_cap,memory.total,driver_version --format=csv,noheader || true
else
  echo "[gpu_check] nvidia-smi not found: torch decides whether a GPU is visible"
fi
# The sections' budgets add up to at most 480 s and the driver stops itself there; this is the
# safety net (SIGTERM makes the driver kill the running section's process group and save).
exec timeout --kill-after=15 500 "$PYTHON" bench/gpu_check.py "$@"
