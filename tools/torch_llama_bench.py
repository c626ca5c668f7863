#!/usr/bin/env python3
"""PyTorch peer for the CUDA engine: an eager Llama forward pass with random weights.

Builds a Llama-architecture model from a Hugging Face config.json with random weights
(seeded, normal std 0.02, norms 1) and measures, with plain PyTorch only (no transformers):

- perplexity and tokens/s over N random-token windows of --seq-len (1 warm-up window first;
  NLL from log-softmax in f32, computed by row chunks so the logits never exist whole),
- prefill time for --prefill-len tokens (default --seq-len) into a KV cache,
- greedy decode speed over --decode-steps tokens with that cache.

The forward pass follows HF transformers' LlamaForCausalLM: RMSNorm in f32, RoPE with the
half-split rotation, GQA by repeat_interleave, scaled_dot_product_attention, SwiGLU MLP,
untied or tied LM head. Weights use HF tensor names, so they load into LlamaForCausalLM as is.

    python3 tools/torch_llama_bench.py --config configs/llama-2-7b.json --seq-len 2048 \\
        --windows 8 --json out.json
    python3 tools/torch_llama_bench.py --config configs/smollm2-135m.json --seq-len 128 \\
        --windows 1 --device cpu          # smoke test without a GPU
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F


class Config:
    """The fields of an HF Llama config.json that the forward pass uses."""

    def __init__(self, raw):
        self.hidden = raw["hidden_size"]
        self.intermediate = raw["intermediate_size"]
        self.layers = raw["num_hidden_layers"]
        self.heads = raw["num_attention_heads"]
        self.kv_heads = raw.get("num_key_value_heads") or self.heads
        self.head_dim = raw.get("head_dim") or self.hidden // self.heads
        self.vocab = raw["vocab_size"]
        self.eps = raw.get("rms_norm_eps", 1e-6)
        rope = raw.get("rope_parameters") or {}
        self.rope_theta = raw.get("rope_theta", rope.get("rope_theta", 10000.0))
        self.tie = raw.get("tie_word_embeddings", False)
        if raw.get("rope_scaling") or rope.get("rope_type", "default") != "default":
            print("warning: RoPE scaling is ignored (plain RoPE)")


class Llama:
    """Random-weight Llama: a dict of HF-named tensors and an eager forward pass."""

    def __init__(self, cfg, device, dtype, seed):
        self.cfg, self.device, self.dtype = cfg, device, dtype
        gen = torch.Generator(device=device).manual_seed(seed)

        def normal(*shape):
            return torch.empty(shape, device=device, dtype=dtype).normal_(0.0, 0.02, generator=gen)

        def ones(n):
            return torch.ones(n, device=device, dtype=dtype)

        c, w = cfg, {}
        w["model.embed_tokens.weight"] = normal(c.vocab, c.hidden)
        for i in range(c.layers):
            p = f"model.layers.{i}."
            w[p + "input_layernorm.weight"] = ones(c.hidden)
            w[p + "self_attn.q_proj.weight"] = normal(c.heads * c.head_dim, c.hidden)
            w[p + "self_attn.k_proj.weight"] = normal(c.kv_heads * c.head_dim, c.hidden)
            w[p + "self_attn.v_proj.weight"] = normal(c.kv_heads * c.head_dim, c.hidden)
            w[p + "self_attn.o_proj.weight"] = normal(c.hidden, c.heads * c.head_dim)
            w[p + "post_attention_layernorm.weight"] = ones(c.hidden)
            w[p + "mlp.gate_proj.weight"] = normal(c.intermediate, c.hidden)
            w[p + "mlp.up_proj.weight"] = normal(c.intermediate, c.hidden)
            w[p + "mlp.down_proj.weight"] = normal(c.hidden, c.intermediate)
        w["model.norm.weight"] = ones(c.hidden)
        if not c.tie:
            w["lm_head.weight"] = normal(c.vocab, c.hidden)
        self.w = w
        self.lm_head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
        half = torch.arange(0, c.head_dim, 2, device=device, dtype=torch.int64).float()
        self.inv_freq = 1.0 / (c.rope_theta ** (half / c.head_dim))

    def rms_norm(self, x, weight):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.cfg.eps)
        return weight * h.to(x.dtype)

    def rope(self, x, cos, sin):
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    def new_cache(self, max_len):
        """Per layer, preallocated K and V of shape [1, kv_heads, max_len, head_dim]."""
        c = self.cfg
        shape = (1, c.kv_heads, max_len, c.head_dim)
        return {
            "len": 0,
            "kv": [
                (torch.empty(shape, device=self.device, dtype=self.dtype),
                 torch.empty(shape, device=self.device, dtype=self.dtype))
                for _ in range(c.layers)
            ],
        }

    def hidden(self, ids, cache=None):
        """Final-norm hidden states [T, hidden] of the token ids [T] (appended to the cache)."""
        c, w = self.cfg, self.w
        t = ids.shape[0]
        past = cache["len"] if cache else 0
        pos = torch.arange(past, past + t, device=self.device).float()
        freqs = torch.outer(pos, self.inv_freq)
        angles = torch.cat((freqs, freqs), dim=-1)
        cos, sin = angles.cos().to(self.dtype), angles.sin().to(self.dtype)
        rep = c.heads // c.kv_heads
        x = w["model.embed_tokens.weight"][ids].unsqueeze(0)
        for i in range(c.layers):
            p = f"model.layers.{i}."
            h = self.rms_norm(x, w[p + "input_layernorm.weight"])
            q = F.linear(h, w[p + "self_attn.q_proj.weight"]).view(1, t, c.heads, c.head_dim)
            k = F.linear(h, w[p + "self_attn.k_proj.weight"]).view(1, t, c.kv_heads, c.head_dim)
            v = F.linear(h, w[p + "self_attn.v_proj.weight"]).view(1, t, c.kv_heads, c.head_dim)
            q = self.rope(q.transpose(1, 2), cos, sin)
            k = self.rope(k.transpose(1, 2), cos, sin)
            v = v.transpose(1, 2)
            if cache:
                kc, vc = cache["kv"][i]
                kc[:, :, past : past + t] = k
                vc[:, :, past : past + t] = v
                k, v = kc[:, :, : past + t], vc[:, :, : past + t]
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
            if past == 0:
                a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            elif t == 1:
                a = F.scaled_dot_product_attention(q, k, v)
            else:
                raise ValueError("chunked prefill onto a non-empty cache is not supported")
            a = a.transpose(1, 2).reshape(1, t, c.heads * c.head_dim)
            x = x + F.linear(a, w[p + "self_attn.o_proj.weight"])
            h = self.rms_norm(x, w[p + "post_attention_layernorm.weight"])
            g = F.silu(F.linear(h, w[p + "mlp.gate_proj.weight"]))
            x = x + F.linear(g * F.linear(h, w[p + "mlp.up_proj.weight"]), w[p + "mlp.down_proj.weight"])
        if cache:
            cache["len"] = past + t
        return self.rms_norm(x, w["model.norm.weight"])[0]

    def nll_sum(self, ids, chunk=1024):
        """Summed NLL (f32) of ids[1:] given the prefixes, and the number of predicted tokens."""
        h = self.hidden(ids)[:-1]
        targets = ids[1:]
        total = torch.zeros((), device=self.device, dtype=torch.float32)
        for s in range(0, h.shape[0], chunk):
            logits = F.linear(h[s : s + chunk], self.lm_head).float()
            total += F.cross_entropy(logits, targets[s : s + chunk], reduction="sum")
        return total, targets.shape[0]

    def next_token(self, ids, cache):
        """Greedy next token after ids, extending the cache."""
        h = self.hidden(ids, cache)[-1:]
        return F.linear(h, self.lm_head).float().argmax(-1)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, fn):
    """(seconds, result) of fn(), synchronised with the device."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="HF config.json of a Llama-architecture model")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--windows", type=int, default=8, help="timed perplexity windows")
    ap.add_argument("--prefill-len", type=int, help="tokens prefilled for the decode test (default --seq-len)")
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=["bf16", "f16", "f32"], default="bf16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args()

    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[args.dtype]
    with open(args.config) as f:
        cfg = Config(json.load(f))
    prefill_len = args.prefill_len or args.seq_len

    with torch.inference_mode():
        init_s, model = timed(device, lambda: Llama(cfg, device, dtype, args.seed))
        params = sum(t.numel() for t in model.w.values())
        print(f"model: {params / 1e6:.1f} M params, {args.dtype} on {device}, init {init_s:.1f} s")

        gen = torch.Generator().manual_seed(args.seed)
        windows = torch.randint(0, cfg.vocab, (args.windows + 1, args.seq_len), generator=gen)
        windows = windows.to(device)
        model.nll_sum(windows[0])  # warm-up window, not counted

        def evaluate():
            parts = [model.nll_sum(ids) for ids in windows[1:]]
            return sum(p[0] for p in parts).item(), sum(p[1] for p in parts)

        eval_s, (nll, count) = timed(device, evaluate)
        tokens_per_s = args.windows * args.seq_len / eval_s
        ppl = math.exp(nll / count)

        prompt = torch.randint(0, cfg.vocab, (prefill_len,), generator=gen).to(device)
        cache_len = prefill_len + args.decode_steps

        def prefill():
            cache = model.new_cache(cache_len)
            return cache, model.next_token(prompt, cache)

        def decode(cache, tok):
            for _ in range(args.decode_steps):
                tok = model.next_token(tok, cache)
            return tok

        runs = []
        for _ in range(4):  # the first prefill and decode are warm-ups
            p_s, (cache, tok) = timed(device, prefill)
            d_s, _ = timed(device, lambda: decode(cache, tok))
            runs.append((p_s, d_s))
            del cache
        prefill_ms = statistics.median(r[0] for r in runs[1:]) * 1e3
        decode_tok_s = args.decode_steps / statistics.median(r[1] for r in runs[1:])

    result = {
        "tokens_per_s": tokens_per_s,
        "prefill_ms": prefill_ms,
        "decode_tok_s": decode_tok_s,
        "ppl": ppl,
        "seq_len": args.seq_len,
        "windows": args.windows,
        "prefill_len": prefill_len,
        "decode_steps": args.decode_steps,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "dtype": args.dtype,
        "params": params,
        "torch": torch.__version__,
    }
    print(f"perplexity   {ppl:.3f} over {count} tokens ({args.windows} x {args.seq_len})")
    print(f"forward      {tokens_per_s:.0f} tokens/s")
    print(f"prefill      {prefill_ms:.2f} ms for {prefill_len} tokens")
    print(f"decode       {decode_tok_s:.1f} tokens/s ({args.decode_steps} greedy steps)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
