#!/usr/bin/env bash
# The device check for a lent GPU machine (a few minutes). Run from the repository root there,
# with the release binary built on a CPU machine and carried along:
#
#   CUDARC_CUDA_VERSION=13000 cargo build --release --features cuda    # here (links without CUDA)
#   scripts/gpu_check.sh                                                 # there
#
# It writes $OUT/gpu-check.json (OUT defaults to .): the tiny fixtures on the GPU against the same
# binary's flex backend in f32, bf16 and f16 (tolerances in the report), three LoRA steps on a
# dense and an NF4 base, forward and LoRA-step tokens/s on a model of SmolLM2-135M's shape, and,
# when a Python with torch (+ transformers, peft, bitsandbytes) sees the GPU, PyTorch's tokens/s
# for the same work. Exit code: 0 passed, 1 a check failed, 2 no usable CUDA device.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${LAYERPRUNE_BIN:-target/release/layerprune}
OUT=${OUT:-.}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/nvidia-smi.csv" 2>&1 || true
if [ -z "${LAYERPRUNE_REF_PYTHON:-}" ] && python3 -c "import torch, transformers; assert torch.cuda.is_available()" 2>/dev/null; then
  export LAYERPRUNE_REF_PYTHON=python3
fi
timeout 290 "$BIN" bench gpu --backend cuda --out "$OUT/gpu-check.json" 2>"$OUT/gpu-check.log"
code=$?
tail -n 20 "$OUT/gpu-check.log"
exit $code
