"""Reference timing for `layerprune bench heal`: PyTorch + PEFT LoRA optimizer steps on the same
batch (float32 compute, frozen base dense or bitsandbytes NF4 with double quantisation as QLoRA
loads it, LoRA on gate/up/down, AdamW), one warm-up step, then timed; with "gc", transformers'
gradient checkpointing (model.gradient_checkpointing_enable(), non-reentrant, as PEFT's QLoRA
recipes turn it on).

Usage: python reference_heal_bench.py MODEL BATCH_JSON RANK STEPS THREADS [dense|nf4] [plain|gc]
BATCH_JSON holds {"rows": [[ids...], ...]} (equal lengths).
Prints one JSON line: {"seconds_per_step": ..., "tokens_per_s": ..., "loss": ...,
"peak_rss_bytes": ...} (the process's peak resident memory, loading included).
"""
import json
import os
import resource
import sys
import time


def main():
    model_path, batch_path, rank, steps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    base = sys.argv[6] if len(sys.argv) > 6 else "dense"
    checkpointing = len(sys.argv) > 7 and sys.argv[7] == "gc"
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
    if base == "nf4":
        # QLoRA's base: every linear of the blocks in bitsandbytes NF4 with double quantisation
        # (quantised when moved to the device), computing in float32 as layerprune's f32 run
        import bitsandbytes as bnb

        for layer in model.model.layers:
            for parent in (layer.self_attn, layer.mlp):
                for name, lin in list(parent.named_children()):
                    if not isinstance(lin, torch.nn.Linear):
                        continue
                    q = bnb.nn.Linear4bit(
                        lin.in_features, lin.out_features, bias=lin.bias is not None,
                        compute_dtype=torch.float32, quant_type="nf4", compress_statistics=True,
                    )
                    q.weight = bnb.nn.Params4bit(
                        lin.weight.data.clone(), requires_grad=False, quant_type="nf4", compress_statistics=True
                    )
                    if lin.bias is not None:
                        q.bias = torch.nn.Parameter(lin.bias.data.clone(), requires_grad=False)
                    setattr(parent, name, q.to("cpu"))
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.05, target_modules=["gate_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM")
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # the embedding is frozen: its output must take a gradient for the checkpointed blocks
        model.enable_input_require_grads()
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
    # ru_maxrss is in KiB on Linux
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds_per_step": seconds, "tokens_per_s": ids.numel() / seconds, "loss": loss, "peak_rss_bytes": peak}))


if __name__ == "__main__":
    main()
