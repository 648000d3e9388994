#!/usr/bin/env bash
# Prepare the device check on this (CPU) machine: the release binary with the GPU backends,
# stripped and xz-compressed into .gpu/ (ignored by git). A lent GPU machine takes 64 MiB in
# all, working tree included, and the binary with burn-cuda and burn-wgpu is ~130 MB (102 MB
# stripped, ~15 MB compressed). Then, on the GPU machine, with .gpu carried:
#
#   scripts/gpu_check.sh          # finds .gpu/layerprune.xz and unpacks it
#
# FEATURES (default "cuda wgpu") chooses the backends; CUDARC_CUDA_VERSION (default 13000) the
# CUDA driver API cudarc targets. Exit 1 when the tree and the binary would not fit the 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
FEATURES=${FEATURES:-cuda wgpu}
LIMIT=$((64 * 1024 * 1024))
cargo build --release --features "$FEATURES"
mkdir -p .gpu
strip -o .gpu/layerprune target/release/layerprune
xz -9 -T0 -f .gpu/layerprune
# what travels: tracked files, untracked files git does not ignore, and .gpu
bytes() { du -cb --files0-from=- 2>/dev/null | tail -n 1 | cut -f1; }
tree=$(git ls-files -z | bytes)
untracked=$(git ls-files -z --others --exclude-standard | bytes)
payload=$(find .gpu -type f -print0 | bytes)
total=$(( ${tree:-0} + ${untracked:-0} + ${payload:-0} ))
printf 'tree %d MB + untracked %d MB + .gpu %d MB = %d MB of %d MB\n' \
  $((tree / 1000000)) $((${untracked:-0} / 1000000)) $((payload / 1000000)) $((total / 1000000)) $((LIMIT / 1000000))
if [ "$total" -gt "$LIMIT" ]; then
  echo "error: over the 64 MiB a device call carries; remove untracked files or build fewer backends (FEATURES=cuda)" >&2
  exit 1
fi
