#!/usr/bin/env bash
# The benchmark commands behind the README's Speed table, one after another (run on an idle
# machine: each command times both sides in one run, so only their ratio compares across days).
# Needs LAYERPRUNE_REF_PYTHON (torch, transformers, gguf, peft, bitsandbytes) for the reference
# side; prints every command line and its output.
#
#   LAYERPRUNE_REF_PYTHON=/path/to/python scripts/speed_table.sh [path/to/layerprune] | tee speed.log
set -euo pipefail
bin=${1:-target/release/layerprune}
: "${LAYERPRUNE_REF_PYTHON:?set LAYERPRUNE_REF_PYTHON to a Python with torch + transformers + gguf + peft + bitsandbytes}"
export LAYERPRUNE_REF_PYTHON
run() {
  echo "\$ layerprune $*"
  RUST_LOG=warn "$bin" "$@"
  echo
}
date -u
lscpu | grep -E 'Model name|^CPU\(s\)' || true
run bench forward
run bench similarity
run bench mmlu --shots 0
run bench mmlu
run bench heal
run bench sweep
date -u
