#!/usr/bin/env bash
# Decision time of every pruning method on SmolLM2-135M at 37.5 %, one method after another on an
# otherwise idle machine, with the settings of benches/compare-smollm2.sh (512-token calibration
# windows, each method's default number of them; EvoPress with the reduced search). Prints one
# table row per method: the seconds its report gives for deciding (2SSP: stage 1 + stage 2; the
# others: scoring / slicing) and the wall time of the whole command (loading, writing, reload check).
# Usage: benches/prune-times-smollm2.sh [THREADS]   (env: OUT, default bench-results/prune-times)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${1:-2}"
OUT="${OUT:-bench-results/prune-times}"
mkdir -p "$OUT"
cargo build --release --locked >/dev/null
MODEL=models/SmolLM2-135M-Instruct.Q4_1
EVO=(--evo-generations 10 --evo-offspring 16 --evo-initial 32 --evo-initial-tokens 512 --evo-selection-tokens 512,2048)
echo "| method | decision s | command wall s |"
echo "|---|---:|---:|"
for method in 2ssp shortgpt window sleb blockpruner evopress slicegpt; do
  extra=()
  [ "$method" = evopress ] && extra=("${EVO[@]}")
  start=$(date +%s.%N)
  target/release/twossp-engine --threads "$THREADS" prune --model "$MODEL" --method "$method" \
    --sparsity 0.375 --seq-len 512 --no-cache --force --out "$OUT/$method" --json "${extra[@]}" \
    > "$OUT/$method.json" 2> "$OUT/$method.err"
  end=$(date +%s.%N)
  python3 - "$OUT/$method.json" "$method" "$start" "$end" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["seconds"]
decision = s["stage1"] + s["stage2"] if "stage1" in s else s["scoring"]
print(f"| {sys.argv[2]} | {decision:.1f} | {float(sys.argv[4]) - float(sys.argv[3]):.1f} |")
PY
done
