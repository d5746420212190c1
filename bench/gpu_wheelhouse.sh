#!/usr/bin/env bash
# Wheels bench/gpu_check.sh needs on a GPU machine whose Python 3.12 has torch (CUDA 13) and
# lightning but no package index: hydra-core, omegaconf (+ antlr4), faiss-cpu. About 19 MB.
#   bench/gpu_wheelhouse.sh [DIR=.whl]   then, there:   bench/gpu_check.sh --wheelhouse DIR --out ...
# faiss-cpu, not faiss-gpu: faiss-gpu is a CUDA 12 wheel and such a machine's torch is CUDA 13.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-.whl}"
mkdir -p "$dir"
py=(--python-version 3.12 --implementation cp --only-binary=:all:
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
    --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps "${py[@]}" -d "$dir" hydra-core==1.3.8 omegaconf==2.3.1 faiss-cpu==1.15.1
# antlr4-python3-runtime 4.9.3 (omegaconf's parser) is published as a source archive only: build
# its pure-Python wheel here.
python3 -m pip wheel -q --no-deps -w "$dir" antlr4-python3-runtime==4.9.3
ls -la "$dir"
