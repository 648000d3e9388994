"""Reference timing for `layerprune bench forward`: Hugging Face transformers on the same model
file and the same token ids, keeping every layer's hidden states (output_hidden_states=True).

Usage: python reference_forward_bench.py MODEL TOKENS_JSON BATCH THREADS [full|stack]
"full" (default) runs the whole causal LM as PruneMe does (LM head at every position); "stack"
runs the decoder stack only (model.model: embedding, layers, final norm; no LM head), the same
work as layerprune's pass.
MODEL is a .gguf file (loaded with transformers' GGUF support, dequantised to float32) or a
Hugging Face model directory. TOKENS_JSON holds {"rows": [[ids...], ...]} (equal lengths).
Prints one JSON line: {"tokens_per_s": ..., "seconds": ..., "tokens": ...}.
"""
import json
import os
import sys
import time


def main():
    model_path, tokens_path, batch, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    mode = sys.argv[5] if len(sys.argv) > 5 else "full"
    assert mode in ("full", "stack"), mode
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    if model_path.endswith(".gguf"):
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(model_path), gguf_file=os.path.basename(model_path), dtype=torch.float32
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.eval()
    run = model if mode == "full" else model.model
    rows = json.load(open(tokens_path))["rows"]
    ids = torch.tensor(rows, dtype=torch.long)
    with torch.inference_mode():
        run(ids[:1, :8], output_hidden_states=True)  # warm-up
        start = time.perf_counter()
        for i in range(0, len(rows), batch):
            run(ids[i : i + batch], output_hidden_states=True)
        seconds = time.perf_counter() - start
    tokens = ids.numel()
    print(json.dumps({"tokens_per_s": tokens / seconds, "seconds": seconds, "tokens": tokens}))


if __name__ == "__main__":
    main()
