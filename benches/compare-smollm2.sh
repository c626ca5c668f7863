#!/usr/bin/env bash
# The paper's comparison on SmolLM2-135M (BENCHMARKS §14): 2SSP, ShortGPT, Window, SLEB,
# BlockPruner, EvoPress and SliceGPT at 25 / 37.5 / 50 % beside the dense model, perplexity on the three evaluation sets
# and five zero-shot tasks, then copies the tables and the SVG plots into benches/compare-smollm2/.
# Settings reduced to fit a 2-core machine (about 2 h): 512-token calibration windows (each
# method's default number of them), 2 windows of 2048 tokens per evaluation set, the first 40
# documents of each task; EvoPress with the reduced search its authors' code was checked under
# (10 generations of 16 children, 32 initial candidates, minibatches of 512 and 512/2048 tokens;
# their defaults would take hours per cell here); MMLU is left out here (SmolLM2-135M is at chance on it: 0.238 at
# --limit 20). A rerun resumes: finished cells in $OUT/cells are reused.
# Usage: benches/compare-smollm2.sh   (env: OUT, default bench-results/compare-smollm2)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench-results/compare-smollm2}"
cargo build --release --locked >/dev/null
target/release/twossp-engine compare --model models/SmolLM2-135M-Instruct.Q4_1 --out "$OUT" \
  --methods 2ssp,shortgpt,window,sleb,blockpruner,evopress,slicegpt \
  --evo-generations 10 --evo-offspring 16 --evo-initial 32 --evo-initial-tokens 512 \
  --evo-selection-tokens 512,2048 \
  --seq-len 512 --eval-seq-len 2048 --eval-max-windows 2 \
  --task arc_easy,arc_challenge,hellaswag,piqa,winogrande --limit 40
mkdir -p benches/compare-smollm2
cp "$OUT"/compare.md "$OUT"/compare.csv "$OUT"/compare.json "$OUT"/*.svg benches/compare-smollm2/
