#!/usr/bin/env bash
# Pruned vs dense SmolLM2-135M where users run it: llama.cpp perplexity of dense and 2SSP-pruned
# GGUFs (exported by the engine) on the three evaluation sets beside the engine's own, then
# llama-bench prefill/decode in F16 and Q4_K_M (via llama-quantize) with the KV-cache size
# llama.cpp reports, beside the engine's `bench` ratios. Prints markdown tables (BENCHMARKS.md §8).
#
# Needs: llama.cpp (benches/peers/build-llama-cpp.sh), models/SmolLM2-135M-Instruct.Q4_1 and the
# pruned DeciLM folders models/smollm2-2ssp-{0.25,0.375,0.5} (made by `twossp-engine prune
# --model models/SmolLM2-135M-Instruct.Q4_1 --sparsity S --out models/smollm2-2ssp-S`), data/.
# Usage: benches/export-llama-cpp.sh [CHUNKS (4)] [THREADS (2)]
set -euo pipefail
cd "$(dirname "$0")/.."
CHUNKS="${1:-4}"
THREADS="${2:-2}"
B="${LLAMA_CPP_BIN:-../peers/llama.cpp/build/bin}"
E=target/release/twossp-engine
OUT="${OUT:-bench-results/export-llama-cpp}"
mkdir -p "$OUT"
DENSE=models/SmolLM2-135M-Instruct.Q4_1
declare -A MODEL=([dense]=$DENSE [0.25]=models/smollm2-2ssp-0.25 [0.375]=models/smollm2-2ssp-0.375 [0.5]=models/smollm2-2ssp-0.5)
read -r -a ORDER <<< "dense ${SPARSITIES:-0.25 0.375 0.5}"
for set in wiki news books; do
  [ -f "$OUT/$set.txt" ] || python3 -c 'import json,sys; print("\n\n".join(json.loads(l)["text"] for l in open(sys.argv[1])), end="")' \
    "data/$set.jsonl" > "$OUT/$set.txt"
done
for k in "${ORDER[@]}"; do
  m="${MODEL[$k]}"
  "$E" export --model "$m" --format gguf --dtype f16 --out "$OUT/$k.f16.gguf" --force --no-verify > /dev/null
  "$B/llama-quantize" "$OUT/$k.f16.gguf" "$OUT/$k.q4km.gguf" Q4_K_M > "$OUT/$k.quantize.log" 2>&1
done

echo "### llama.cpp perplexity (F16 GGUF, -c 2048, first $CHUNKS chunks; llama.cpp scores the second half of each chunk) beside the engine's (first $CHUNKS windows of 2048)"
echo
echo "| model | wiki llama.cpp | wiki engine | news llama.cpp | news engine | books llama.cpp | books engine |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for k in "${ORDER[@]}"; do
  row="| $k"
  for set in wiki news books; do
    l=$("$B/llama-perplexity" -m "$OUT/$k.f16.gguf" -f "$OUT/$set.txt" -c 2048 -b 2048 -t "$THREADS" --chunks "$CHUNKS" -fa on 2>&1 \
        | tee "$OUT/$k.$set.ppl.log" | sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p')
    e=$("$E" --threads "$THREADS" eval --model "${MODEL[$k]}" --data "data/$set.jsonl" --max-windows "$CHUNKS" --json \
        | python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["results"][0]["ppl"])')
    row="$row | $l | $e"
  done
  echo "$row |"
done
echo
echo "### llama-bench (t/s, $THREADS threads, -fa 1): prefill 2048 (pp2048) and decode 128 (tg128); KV cache of 2048 tokens (F16) as llama.cpp's state size reports it (llama-logits --kv-info)"
echo
echo "| model | F16 pp2048 | F16 tg128 | Q4_K_M pp2048 | Q4_K_M tg128 | Q4_K_M file MB | KV cache MB |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for k in "${ORDER[@]}"; do
  row="| $k"
  for q in f16 q4km; do
    "$B/llama-bench" -m "$OUT/$k.$q.gguf" -p 2048 -n 128 -fa 1 -t "$THREADS" -r 2 -o json > "$OUT/$k.$q.bench.json" 2> /dev/null
    row="$row | $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(" | ".join("%.1f" % x["avg_ts"] for x in r))' "$OUT/$k.$q.bench.json")"
  done
  mb=$(python3 -c 'import os,sys; print(f"{os.path.getsize(sys.argv[1])/1e6:.1f}")' "$OUT/$k.q4km.gguf")
  ids=$(python3 -c 'print(",".join(str(i % 1000 + 1) for i in range(2048)))')
  kv=$("$B/llama-logits" "$OUT/$k.f16.gguf" --ids "$ids" --out "$OUT/kv.f32" -t "$THREADS" --kv-info \
       | python3 -c 'import json,sys; print("%.1f" % (json.load(sys.stdin)["kv_seq_bytes"] / 1e6))')
  echo "$row | $mb | $kv |"
done
echo
echo "### the engine's own bench (f32, $THREADS threads): pruned vs dense"
echo
for k in "${ORDER[@]:1}"; do
  echo "sparsity $k:"
  "$E" --threads "$THREADS" bench --model "${MODEL[$k]}" --baseline "$DENSE" | sed 's/^/    /'
done
