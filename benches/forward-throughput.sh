#!/usr/bin/env bash
# Forward throughput (tokens/s) of SmolLM2-135M at seq-len 2048, side by side in one run on this
# machine: twossp-engine (CPU, f32) vs HF transformers (PyTorch CPU, f32) vs llama.cpp
# (llama-perplexity on an f32 GGUF of the same weights). All use the same thread count.
# Needs: models/SmolLM2-135M-Instruct.Q4_1 (scripts/fetch-model.sh), data/wiki.jsonl,
# a Python with torch+transformers (PYTHON), llama.cpp built by benches/peers/build-llama-cpp.sh (LLAMA_BIN).
# Usage: benches/forward-throughput.sh [WINDOWS]   (default 2 windows of 2048 tokens)
set -euo pipefail
cd "$(dirname "$0")/.."
WINDOWS="${1:-2}"
THREADS="${THREADS:-$(nproc)}"
PYTHON="${PYTHON:-python3}"
LLAMA_BIN="${LLAMA_BIN:-../peers/llama.cpp/build/bin}"
MODEL=models/SmolLM2-135M-Instruct.Q4_1
GGUF_Q=models/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_F32=models/SmolLM2-135M-Instruct.f32.gguf
ENGINE=target/release/twossp-engine
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cargo build --release --locked >/dev/null
[ -f "$GGUF_F32" ] || "$LLAMA_BIN/llama-quantize" --allow-requantize "$GGUF_Q" "$GGUF_F32" F32 >/dev/null 2>&1

# 1. twossp-engine
ours=$("$ENGINE" --threads "$THREADS" eval --model "$MODEL" --data data/wiki.jsonl --max-windows "$WINDOWS" --json \
  | "$PYTHON" -c 'import json,sys; r=json.load(sys.stdin)["results"][0]; print(r["tokens_per_second"], r["ppl"])')

# 2. HF transformers on exactly the same token ids
"$ENGINE" tokenize --model "$MODEL" --data data/wiki.jsonl --json --limit $((WINDOWS * 2048)) > "$tmp/ids.json"
hf=$("$PYTHON" tools/real_model_reference.py --model "$MODEL" --ids "$tmp/ids.json" --windows "$WINDOWS" \
  --threads "$THREADS" --name bench --out "$tmp/hf.json" 2>/dev/null | "$PYTHON" -c 'import json,sys; r=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(r["hf_tokens_per_s"], r["hf_ppl"])')

# 3. llama.cpp: the same text (documents joined with a blank line), f32 weights
"$PYTHON" -c 'import json,sys; print("\n\n".join(json.loads(l)["text"] for l in open("data/wiki.jsonl")), end="")' > "$tmp/wiki.txt"
"$LLAMA_BIN/llama-perplexity" -m "$GGUF_F32" -f "$tmp/wiki.txt" -c 2048 -b 2048 -t "$THREADS" --chunks "$WINDOWS" \
  > "$tmp/llama.log" 2>&1 || { cat "$tmp/llama.log"; exit 1; }
# llama-perplexity's log is timestamped (min.s.ms.us): overall = from the start of scoring to the final
# estimate; steady = after the first pass (which includes llama.cpp's warm-up).
llama=$("$PYTHON" - "$tmp/llama.log" "$WINDOWS" <<'PY'
import re, sys
def t(line):
    m, s, ms, us = map(int, line.split()[0].split("."))
    return m * 60 + s + ms / 1e3 + us / 1e6
lines = open(sys.argv[1]).read().splitlines(); n = int(sys.argv[2])
start = t(next(l for l in lines if "calculating perplexity" in l))
first = t(next(l for l in lines if "seconds per pass" in l))
end = t(next(l for l in lines if "Final estimate" in l))
steady = (n - 1) * 2048 / (end - first) if n > 1 else float("nan")
print(n * 2048 / (end - start), steady)
PY
)
echo "| engine | tokens/s | ratio vs twossp-engine | perplexity (own protocol) |"
echo "|---|---:|---:|---:|"
set -- $ours; o_tps=$1; o_ppl=$2
set -- $hf; h_tps=$1; h_ppl=$2
set -- $llama; l_tps=$1; l_steady=$2
"$PYTHON" - "$o_tps" "$o_ppl" "$h_tps" "$h_ppl" "$l_tps" "$l_steady" "$THREADS" "$WINDOWS" <<'PY'
import sys
o, op, h, hp, l, ls, t, w = sys.argv[1:]
o, h, l, ls = float(o), float(h), float(l), float(ls)
print(f"| twossp-engine (f32) | {o:.1f} | 1.00 | {float(op):.4f} |")
print(f"| HF transformers (PyTorch CPU f32, sdpa) | {h:.1f} | {h/o:.2f} | {float(hp):.4f} |")
print(f"| llama.cpp llama-perplexity (f32 GGUF), all passes | {l:.1f} | {l/o:.2f} | (scores 2nd half of each window) |")
print(f"| llama.cpp llama-perplexity, after the first pass | {ls:.1f} | {ls/o:.2f} | |")
print(f"\nthreads={t}, windows={w} x 2048 tokens; twossp-engine / PyTorch = {o/h:.2f}x, twossp-engine / llama.cpp = {o/l:.2f}x (steady {o/ls:.2f}x)")
PY
