"""Reference timing for `layerprune bench forward`: Hugging Face transformers on the same model
file and the same token ids, keeping every layer's hidden states (output_hidden_states=True).

Usage: python reference_forward_bench.py MODEL TOKENS_JSON BATCH THREADS
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
    rows = json.load(open(tokens_path))["rows"]
    ids = torch.tensor(rows, dtype=torch.long)
    with torch.inference_mode():
        model(ids[:1, :8], output_hidden_states=True)  # warm-up
        start = time.perf_counter()
        for i in range(0, len(rows), batch):
            model(ids[i : i + batch], output_hidden_states=True)
        seconds = time.perf_counter() - start
    tokens = ids.numel()
    print(json.dumps({"tokens_per_s": tokens / seconds, "seconds": seconds, "tokens": tokens}))


if __name__ == "__main__":
    main()
