#!/usr/bin/env bash
# Copied by scripts/gpu-check.sh to gpu-pack/run.sh; runs on the GPU machine (bash, python3 with
# PyTorch, no Rust) from the repository root: `bash gpu-pack/run.sh`. Runs the CUDA parity tests,
# the kernel benchmarks, the engine end to end on the synthetic Llama-2-7B shape and the PyTorch
# peer, each under a time limit (6.5 minutes in all; a failure is recorded and the next step
# runs). Logs and JSON go to $OUT (default gpu-pack/out); a summary table is printed last.
set -uo pipefail
PACK="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$PACK")"
OUT="${OUT:-$PACK/out}"
mkdir -p "$OUT"
: >"$OUT/status.txt"
cd "$ROOT"
ENGINE="$PACK/bin/twossp-engine"
CFG="$PACK/configs/llama-2-7b.json"

# Tests find tests/fixtures here (not at the build machine's path baked into the binary).
export TWOSSP_REPO_ROOT="$ROOT"
# cudarc loads libcublas/libnvrtc by name: add the CUDA wheels' libraries (not the driver stubs).
WHEEL_LIBS="$(python3 - 2>/dev/null <<'PY'
import glob, os, nvidia
dirs = {os.path.dirname(p) for d in nvidia.__path__
        for p in glob.glob(f"{d}/**/lib*.so*", recursive=True) if "stubs" not in p}
print(":".join(sorted(dirs)))
PY
)"
[ -n "$WHEEL_LIBS" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$WHEEL_LIBS"

# step NAME SECONDS [--stdout FILE] CMD...: runs CMD under a time limit and records its exit code
# in $OUT/status.txt; output goes to $OUT/NAME.log (and the terminal), or stdout to FILE.
step() {
  local name=$1 limit=$2 stdout="" rc t0=$SECONDS
  shift 2
  if [ "$1" = --stdout ]; then stdout=$2; shift 2; fi
  echo "== $name (limit ${limit} s): $*"
  if [ ! -x "$1" ] && ! command -v "$1" >/dev/null; then
    echo "   missing: $1"
    rc=127
  elif [ -n "$stdout" ]; then
    timeout -k 10 "$limit" "$@" >"$stdout" 2>"$OUT/$name.log"
    rc=$?
    tail -n 5 "$OUT/$name.log"
  else
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
  fi
  echo "$name $rc $((SECONDS - t0))" >>"$OUT/status.txt"
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit \
  --format=csv,noheader | tee "$OUT/nvidia-smi.txt"

TWOSSP_CUDA_SYNC=1 step parity 90 "$PACK/bin/cuda_parity" --test-threads=1
step kernels 60 "$PACK/bin/cuda_kernels" --json "$OUT/kernels.json"
SYN=(--device cuda --synthetic-weights "$CFG")
step eval 45 --stdout "$OUT/eval.json" \
  "$ENGINE" eval "${SYN[@]}" --seq-len 2048 --max-windows 8 --json
step prune 90 --stdout "$OUT/prune.json" \
  "$ENGINE" prune "${SYN[@]}" --sparsity 0.375 --json
step bench 45 --stdout "$OUT/bench.json" \
  "$ENGINE" bench "${SYN[@]}" --sparsity 0.375 --json
step torch 60 python3 "$PACK/tools/torch_llama_bench.py" \
  --config "$CFG" --seq-len 2048 --windows 8 --json "$OUT/torch.json"

python3 "$PACK/tools/gpu_summary.py" "$OUT" || cat "$OUT/status.txt"
