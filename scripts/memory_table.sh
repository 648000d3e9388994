#!/usr/bin/env bash
# The README's device-memory table for the paper's configurations: `layerprune plan`'s estimate
# of each job kind's peak on the pipeline's backend (bf16; healing in NF4 at the paper's
# micro-batch and sequence length, one graph and checkpointed, and at micro_batch = 1 in one
# graph), for the largest model each job runs (the unpruned model; healing: the least-pruned
# point), planned against the paper's 40 GB GPU (`memory_limit = 40GiB`: settings on "auto", as
# `stream_weights`, are chosen to fit it).
# Usage: scripts/memory_table.sh [path/to/layerprune]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/layerprune}
est() { # pipeline, job label prefix, extra args -> the estimate column
  "$BIN" plan "$1" --set memory_limit=40GiB "${@:3}" 2>/dev/null | awk -v job="$2" '
    index($1, job) == 1 { for (i = 3; i <= NF; i++) if ($i ~ /^(MiB|GiB)$/) { print $(i-1) " " $i; exit } }'
}
echo "| pipeline | similarity | eval-qa (base) | eval-loss (base) | heal (paper's batch), checkpointed | heal, one graph | heal, one graph, micro_batch = 1 |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for f in pipelines/paper/*.toml; do
  mb=$(grep -E '^micro_batch' "$f" | head -1 | awk '{print $3}')
  seq=$(awk '/^\[stages.heal\]/{h=1} h && /^seq_len/{print $3; exit}' "$f")
  one=(--set stages.heal.gradient_checkpointing=false)
  echo "| $(basename "$f" .toml) | $(est "$f" similarity) | $(est "$f" 'eval[model=load]') | $(est "$f" 'loss[model=load]') | $(est "$f" 'heal[' --set stages.heal.gradient_checkpointing=true) (micro_batch $mb, seq $seq) | $(est "$f" 'heal[' "${one[@]}") | $(est "$f" 'heal[' "${one[@]}" --set stages.heal.micro_batch=1) |"
done
