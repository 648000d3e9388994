#!/usr/bin/env bash
# `cache import` scales linearly: bundles of N cheap artifacts (the test-value stage, one small
# file each) made by a sweep, exported, then imported into an empty cache and timed, for
# N = 2000, 4000, 8000; prints seconds per 1000 artifacts at each N (flat = linear).
# Usage: scripts/bench_import.sh [path/to/layerprune]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/release/layerprune}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export LAYERPRUNE_TEST_STAGES=1
echo "| artifacts | import seconds | seconds per 1000 |"
echo "| --- | --- | --- |"
for n in 2000 4000 8000; do
  d="$work/$n"
  mkdir -p "$d"
  values=$(seq -s, 1 "$n")
  printf 'name = "many"\n[sweep]\nx = [%s]\n[stages.v]\nkind = "test-value"\nvalue = "${x}"\n' "$values" >"$d/p.toml"
  (cd "$d" && "$BIN" --cache-dir src-cache run p.toml >/dev/null 2>&1)
  (cd "$d" && "$BIN" --cache-dir src-cache cache export p.toml --out bundle.zip >/dev/null)
  start=$(date +%s.%N)
  (cd "$d" && "$BIN" --cache-dir dst-cache cache import bundle.zip >/dev/null)
  end=$(date +%s.%N)
  awk -v n="$n" -v s="$start" -v e="$end" 'BEGIN { t = e - s; printf "| %d | %.2f | %.3f |\n", n, t, t / n * 1000 }'
done
