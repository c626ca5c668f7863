#!/usr/bin/env python3
"""Independent checks of a folder written by `twossp_engine::gguf::import`.

Needs a Python environment with gguf (gguf-py), numpy, safetensors, torch, transformers, tokenizers.

  weights GGUF OUT        every tensor of OUT/model.safetensors equals gguf-py's dequantization of the
                          GGUF tensor (bit for bit) after the HF layout fix-ups (q/k unpermute, gemma norm - 1)
  ppl OUT TEXT            perplexity of HF transformers on OUT for the text file, plus a few next-token guesses
  hfgguf GGUF OUT TEXT    compares logits of OUT with transformers' own GGUF loader on the text
  llamappl OUT TEXT [--ctx 256 --chunks 8]
                          perplexity with llama-perplexity's protocol (chunks of ctx tokens, BOS in front when
                          the tokenizer adds one, only the second half of each chunk scored), to compare with
                          `llama-perplexity -m GGUF -f TEXT -c CTX --chunks N` on the quantized file
  tokens OUT TEXT [--llama-tokenize BIN --gguf GGUF]
                          Python `tokenizers` on OUT/tokenizer.json vs llama.cpp's llama-tokenize (per line)
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np


def gguf_to_hf_name(name, arch):
    """GGUF tensor name -> (HF name, kind) written independently of the Rust table."""
    top = {
        "token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
    }
    if name in top:
        return top[name]
    _, i, rest = name.split(".", 2)
    local = {
        "attn_norm.weight": "input_layernorm.weight",
        "attn_q.weight": "self_attn.q_proj.weight",
        "attn_k.weight": "self_attn.k_proj.weight",
        "attn_v.weight": "self_attn.v_proj.weight",
        "attn_output.weight": "self_attn.o_proj.weight",
        "attn_q.bias": "self_attn.q_proj.bias",
        "attn_k.bias": "self_attn.k_proj.bias",
        "attn_v.bias": "self_attn.v_proj.bias",
        "attn_q_norm.weight": "self_attn.q_norm.weight",
        "attn_k_norm.weight": "self_attn.k_norm.weight",
        "ffn_gate.weight": "mlp.gate_proj.weight",
        "ffn_up.weight": "mlp.up_proj.weight",
        "ffn_down.weight": "mlp.down_proj.weight",
        "ffn_norm.weight": "pre_feedforward_layernorm.weight" if arch == "gemma3" else "post_attention_layernorm.weight",
        "post_attention_norm.weight": "post_attention_layernorm.weight",
        "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    }[rest]
    return f"model.layers.{i}.{local}"


def field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def cmd_weights(args):
    import gguf
    from safetensors import safe_open

    r = gguf.GGUFReader(args.gguf)
    arch = field(r, "general.architecture")
    n_head = field(r, f"{arch}.attention.head_count")
    n_kv = field(r, f"{arch}.attention.head_count_kv") or n_head
    out = safe_open(str(Path(args.out) / "model.safetensors"), "np")
    seen = set()
    bad = 0
    for t in r.tensors:
        ref = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        ref = ref.reshape([int(d) for d in reversed(t.shape)])
        hf = gguf_to_hf_name(t.name, arch)
        if arch == "llama" and (".attn_q." in t.name or ".attn_k." in t.name):
            heads = n_head if ".attn_q." in t.name else n_kv
            rows = ref.shape[0]
            # GGUF rows of a head are (half, 2); HF rows are (2, half).
            ref = ref.reshape(heads, rows // heads // 2, 2, -1).swapaxes(1, 2).reshape(ref.shape)
        if arch == "gemma3" and t.name.endswith("norm.weight"):
            ref = ref - np.float32(1.0)
        mine = out.get_tensor(hf)
        seen.add(hf)
        same = mine.shape == ref.shape and np.array_equal(mine.view(np.uint32), ref.view(np.uint32))
        if not same:
            bad += 1
            diff = np.abs(mine.astype(np.float64) - ref).max() if mine.shape == ref.shape else "shape"
            print(f"MISMATCH {t.name} -> {hf} ({t.tensor_type.name}) shape {mine.shape} vs {ref.shape} max|d|={diff}")
    extra = set(out.keys()) - seen
    print(f"{len(r.tensors)} tensors compared, {bad} mismatches, {len(extra)} unexpected tensors {sorted(extra)[:5]}")
    types = sorted({t.tensor_type.name for t in r.tensors})
    print(f"tensor types covered: {', '.join(types)}")
    return 1 if bad or extra else 0


def load_hf(out):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    model.eval()
    return tok, model


def perplexity(model, ids):
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    nll = -logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    return float(torch.exp(nll.mean())), logits


def cmd_ppl(args):
    import torch

    tok, model = load_hf(args.out)
    text = Path(args.text).read_text()
    ids = tok(text)["input_ids"][: args.max_tokens]
    ppl, _ = perplexity(model, ids)
    print(f"tokens {len(ids)} first ids {ids[:6]} perplexity {ppl:.3f}")
    for prompt in ["The capital of France is", "One, two, three, four,", "The cat sat on the"]:
        p = tok(prompt)["input_ids"]
        with torch.no_grad():
            nxt = model(torch.tensor([p])).logits[0, -1]
        top = torch.topk(nxt, 5).indices.tolist()
        print(f"{prompt!r} -> {[tok.decode([i]) for i in top]}")
    return 0


def cmd_llamappl(args):
    import torch

    tok, model = load_hf(args.out)
    ids = tok(Path(args.text).read_text())["input_ids"]
    bos = tok.bos_token_id if tok("a")["input_ids"][0] == tok.bos_token_id else None
    ctx, first = args.ctx, args.ctx // 2
    nll, count = 0.0, 0
    for c in range(min(args.chunks, len(ids) // ctx)):
        chunk = list(ids[c * ctx : (c + 1) * ctx])
        if bos is not None:
            chunk[0] = bos
        with torch.no_grad():
            logits = model(torch.tensor([chunk])).logits[0].double()
        logp = torch.log_softmax(logits[first : ctx - 1], dim=-1)
        target = torch.tensor(chunk[first + 1 : ctx])
        nll += float(-logp[torch.arange(len(target)), target].sum())
        count += len(target)
    print(f"chunks {count // (ctx - 1 - first)}, scored tokens {count}, PPL = {np.exp(nll / count):.4f}")
    return 0


def cmd_hfgguf(args):
    import torch
    from transformers import AutoModelForCausalLM

    tok, mine = load_hf(args.out)
    gg = Path(args.gguf)
    ref = AutoModelForCausalLM.from_pretrained(str(gg.parent), gguf_file=gg.name, dtype=torch.float32)
    ref.eval()
    ids = tok(Path(args.text).read_text())["input_ids"][: args.max_tokens]
    p1, l1 = perplexity(mine, ids)
    p2, l2 = perplexity(ref, ids)
    print(f"ours ppl {p1:.4f}, transformers-gguf ppl {p2:.4f}, max |logit diff| {float((l1 - l2).abs().max()):.3e}")
    return 0


def llama_tokenize(binary, gguf_path, text):
    cmd = [binary, "-m", gguf_path, "--ids", "--no-escape", "--log-disable", "--stdin"]
    res = subprocess.run(cmd, input=text.encode(), capture_output=True, check=True)
    return json.loads(res.stdout.decode().strip().splitlines()[-1])


def cmd_tokens(args):
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(Path(args.out) / "tokenizer.json"))
    cfg = json.loads((Path(args.out) / "tokenizer_config.json").read_text())
    text = Path(args.text).read_text()
    chunks = [c for c in text.split("\n\n") if c] if args.chunks else [text]
    n_tok = mism = 0
    for c in chunks:
        ours = tk.encode(c, add_special_tokens=True).ids
        n_tok += len(ours)
        if args.llama_tokenize:
            ref = llama_tokenize(args.llama_tokenize, args.gguf, c)
            if ref != ours:
                mism += 1
                k = next((i for i, (a, b) in enumerate(zip(ref, ours)) if a != b), min(len(ref), len(ours)))
                print(f"MISMATCH in chunk {c[:40]!r}... at token {k}: llama {ref[k:k+6]} ours {ours[k:k+6]}")
                print(f"   llama: {[tk.id_to_token(i) for i in ref[max(0,k-2):k+6]]}")
                print(f"   ours : {[tk.id_to_token(i) for i in ours[max(0,k-2):k+6]]}")
    print(f"{len(chunks)} chunks, {n_tok} tokens, {mism} mismatching chunks, add_bos_token={cfg.get('add_bos_token')}")
    return 1 if mism else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("weights")
    w.add_argument("gguf")
    w.add_argument("out")
    p = sub.add_parser("ppl")
    p.add_argument("out")
    p.add_argument("text")
    p.add_argument("--max-tokens", type=int, default=1024)
    h = sub.add_parser("hfgguf")
    h.add_argument("gguf")
    h.add_argument("out")
    h.add_argument("text")
    h.add_argument("--max-tokens", type=int, default=256)
    lp = sub.add_parser("llamappl")
    lp.add_argument("out")
    lp.add_argument("text")
    lp.add_argument("--ctx", type=int, default=256)
    lp.add_argument("--chunks", type=int, default=8)
    t = sub.add_parser("tokens")
    t.add_argument("out")
    t.add_argument("text")
    t.add_argument("--llama-tokenize")
    t.add_argument("--gguf")
    t.add_argument("--chunks", action="store_true", help="tokenize each blank-line separated chunk separately")
    args = ap.parse_args()
    return {
        "weights": cmd_weights,
        "ppl": cmd_ppl,
        "llamappl": cmd_llamappl,
        "hfgguf": cmd_hfgguf,
        "tokens": cmd_tokens,
    }[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
