#!/usr/bin/env python3
"""Writes the fuzzing seed corpus under tests/fixtures/fuzz/<target>/ (see src/fuzzing.rs).

Small, valid inputs written by references no one here wrote: GGUF files by llama.cpp's own
`gguf` package (tiny Llama/Qwen2/Gemma-3 blocks in F32, F16, Q8_0, Q4_0, Q4_K; BPE and
SentencePiece vocabularies), safetensors files by the `safetensors` package, and the test
fixtures' config.json / tokenizer.json. Usage: pip install gguf numpy safetensors; then
python tools/make_fuzz_seeds.py (deterministic: seeded, re-running rewrites the same bytes).
"""

import json
import pathlib
import shutil

import gguf
import numpy as np
from safetensors.numpy import save_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "fuzz"
HIDDEN, FFN, HEADS, KV_HEADS, VOCAB = 32, 32, 2, 1, 8
rng = np.random.default_rng(7)


def weights(shape):
    return rng.standard_normal(shape).astype(np.float32) * 0.1



K_QUANTS = {gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K}


def write_gguf(path, arch, qtype, spm, head_dim=None):
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    head_dim = head_dim or HIDDEN // HEADS
    if arch == "gemma3" or head_dim != HIDDEN // HEADS:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_rope_dimension_count(head_dim)
    if arch == "gemma3":
        w.add_sliding_window(16)
    if spm:
        tokens = ["<unk>", "<s>", "</s>", "<0x41>", "\u2581a", "\u2581b", "ab", "\u2581ab"]
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores([0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0])
        w.add_token_types([2, 3, 3, 6, 1, 1, 1, 1])
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
    else:
        tokens = ["<|endoftext|>", "a", "b", "\u0120", "ab", "\u0120a", "\u0120ab", "ba"]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(tokens)
        w.add_token_types([3, 1, 1, 1, 1, 1, 1, 1])
        w.add_token_merges(["a b", "\u0120 a", "\u0120a b", "b a"])
        w.add_eos_token_id(0)
    shapes = {
        "token_embd.weight": (VOCAB, HIDDEN),
        "output_norm.weight": (HIDDEN,),
        "blk.0.attn_norm.weight": (HIDDEN,),
        "blk.0.attn_q.weight": (HEADS * head_dim, HIDDEN),
        "blk.0.attn_k.weight": (KV_HEADS * head_dim, HIDDEN),
        "blk.0.attn_v.weight": (KV_HEADS * head_dim, HIDDEN),
        "blk.0.attn_output.weight": (HIDDEN, HEADS * head_dim),
        "blk.0.ffn_norm.weight": (HIDDEN,),
        "blk.0.ffn_gate.weight": (FFN, HIDDEN),
        "blk.0.ffn_up.weight": (FFN, HIDDEN),
        "blk.0.ffn_down.weight": (HIDDEN, FFN),
    }
    if arch == "qwen2":
        shapes["blk.0.attn_q.bias"] = (HEADS * head_dim,)
        shapes["blk.0.attn_k.bias"] = (KV_HEADS * head_dim,)
        shapes["blk.0.attn_v.bias"] = (KV_HEADS * head_dim,)
    if arch == "gemma3":
        shapes["blk.0.attn_q_norm.weight"] = (head_dim,)
        shapes["blk.0.attn_k_norm.weight"] = (head_dim,)
        shapes["blk.0.post_attention_norm.weight"] = (HIDDEN,)
        shapes["blk.0.post_ffw_norm.weight"] = (HIDDEN,)
    for name, shape in shapes.items():
        if len(shape) == 2 and qtype in K_QUANTS and shape[1] % 256 == 0:
            # The gguf package dequantizes K-quants but cannot quantize them: random blocks.
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            raw = rng.integers(0, 256, size=(shape[0], shape[1] // block * size), dtype=np.uint8)
            w.add_tensor(name, raw, raw_dtype=qtype)
        elif len(shape) == 2 and qtype in K_QUANTS:
            w.add_tensor(name, weights(shape).astype(np.float16))
        elif len(shape) == 2 and qtype != gguf.GGMLQuantizationType.F32:
            data = gguf.quants.quantize(weights(shape), qtype)
            w.add_tensor(name, data, raw_dtype=qtype)
        else:
            w.add_tensor(name, weights(shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    for target in ["gguf", "safetensors", "config", "tokenizer_json", "data"]:
        (OUT / target).mkdir(parents=True)

    Q = gguf.GGMLQuantizationType
    for arch, qtype, spm in [
        ("llama", Q.F32, False),
        ("llama", Q.Q8_0, True),
        ("llama", Q.Q4_0, False),
        ("llama", Q.Q5_1, True),
        ("qwen2", Q.F16, False),
        ("gemma3", Q.Q8_0, True),
    ]:
        write_gguf(OUT / "gguf" / f"{arch}-{qtype.name.lower()}.gguf", arch, qtype, spm)
    # K-quants need 256-element rows: a wider residual with narrow heads and FFN keeps it small
    # (the matrices whose rows are narrower stay F16).
    global HIDDEN
    HIDDEN = 256
    write_gguf(OUT / "gguf" / "llama-q4_k.gguf", "llama", Q.Q4_K, False, head_dim=16)
    write_gguf(OUT / "gguf" / "llama-q6_k.gguf", "llama", Q.Q6_K, True, head_dim=16)
    HIDDEN = 32

    # Tensors matching src/fuzzing.rs's tiny config (hidden 8, vocab 16, 1 layer, 2 heads of 4).
    h, v, f, kv = 8, 16, 8, 4
    tensors = {
        "model.embed_tokens.weight": (v, h),
        "model.norm.weight": (h,),
        "model.layers.0.input_layernorm.weight": (h,),
        "model.layers.0.self_attn.q_proj.weight": (h, h),
        "model.layers.0.self_attn.k_proj.weight": (kv, h),
        "model.layers.0.self_attn.v_proj.weight": (kv, h),
        "model.layers.0.self_attn.o_proj.weight": (h, h),
        "model.layers.0.post_attention_layernorm.weight": (h,),
        "model.layers.0.mlp.gate_proj.weight": (f, h),
        "model.layers.0.mlp.up_proj.weight": (f, h),
        "model.layers.0.mlp.down_proj.weight": (h, f),
    }
    for dtype in [np.float32, np.float16]:
        arrays = {n: weights(s).astype(dtype) for n, s in tensors.items()}
        save_file(arrays, str(OUT / "safetensors" / f"tiny-{np.dtype(dtype).name}.safetensors"))
    save_file({"x": np.zeros((2, 3), np.float32)}, str(OUT / "safetensors" / "one-tensor.safetensors"))

    fixtures = ROOT / "tests" / "fixtures"
    for name in ["llama", "gemma3", "qwen3", "phi3", "hetero_llama", "hetero_gemma3", "mistral"]:
        shutil.copy(fixtures / name / "config.json", OUT / "config" / f"{name}.json")
    decilm = json.loads((fixtures / "llama" / "config.json").read_text())
    decilm.update(
        model_type="nemotron-nas",
        block_configs=[
            {"attention": {"no_op": False, "n_heads_in_group": 3}, "ffn": {"ffn_mult": 1.3}},
            {"attention": {"no_op": True}, "ffn": {"intermediate_size": 17}},
            {"attention": {"no_op": False, "window_length": 8}, "ffn": {"no_op": True}},
        ],
        twossp_zero_attention=[1],
    )
    (OUT / "config" / "decilm.json").write_text(json.dumps(decilm, indent=1))
    for name in ["llama", "gemma3"]:
        shutil.copy(fixtures / name / "tokenizer.json", OUT / "tokenizer_json" / f"{name}.json")
    (OUT / "data" / "docs.jsonl").write_text(
        '{"text": "First document."}\n\n{"text": "Second, with \\u00e9 and \\n."}\n'
    )
    (OUT / "data" / "plain.txt").write_text("One plain document.\nTwo lines.\n")


if __name__ == "__main__":
    main()
