#!/usr/bin/env bash
# Runs every CUDA test without a GPU: builds the `cuda-host` variant (kernels/*.cu compiled as C++ for
# the CPU, run by the host emulation in kernels/host/) and runs the CUDA backend's unit tests,
# tests/cuda_parity.rs and the whole-model tests of every backend (tests/engines.rs) on it. Every
# kernel-level launch runs under the forward, reversed and shuffled thread schedules
# (TWOSSP_HOST_SCHEDULES) and must give bit-identical results; model-level tests run under one. Exits non-zero when a test
# fails or when any test reports SKIPPED (here nothing may be skipped: the emulated device is present).
set -euo pipefail
cd "$(dirname "$0")/.."
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
start=$SECONDS
cargo test --release --locked --features cuda-host --lib backend::cuda 2>&1 | tee "$log"
# Every kernel-level test under the three schedules; the model-level tests (which compose the same
# kernels, each already race-checked here) under one, to keep CI short.
model_level=(device_model_matches_cpu_model kv_cached_decode_matches_full_forward
  two_stage_pruning_on_gpu_matches_cpu evopress_fitness_on_gpu_matches_cpu synthetic_models_are_finite_and_seeded)
skips=()
for t in "${model_level[@]}"; do skips+=(--skip "$t"); done
cargo test --release --locked --features cuda-host --test cuda_parity -- "${skips[@]}" 2>&1 | tee -a "$log"
TWOSSP_HOST_SCHEDULES=forward \
  cargo test --release --locked --features cuda-host --test cuda_parity -- "${model_level[@]}" 2>&1 | tee -a "$log"
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
