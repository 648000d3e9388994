"""Reference timing for `layerprune bench heal`: PyTorch + PEFT LoRA optimizer steps on the same
batch (float32, dense frozen base, LoRA on gate/up/down, AdamW), one warm-up step, then timed.

Usage: python reference_heal_bench.py MODEL BATCH_JSON RANK STEPS THREADS
BATCH_JSON holds {"rows": [[ids...], ...]} (equal lengths).
Prints one JSON line: {"seconds_per_step": ..., "tokens_per_s": ..., "loss": ...}.
"""
import json
import os
import sys
import time


def main():
    model_path, batch_path, rank, steps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if model_path.endswith(".gguf"):
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(model_path), gguf_file=os.path.basename(model_path), dtype=torch.float32
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.05, target_modules=["gate_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    model.train()
    ids = torch.tensor(json.load(open(batch_path))["rows"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad()
        return float(loss)

    step()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    seconds = (time.perf_counter() - start) / steps
    print(json.dumps({"seconds_per_step": seconds, "tokens_per_s": ids.numel() / seconds, "loss": loss}))


if __name__ == "__main__":
    main()
