#!/usr/bin/env bash
# Coverage-guided fuzzing of every reader of untrusted bytes (src/fuzzing.rs) with AFL++ through
# afl.rs, which works on the stable toolchain. Seeds: tests/fixtures/fuzz/<target>/.
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET (default 60)] [TARGET...]   (default: all targets)
# Prints executions, coverage and findings per target; crashing inputs are copied to
# target/fuzz/findings/<target>/ (commit each, with its fix, under tests/fixtures/fuzz/<target>/).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf safetensors config tokenizer_json data)

if ! command -v cargo-afl >/dev/null 2>&1; then
    cargo install --locked cargo-afl@0.18.2 >&2 # also builds AFL++ for this rustc
fi
(cd fuzz && cargo afl build --release >&2)
harness="$PWD/fuzz/target/release/twossp-fuzz"

printf '%-15s %10s %10s %9s %8s %6s\n' target seconds executions exec/s coverage crashes
for t in "${targets[@]}"; do
    out="target/fuzz/$t"
    rm -rf "$out"
    mkdir -p "$out"
    AFL_SKIP_CPUFREQ=1 AFL_NO_UI=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
        AFL_NO_AFFINITY=1 AFL_SKIP_CRASHES=1 TWOSSP_FUZZ_TARGET="$t" \
        cargo afl fuzz -V "$secs" -t 2000 -i "tests/fixtures/fuzz/$t" -o "$out" "$harness" \
        > "$out/afl.log" 2>&1 || { echo "afl-fuzz failed for $t, see $out/afl.log" >&2; tail -20 "$out/afl.log" >&2; exit 1; }
    stats="$out/default/fuzzer_stats"
    get() { awk -F' *: *' -v k="$1" '$1==k {print $2}' "$stats"; }
    crashes=$(get saved_crashes)
    printf '%-15s %10s %10s %9s %8s %6s\n' "$t" "$(get run_time)" "$(get execs_done)" \
        "$(get execs_per_sec)" "$(get bitmap_cvg)" "$crashes"
    if [ "${crashes:-0}" != 0 ]; then
        mkdir -p "target/fuzz/findings/$t"
        cp "$out"/default/crashes/id* "target/fuzz/findings/$t/"
    fi
done
