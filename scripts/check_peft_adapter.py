"""Check that a layerprune healing adapter loads in PEFT onto its pruned model.

Usage: python check_peft_adapter.py PRUNED_MODEL_DIR ADAPTER_DIR [MERGED_DIR]

PRUNED_MODEL_DIR is the prune artifact's Hugging Face export (`export = true`, its `model/`
folder); ADAPTER_DIR the heal artifact's `adapter/`. Loads the model with transformers, the adapter
with peft.PeftModel.from_pretrained, checks that every LoRA tensor of the file was loaded, and
prints the validation loss of a short text with and without the adapter. With MERGED_DIR (the heal
artifact's `merged/`, written with `merge = true`), also checks that PEFT's merge_and_unload gives
the same logits as layerprune's merged export.
"""
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

TEXT = (
    "The Congress shall have power to lay and collect taxes, duties, imposts and excises, to pay the debts "
    "and provide for the common defence and general welfare of the United States."
)


def loss(model, ids):
    with torch.no_grad():
        return float(model(ids, labels=ids).loss)


def main():
    base_dir, adapter_dir = sys.argv[1], sys.argv[2]
    merged_dir = sys.argv[3] if len(sys.argv) > 3 else None
    tok = AutoTokenizer.from_pretrained(base_dir)
    ids = tok(TEXT, return_tensors="pt").input_ids
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    before = loss(base, ids)
    model = PeftModel.from_pretrained(base, adapter_dir)
    state = model.state_dict()
    saved = load_file(f"{adapter_dir}/adapter_model.safetensors")
    for name, t in saved.items():
        key = name.replace(".weight", ".default.weight")
        assert key in state, f"{name} was not loaded"
        assert torch.equal(state[key].cpu(), t), f"{name} differs after loading"
    after = loss(model, ids)
    print(f"adapter loaded: {len(saved)} LoRA tensors; loss without adapter {before:.4f}, with adapter {after:.4f}")
    if merged_dir:
        merged = model.merge_and_unload()
        ours = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
        with torch.no_grad():
            diff = (merged(ids).logits - ours(ids).logits).abs().max().item()
        print(f"max |logit difference| PEFT merge_and_unload vs layerprune merged export: {diff:.2e}")
        assert diff < 1e-3


if __name__ == "__main__":
    main()
