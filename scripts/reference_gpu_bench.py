"""Reference timing for `layerprune bench gpu`: PyTorch (transformers, peft, bitsandbytes) on the
same GPU, the same model directory and the same token ids.

Usage: python reference_gpu_bench.py MODEL_DIR TOKENS_JSON
TOKENS_JSON holds {"forward": [[ids...]...], "heal": [[ids...]...], "batch": B}.
Prints one JSON line: tokens/s keyed "forward f32", "forward bf16", "LoRA step f32",
"LoRA step f32 nf4", "LoRA step bf16", "LoRA step bf16 nf4" (those that could run), and "notes".
The forward pass keeps every hidden state (output_hidden_states=True, as PruneMe does); a LoRA
step is rank 4, alpha 8, on the MLP projections, AdamW lr 1e-3, clipping at 1.0, as layerprune's.
"""
import json
import sys
import time


def sync(torch):
    torch.cuda.synchronize()


def forward_tps(torch, model, rows, batch):
    ids = torch.tensor(rows, dtype=torch.long, device="cuda")
    with torch.inference_mode():
        model(ids[:1, :8], output_hidden_states=True)
        sync(torch)
        start = time.perf_counter()
        for i in range(0, len(rows), batch):
            model(ids[i : i + batch], output_hidden_states=True)
        sync(torch)
    return ids.numel() / (time.perf_counter() - start)


def lora_tps(torch, model, rows, steps=3):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, cfg)
    ids = torch.tensor(rows, dtype=torch.long, device="cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)

    def step():
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()

    step()
    sync(torch)
    start = time.perf_counter()
    for _ in range(steps - 1):
        step()
    sync(torch)
    return ids.numel() * (steps - 1) / (time.perf_counter() - start)


def main():
    model_dir, tokens_path = sys.argv[1], sys.argv[2]
    import torch
    from transformers import AutoModelForCausalLM

    data = json.load(open(tokens_path))
    out, notes = {}, []
    for name, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
        try:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to("cuda").eval()
            out[f"forward {name}"] = forward_tps(torch, model, data["forward"], data["batch"])
            model.train()
            out[f"LoRA step {name}"] = lora_tps(torch, model, data["heal"])
            del model
        except Exception as e:  # a missing package or device is reported, not fatal
            notes.append(f"{name}: {type(e).__name__}: {e}")
        try:
            from transformers import BitsAndBytesConfig

            q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
            model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=q, dtype=dtype, device_map={"": 0})
            out[f"LoRA step {name} nf4"] = lora_tps(torch, model, data["heal"])
            del model
        except Exception as e:
            notes.append(f"{name} nf4: {type(e).__name__}: {e}")
        torch.cuda.empty_cache()
    out["notes"] = notes
    print(json.dumps(out))


if __name__ == "__main__":
    main()
