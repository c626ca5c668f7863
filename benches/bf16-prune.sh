#!/usr/bin/env bash
# 2SSP on the bf16 SmolLM2-135M checkpoint at 25 / 37.5 / 50 % with default settings, in bf16
# (--dtype auto: bf16 weights, bf16 products on AMX / AVX512-BF16) and as f32 math on the same bf16
# weights (--dtype f32, the reference for a bf16 checkpoint), then a table of times, peak RSS and
# decisions side by side: attention removal order, and the overlap of the kept-neuron sets.
# With AUTHORS=DIR (a folder of runs/sS.rerun.json + runs/sS.rerun.kept_ffn_idx.json from the authors' code in
# bf16, run outside this repository) their decisions are compared too.
# The bf16 checkpoint is made as in benches/bf16-throughput.sh. 0.375 runs first, uncached; the
# other sparsities reuse its stage-1 scores (the resumable cache), as a user sweeping would.
# Usage: benches/bf16-prune.sh   (env: OUT, default bench-results/bf16-prune; SPARSITIES)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench-results/bf16-prune}"
SPARSITIES="${SPARSITIES:-0.375 0.25 0.5}"
PYTHON="${PYTHON:-python3}"
F32=models/SmolLM2-135M-Instruct.Q4_1
BF16=models/SmolLM2-135M-Instruct.bf16
ENGINE=target/release/twossp-engine
mkdir -p "$OUT"
cargo build --release --locked >/dev/null
[ -d "$BF16" ] || "$ENGINE" export --model "$F32" --format hf --dtype bf16 --out "$BF16" >/dev/null
rm -rf "$OUT/cache"
for dtype in auto f32; do
  for s in $SPARSITIES; do
    /usr/bin/time -v "$ENGINE" prune --model "$BF16" --dtype "$dtype" --sparsity "$s" --out "$OUT/$dtype-$s" \
      --cache-dir "$OUT/cache" --force --json > "$OUT/prune-$dtype-$s.json" 2> "$OUT/prune-$dtype-$s.err"
  done
done
"$PYTHON" - "$OUT" "$SPARSITIES" "${AUTHORS:-}" <<'PY'
import json, os, re, sys
out, sparsities, authors = sys.argv[1], sys.argv[2].split(), sys.argv[3]
def load(dtype, s):
    r = json.load(open(f"{out}/prune-{dtype}-{s}.json"))
    err = open(f"{out}/prune-{dtype}-{s}.err").read()
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1)) / 1024
    return r, rss
def overlap(a, b):
    return sum(len(set(x) & set(y)) for x, y in zip(a, b)) / sum(len(x) for x in a)
print("| sparsity | run | stage 1 s | stage 2 s | total s | peak RSS MB | attention removed (order) | kept neurons vs f32 math |")
print("|---:|---|---:|---:|---:|---:|---|---:|")
for s in sorted(sparsities, key=float):
    ref, _ = load("f32", s)
    for dtype, name in [("auto", "engine bf16"), ("f32", "engine f32 math")]:
        r, rss = load(dtype, s)
        t = r["seconds"]
        reused = " (stage 1 reused)" if r["reused"].get("stage1_scores") else ""
        print(f"| {s} | {name}{reused} | {t['stage1']:.1f} | {t['stage2']:.1f} | {t['stage1'] + t['stage2']:.1f} | {rss:.0f} | {r['removed_attention']} | {overlap(r['ffn_kept'], ref['ffn_kept']):.4f} |")
    if authors and os.path.exists(f"{authors}/runs/s{s}.rerun.json"):
        a = json.load(open(f"{authors}/runs/s{s}.rerun.json"))
        kept = json.load(open(f"{authors}/runs/s{s}.rerun.kept_ffn_idx.json"))
        kept = kept["kept"] if isinstance(kept, dict) else kept
        print(f"| {s} | authors' code, bf16 | {a['stage1_secs']:.1f} | {a['stage2_secs']:.1f} | {a['total_secs']:.1f} | | {a['attn_removed_in_order']} | {overlap(kept, ref['ffn_kept']):.4f} |")
PY
