#!/usr/bin/env bash
# bf16 vs f32 forward throughput of SmolLM2-135M at seq-len 2048, side by side in one run on this
# machine: twossp-engine on a bf16 checkpoint (--dtype auto: bf16 weights; the bf16 kernel that
# ran is printed) and on the f32 import, vs HF transformers (PyTorch CPU) in bf16 and in f32 on
# exactly the same token ids and thread count. The bf16 checkpoint is the engine's own
# `export --format hf --dtype bf16` of the imported model (round to nearest even, as PyTorch).
# Needs: models/SmolLM2-135M-Instruct.Q4_1 (scripts/fetch-model.sh), data/wiki.jsonl, a Python
# with torch+transformers (PYTHON).
# Usage: benches/bf16-throughput.sh [WINDOWS]   (default 2 windows of 2048 tokens)
set -euo pipefail
cd "$(dirname "$0")/.."
WINDOWS="${1:-2}"
THREADS="${THREADS:-$(nproc)}"
PYTHON="${PYTHON:-python3}"
F32=models/SmolLM2-135M-Instruct.Q4_1
BF16=models/SmolLM2-135M-Instruct.bf16
ENGINE=target/release/twossp-engine
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cargo build --release --locked >/dev/null
[ -d "$BF16" ] || "$ENGINE" export --model "$F32" --format hf --dtype bf16 --out "$BF16" >/dev/null
"$ENGINE" tokenize --model "$F32" --data data/wiki.jsonl --json --limit $((WINDOWS * 2048)) > "$tmp/ids.json"

engine() { # MODEL DTYPE -> "tokens/s ppl"
  "$ENGINE" --threads "$THREADS" eval --model "$1" --dtype "$2" --data data/wiki.jsonl --max-windows "$WINDOWS" --json \
    | "$PYTHON" -c 'import json,sys; r=json.load(sys.stdin)["results"][0]; print(r["tokens_per_second"], r["ppl"])'
}
hf() { # MODEL DTYPE -> "tokens/s ppl"
  "$PYTHON" tools/real_model_reference.py --model "$1" --dtype "$2" --ids "$tmp/ids.json" --windows "$WINDOWS" \
    --threads "$THREADS" --name bench --out "$tmp/hf.json" 2>/dev/null \
    | "$PYTHON" -c 'import json,sys; r=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(r["hf_tokens_per_s"], r["hf_ppl"])'
}
ours_bf16=$(engine "$BF16" auto)
hf_bf16=$(hf "$BF16" bfloat16)
ours_f32=$(engine "$F32" f32)
hf_f32=$(hf "$F32" float32)
"$PYTHON" - "$THREADS" "$WINDOWS" $ours_bf16 $hf_bf16 $ours_f32 $hf_f32 "${TWOSSP_BF16_KERNEL:-auto}" <<'PY'
import sys
t, w = sys.argv[1:3]
ob, obp, hb, hbp, of, ofp, hf_, hfp = map(float, sys.argv[3:11])
k = sys.argv[11]
print("| run | tokens/s | perplexity | engine / PyTorch |")
print("|---|---:|---:|---:|")
print(f"| twossp-engine bf16 (TWOSSP_BF16_KERNEL={k}) | {ob:.1f} | {obp:.4f} | **{ob/hb:.2f}x** |")
print(f"| HF transformers bf16 (PyTorch CPU, sdpa) | {hb:.1f} | {hbp:.4f} | |")
print(f"| twossp-engine f32 | {of:.1f} | {ofp:.4f} | **{of/hf_:.2f}x** |")
print(f"| HF transformers f32 | {hf_:.1f} | {hfp:.4f} | |")
print(f"\nthreads={t}, windows={w} x 2048 tokens; engine bf16 / engine f32 = {ob/of:.2f}x")
PY
