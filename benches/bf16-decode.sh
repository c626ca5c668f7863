#!/usr/bin/env bash
# Decode and prefill speed in bf16, side by side in one run: the engine's `bench` (batch 1, prefill
# 2048, 64 tokens decoded after a 128-token prompt, best of 3) on the dense bf16 SmolLM2 and on a
# 2SSP-pruned bf16 one, beside llama.cpp's llama-bench (-fa 1, prefill 2048, decode 128) on BF16
# GGUFs of exactly the same weights (the engine's own `export --format gguf --dtype bf16`), and the
# engine's f32 decode of the same model for reference.
# Needs: models/SmolLM2-135M-Instruct.Q4_1, llama.cpp built by benches/peers/build-llama-cpp.sh.
# Usage: benches/bf16-decode.sh [PRUNED_BF16_DIR]   (default: prunes 37.5 % in bf16 first)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${THREADS:-$(nproc)}"
LLAMA_BIN="${LLAMA_BIN:-../peers/llama.cpp/build/bin}"
F32=models/SmolLM2-135M-Instruct.Q4_1
BF16=models/SmolLM2-135M-Instruct.bf16
ENGINE=target/release/twossp-engine
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cargo build --release --locked >/dev/null
[ -d "$BF16" ] || "$ENGINE" export --model "$F32" --format hf --dtype bf16 --out "$BF16" >/dev/null
PRUNED="${1:-$tmp/pruned}"
[ -d "$PRUNED" ] || "$ENGINE" prune --model "$BF16" --sparsity 0.375 --out "$PRUNED" >/dev/null
"$ENGINE" export --model "$BF16" --format gguf --dtype bf16 --out "$tmp/dense.gguf" >/dev/null
"$ENGINE" export --model "$PRUNED" --format gguf --dtype bf16 --out "$tmp/pruned.gguf" >/dev/null

ours() { # MODEL DTYPE -> "prefill_tok/s decode_tok/s"
  "$ENGINE" --threads "$THREADS" bench --model "$1" --dtype "$2" --json \
    | python3 -c 'import json,sys; r=json.load(sys.stdin)["result"]; print("%.1f %.1f" % (r["prefill_tokens_per_s"], r["decode_tokens_per_s"]))'
}
llama() { # GGUF -> "prefill_tok/s decode_tok/s"
  "$LLAMA_BIN/llama-bench" -m "$1" -p 2048 -n 128 -fa 1 -t "$THREADS" -r 2 -o json 2>/dev/null \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); print(" ".join("%.1f" % x["avg_ts"] for x in r))'
}
echo "| model | engine prefill tok/s | engine decode tok/s | llama.cpp BF16 pp2048 | llama.cpp BF16 tg128 |"
echo "|---|---:|---:|---:|---:|"
for k in dense pruned; do
  dir=$BF16; [ "$k" = pruned ] && dir=$PRUNED
  set -- $(ours "$dir" auto) $(llama "$tmp/$k.gguf")
  echo "| $k bf16 | $1 | $2 | $3 | $4 |"
done
set -- $(ours "$BF16" f32)
echo "| dense, engine --dtype f32 | $1 | $2 | | |"
echo
echo "threads=$THREADS; kernels: $("$ENGINE" eval --model "$BF16" --data data/wiki.jsonl --max-windows 1 --seq-len 64 2>&1 >/dev/null | sed -n 's/^kernels: //p')"
