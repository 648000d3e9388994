"""Load layerprune's Hugging Face exports of GGUF-sourced pruned models in transformers and
compare their logits with transformers' own pruned models.

Usage:
    LAYERPRUNE_KEEP_EXPORTS=/tmp/exports cargo test --release --test families gguf_
    python scripts/check_export_in_transformers.py /tmp/exports [tests/fixtures/reference]

Each folder EXPORTS/NAME is compared with REFERENCE/NAME-gguf-pruned.safetensors (written by
tests/fixtures/make_fixtures.py, part "gguf-pruned"): the exported config.json and weights are
read by AutoModelForCausalLM as they are, and the relative error (max |diff| / max |reference|
over the real positions) must be below 1e-4. Exits 1 if any export fails to load or differs.
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main() -> int:
    exports = Path(sys.argv[1])
    refs = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).parent.parent / "tests/fixtures/reference"
    failed = 0
    dirs = sorted(p for p in exports.iterdir() if (p / "config.json").exists())
    if not dirs:
        print(f"no exports under {exports}")
        return 1
    for d in dirs:
        ref = load_file(str(refs / f"{d.name}-gguf-pruned.safetensors"))
        try:
            model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager").eval()
        except Exception as e:  # report every export, not only the first failure
            print(f"{d.name}: transformers cannot load it: {e}")
            failed += 1
            continue
        with torch.no_grad():
            logits = model(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"]).logits
        m = ref["attention_mask"].bool()
        want = ref["logits"][m]
        err = float((logits[m] - want).abs().max() / want.abs().max())
        ok = err < 1e-4
        failed += not ok
        print(f"{d.name}: {type(model).__name__}, {model.config.num_hidden_layers} layers, "
              f"relative error {err:.2e} {'ok' if ok else 'FAIL'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
