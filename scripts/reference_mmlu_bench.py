"""Reference timing for `layerprune bench mmlu`: Hugging Face transformers doing one forward pass
per question (the full few-shot prompt, batch 1), predicting the answer from the log-probabilities
of the continuation tokens at the last prompt position.

Usage: python reference_mmlu_bench.py MODEL PROMPTS_JSON THREADS
PROMPTS_JSON holds {"questions": [{"context": [ids], "choices": [id, id, id, id]}, ...]}.
Prints one JSON line: {"seconds": ..., "tokens": ..., "preds": [...], "logps": [[4 floats], ...]}.
"""
import json
import os
import sys
import time


def main():
    model_path, prompts_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    # a GGUF by name or by its magic bytes (a file joined from parts keeps its parts' name)
    is_gguf = model_path.endswith(".gguf") or (
        os.path.isfile(model_path) and open(model_path, "rb").read(4) == b"GGUF"
    )
    if is_gguf:
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(model_path), gguf_file=os.path.basename(model_path), dtype=torch.float32
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.eval()
    questions = json.load(open(prompts_path))["questions"]
    preds = []
    logps = []
    tokens = 0
    with torch.inference_mode():
        model(torch.tensor([questions[0]["context"][:8]]))  # warm-up
        start = time.perf_counter()
        for q in questions:
            ids = torch.tensor([q["context"]])
            tokens += ids.numel()
            logp = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
            choice_logp = logp[q["choices"]]
            preds.append(int(torch.argmax(choice_logp)))
            logps.append([float(x) for x in choice_logp])
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "tokens": tokens, "preds": preds, "logps": logps}))


if __name__ == "__main__":
    main()
