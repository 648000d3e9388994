#!/usr/bin/env python3
"""Write a random-weight Llama model in Hugging Face layout (config.json, bf16 safetensors shards
with model.safetensors.index.json, a tokenizer.json copied from the tiny fixture), tensor by
tensor, so that a model far larger than this machine's memory in f32 can be written here.

    python3 scripts/make_random_model.py OUT_DIR [--shape llama-2-7b] [--layers N]

--shape llama-2-7b is Llama-2-7B's exact shape: 32 layers, hidden 4096, FFN 11008, 32 heads,
vocabulary 32000, untied head: 6,738,415,616 parameters, 13.5 GB in bf16. --layers keeps the
widths and changes the depth (a quick check of the pipeline around it). Weights: normal(0, 0.02)
(seeded per tensor), norms 1. The tokenizer (384 tokens, tests/fixtures/models/tiny-llama) only
turns text into ids; the values mean nothing. Needs numpy only; never committed (tests and CI do
not use it).
"""
import argparse
import json
import shutil
import struct
import sys
from pathlib import Path

try:
    import numpy as np
except ImportError:
    sys.exit("make_random_model.py needs numpy: pip install numpy (or set PYTHON to a Python that has it)")

SHAPES = {
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                       max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0),
}
SHARD_BYTES = 2 << 30
HERE = Path(__file__).resolve().parent


def tensors(c: dict):
    """(name, shape) in the order transformers' state dict lists them."""
    h, i, n = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    kv = c["num_key_value_heads"] * (h // c["num_attention_heads"])
    yield "model.embed_tokens.weight", (c["vocab_size"], h)
    for l in range(n):
        p = f"model.layers.{l}."
        yield p + "self_attn.q_proj.weight", (h, h)
        yield p + "self_attn.k_proj.weight", (kv, h)
        yield p + "self_attn.v_proj.weight", (kv, h)
        yield p + "self_attn.o_proj.weight", (h, h)
        yield p + "mlp.gate_proj.weight", (i, h)
        yield p + "mlp.up_proj.weight", (i, h)
        yield p + "mlp.down_proj.weight", (h, i)
        yield p + "input_layernorm.weight", (h,)
        yield p + "post_attention_layernorm.weight", (h,)
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (c["vocab_size"], h)


def bf16_bytes(name: str, shape: tuple, seed: int) -> bytes:
    """normal(0, 0.02) (1 for a norm) as bf16, rounded to nearest even."""
    if len(shape) == 1:
        x = np.ones(shape, dtype=np.float32)
    else:
        x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
        x *= np.float32(0.02)
    u = x.view(np.uint32)
    u = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return u.astype(np.uint16).tobytes()


def write_shard(path: Path, items: list) -> None:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, _ in items:
        size = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, _, data in items:
            f.write(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--shape", default="llama-2-7b", choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, default=None, help="layers (default: the shape's)")
    args = ap.parse_args()
    c = dict(SHAPES[args.shape])
    if args.layers is not None:
        if args.layers < 1:
            ap.error("--layers must be at least 1")
        c["num_hidden_layers"] = args.layers
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 1,
              "eos_token_id": 2, **c}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copy(HERE.parent / "tests/fixtures/models/tiny-llama/tokenizer.json", out / "tokenizer.json")
    all_tensors = list(tensors(c))
    shards, current, size = [], [], 0
    for k, (name, shape) in enumerate(all_tensors):
        nbytes = 2 * int(np.prod(shape))
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape, k))
        size += nbytes
    shards.append(current)
    weight_map, params = {}, 0
    for s, items in enumerate(shards):
        fname = f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors"
        data = [(name, shape, bf16_bytes(name, shape, 1000 + k)) for name, shape, k in items]
        write_shard(out / fname, data)
        for name, shape, _ in items:
            weight_map[name] = fname
            params += int(np.prod(shape))
        print(f"  {fname}: {len(items)} tensors", flush=True)
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 2 * params}, "weight_map": weight_map}, indent=2))
    print(f"{out}: {params:,} parameters, {2 * params / 1e9:.1f} GB (bf16)")


if __name__ == "__main__":
    main()
