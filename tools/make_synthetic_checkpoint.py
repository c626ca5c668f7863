#!/usr/bin/env python3
"""Write a checkpoint folder of a given config's shapes with seeded random bf16 weights.

Streams tensor by tensor into `model.safetensors` (never the whole model in memory), so a
Llama-2-7B shape (13.5 GB in bf16) is written on a machine with far less RAM. Used to measure the
exporter's and the engine's memory on a real-size checkpoint:

    python tools/make_synthetic_checkpoint.py --config configs/llama-2-7b.json --out /tmp/llama7b-bf16

With `--tokenizer-from models/SmolLM2-135M-Instruct.Q4_1 --vocab-size 49152` the folder evaluates
and prunes on real text (the embedding and head get SmolLM2's vocabulary; BENCHMARKS §10).

Weights are N(0, 0.02) (norms 1.0), seeded by --seed; needs numpy. The folder also gets the
config (dtype bfloat16) and, when --tokenizer-from is given, that folder's tokenizer files.
"""
import argparse
import json
import shutil
import struct
from pathlib import Path

import numpy as np


def tensors(cfg):
    h, v, L = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    nh = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", nh)
    hd = cfg.get("head_dim", h // nh)
    ff = cfg["intermediate_size"]
    yield "model.embed_tokens.weight", (v, h), False
    for i in range(L):
        p = f"model.layers.{i}"
        yield f"{p}.input_layernorm.weight", (h,), True
        yield f"{p}.self_attn.q_proj.weight", (nh * hd, h), False
        yield f"{p}.self_attn.k_proj.weight", (kv * hd, h), False
        yield f"{p}.self_attn.v_proj.weight", (kv * hd, h), False
        yield f"{p}.self_attn.o_proj.weight", (h, nh * hd), False
        yield f"{p}.post_attention_layernorm.weight", (h,), True
        yield f"{p}.mlp.gate_proj.weight", (ff, h), False
        yield f"{p}.mlp.up_proj.weight", (ff, h), False
        yield f"{p}.mlp.down_proj.weight", (h, ff), False
    yield "model.norm.weight", (h,), True
    if not cfg.get("tie_word_embeddings", False):
        yield "lm_head.weight", (v, h), False


def bf16_bytes(rng, shape, norm):
    n = int(np.prod(shape))
    if norm:
        x = np.ones(n, dtype=np.float32)
    else:
        x = rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
    bits = x.view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
    return rounded.tobytes()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer-from", help="copy tokenizer files from this folder")
    ap.add_argument("--vocab-size", type=int,
                    help="override the config's vocab_size (to fit the --tokenizer-from vocabulary)")
    a = ap.parse_args()
    cfg = json.load(open(a.config))
    if a.vocab_size:
        cfg["vocab_size"] = a.vocab_size
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=False)
    specs = list(tensors(cfg))
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, _ in specs:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    rng = np.random.default_rng(a.seed)
    with open(out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for name, shape, norm in specs:
            f.write(bf16_bytes(rng, shape, norm))
    cfg = dict(cfg, dtype="bfloat16", torch_dtype="bfloat16")
    (out / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    if a.tokenizer_from:
        for name in ["tokenizer.json", "tokenizer_config.json", "tokenizer.gguf"]:
            src = Path(a.tokenizer_from) / name
            if src.exists():
                shutil.copy(src, out / name)
    print(f"wrote {out} ({offset / 1e9:.2f} GB of bf16 weights, {len(specs)} tensors)")


if __name__ == "__main__":
    main()
