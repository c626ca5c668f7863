#!/usr/bin/env bash
# Runs every CUDA test without a GPU: builds the `cuda-host` variant (kernels/*.cu compiled as C++ for
# the CPU, run by the host emulation in kernels/host/) and runs the CUDA backend's unit tests,
# tests/cuda_parity.rs and the whole-model tests of every backend (tests/engines.rs) on it. Every launch runs under the forward, reversed and shuffled thread
# schedules (TWOSSP_HOST_SCHEDULES) and must give bit-identical results. Exits non-zero when a test
# fails or when any test reports SKIPPED (here nothing may be skipped: the emulated device is present).
set -euo pipefail
cd "$(dirname "$0")/.."
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
start=$SECONDS
cargo test --release --locked --features cuda-host --lib backend::cuda 2>&1 | tee "$log"
cargo test --release --locked --features cuda-host --test cuda_parity 2>&1 | tee -a "$log"
# The whole-model tests under one schedule: cuda_parity above already runs every kernel under all three.
TWOSSP_HOST_SCHEDULES=forward \
  cargo test --release --locked --features cuda-host --test engines -- --nocapture 2>&1 | tee -a "$log"
if grep -q 'SKIPPED' "$log"; then
  echo "error: a CUDA test was SKIPPED on the host emulation:" >&2
  grep 'SKIPPED' "$log" >&2
  exit 1
fi
passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
checks=$(grep -c '^  ok ' "$log" || true)
echo "cuda-host: $passed tests passed ($checks kernel/model checks), none skipped, in $((SECONDS - start)) s"
