#!/usr/bin/env python3
"""HF transformers reference perplexity of a real (imported) model on the first windows of a data set.

Usage (venv with torch + transformers):
    twossp-engine tokenize --model DIR --data data/wiki.jsonl --json > /tmp/ids.json
    python tools/real_model_reference.py --model DIR --ids /tmp/ids.json --seq-len 2048 --windows 2 \
        --name smollm2-wiki --out tests/fixtures/real/smollm2-wiki.json

The token ids come from the engine's tokenizer (checked separately against llama.cpp's
llama-tokenize); HF transformers computes the perplexity of exactly those ids in float32 with the
reference protocol of SPEC-2SSP.md (`--dtype bfloat16`: in bf16, as transformers runs a bf16
checkpoint; non-overlapping windows, mean next-token NLL over seq_len-1
positions, token-weighted, exp). Run with torch 2.15 / transformers 5.24 on CPU.

Exported models (DeciLM folders written by `prune` / `export`) load with `--trust-remote-code`;
the script then fails unless transformers reports no missing, unexpected or mismatched keys, and
records the class it loaded.
"""
import argparse, json, math, time

import torch
import transformers
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True, help="JSON from `twossp-engine tokenize --json`")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="compute dtype (bfloat16: every op in bf16 as transformers runs a bf16 checkpoint)")
    ap.add_argument("--trust-remote-code", action="store_true", help="load the folder's own modeling code (DeciLM)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ids = json.load(open(a.ids))["ids"]
    model, info = AutoModelForCausalLM.from_pretrained(
        a.model, dtype=getattr(torch, a.dtype), attn_implementation="sdpa",
        trust_remote_code=a.trust_remote_code, output_loading_info=True)
    model.eval()
    problems = {k: list(v) for k, v in info.items() if v}
    if problems:
        raise SystemExit(f"transformers could not load every weight of {a.model}: {problems}")
    total, count, seconds = 0.0, 0, 0.0
    windows = [ids[i * a.seq_len:(i + 1) * a.seq_len] for i in range(a.windows)]
    assert all(len(w) == a.seq_len for w in windows), "not enough tokens"
    with torch.no_grad():
        for w in windows:
            x = torch.tensor([w])
            t = time.perf_counter()
            logits = model(x).logits[0, :-1].float()
            seconds += time.perf_counter() - t
            nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum")
            total += float(nll)
            count += len(w) - 1
    mean = total / count
    out = {
        "name": a.name, "seq_len": a.seq_len, "windows": a.windows, "predicted": count,
        "hf_mean_nll": mean, "hf_ppl": math.exp(mean), "hf_seconds": seconds,
        "hf_tokens_per_s": a.windows * a.seq_len / seconds, "threads": a.threads, "dtype": a.dtype,
        "hf_class": type(model).__name__, "first_ids": ids[:64], "transformers_version": transformers.__version__, "torch_version": torch.__version__,
    }
    json.dump(out, open(a.out, "w"), indent=1)
    print(json.dumps({k: v for k, v in out.items() if k != "first_ids"}))


if __name__ == "__main__":
    main()
