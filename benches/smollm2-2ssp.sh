#!/usr/bin/env bash
# 2SSP on SmolLM2-135M at 25 / 37.5 / 50 % with default settings (32 x 2048 stage-1 windows, 1
# stage-2 window, alpha 1.5, calibration data/calib-sotu.jsonl), then dense and pruned perplexity on
# the three evaluation sets, `bench` of each pruned model against the dense one, and greedy
# generations. Prints Markdown tables (BENCHMARKS.md); raw JSON goes to $OUT (default bench-results/).
# Usage: benches/smollm2-2ssp.sh   (env: MAX_WINDOWS per eval set, default 8; SPARSITIES;
#        REUSE_PRUNED=1 keeps the pruned folders and reports of an earlier run and redoes the rest)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench-results}"
MAX_WINDOWS="${MAX_WINDOWS:-8}"
SPARSITIES="${SPARSITIES:-0.25 0.375 0.5}"
PYTHON="${PYTHON:-python3}"
DENSE=models/SmolLM2-135M-Instruct.Q4_1
ENGINE=target/release/twossp-engine
PROMPT="The capital of France is"
mkdir -p "$OUT"
cargo build --release --locked >/dev/null

for s in $SPARSITIES; do
  [ "${REUSE_PRUNED:-0}" = 1 ] && [ -f "$OUT/prune-$s.json" ] && continue
  "$ENGINE" prune --model "$DENSE" --sparsity "$s" --out "$OUT/smollm2-2ssp-$s" --force --json > "$OUT/prune-$s.json"
done
for m in dense $SPARSITIES; do
  dir=$DENSE; [ "$m" = dense ] || dir="$OUT/smollm2-2ssp-$m"
  "$ENGINE" eval --model "$dir" --data data/wiki.jsonl data/news.jsonl data/books.jsonl --max-windows "$MAX_WINDOWS" --json > "$OUT/eval-$m.json"
  "$ENGINE" generate --model "$dir" --prompt "$PROMPT" --max-new-tokens 40 --json > "$OUT/generate-$m.json"
  [ "$m" = dense ] || "$ENGINE" bench --model "$dir" --baseline "$DENSE" --json > "$OUT/bench-$m.json"
done

"$PYTHON" - "$OUT" "$SPARSITIES" "$MAX_WINDOWS" <<'PY'
import json, sys
out, sparsities, windows = sys.argv[1], sys.argv[2].split(), sys.argv[3]
load = lambda name: json.load(open(f"{out}/{name}.json"))
ppl = lambda m: {r["dataset"]: r["ppl"] for r in load(f"eval-{m}")["results"]}
print(f"### Perplexity (first {windows} windows x 2048 tokens of each set)\n")
print("| model | sparsity achieved | attention removed | FFN kept | wiki | news | books |")
print("|---|---:|---|---:|---:|---:|---:|")
d = ppl("dense")
print(f"| dense | 0 | - | 1536 | {d['wiki']:.3f} | {d['news']:.3f} | {d['books']:.3f} |")
for s in sparsities:
    r, p = load(f"prune-{s}"), ppl(s)
    print(f"| 2SSP {float(s):.1%} | {r['sparsity_achieved']:.4f} | {r['removed_attention']} | {r['ffn_keep'][0]} | {p['wiki']:.3f} | {p['news']:.3f} | {p['books']:.3f} |")
print("\n### Pruning time (seconds) and stage-2 work\n")
print("| sparsity | stage 1 | stage 2 | total (incl. load, save, verify) | stage-2 block evals (suffix reuse / full recompute) |")
print("|---|---:|---:|---:|---|")
for s in sparsities:
    r = load(f"prune-{s}"); t = r["seconds"]
    print(f"| {s} | {t['stage1']:.1f} | {t['stage2']:.1f} | {t['total']:.1f} | {r['block_evals_stage2']} / {r['block_evals_stage2_without_suffix_reuse']} |")
print("\n### Speed and memory, pruned vs dense (`bench`, batch 1, prefill 2048, prompt 128, 64 decoded tokens)\n")
print("| sparsity | prefill tok/s (x dense) | time to first token s (x) | decode tok/s (x) | params total ratio | KV cache @2048 MiB (ratio) |")
print("|---|---|---|---|---:|---|")
for s in sparsities:
    b = load(f"bench-{s}"); r, base, x = b["result"], b["baseline_result"], b["speedup"]
    print(f"| {s} | {r['prefill_tokens_per_s']:.0f} vs {base['prefill_tokens_per_s']:.0f} ({x['prefill']:.2f}x) | "
          f"{r['time_to_first_token_s']:.3f} vs {base['time_to_first_token_s']:.3f} ({x['time_to_first_token']:.2f}x) | "
          f"{r['decode_tokens_per_s']:.1f} vs {base['decode_tokens_per_s']:.1f} ({x['decode']:.2f}x) | "
          f"{x['params_total_ratio']:.3f} | {r['kv_cache_bytes']/2**20:.1f} vs {base['kv_cache_bytes']/2**20:.1f} ({x['kv_cache_ratio']:.3f}) |")
print("\n### Greedy generations\n")
for m in ["dense"] + sparsities:
    g = load(f"generate-{m}")
    print(f"- **{m}**: `{g['prompt']}` → {json.dumps(g['completion'])}")
PY
