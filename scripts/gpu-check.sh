#!/usr/bin/env bash
# Prepares the GPU check without a GPU: builds (release, --features cuda) the parity test
# `cuda_parity`, the kernel bench `cuda_kernels` and the engine, strips them and packs them with
# the PyTorch peer, the configs and run.sh into gpu-pack/ (git-ignored, < 64 MiB), then prints
# the device call that runs gpu-pack/run.sh on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=gpu-pack
LIMIT_MIB=64
export NVCC="${NVCC:-$(scripts/install-nvcc.sh)}"
FEATURES=(--locked --features cuda)

# executable_of TARGET: the executable of TARGET in cargo's JSON messages on stdin.
executable_of() {
  python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == sys.argv[1] and msg.get("executable"):
        print(msg["executable"])' "$1" | tail -n1
}

# has_target KIND NAME: whether Cargo.toml (or auto-discovery) declares that target.
has_target() {
  cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
kinds = [(k, t["name"]) for p in json.load(sys.stdin)["packages"] for t in p["targets"] for k in t["kind"]]
sys.exit(0 if tuple(sys.argv[1:]) in kinds else 1)' "$1" "$2"
}

rm -rf "$PACK"
mkdir -p "$PACK/bin" "$PACK/tools" "$PACK/configs"

cargo build --release "${FEATURES[@]}" --bin twossp-engine
strip -o "$PACK/bin/twossp-engine" target/release/twossp-engine
if has_target test cuda_parity; then
  exe="$(cargo test --release "${FEATURES[@]}" --test cuda_parity --no-run --message-format=json | executable_of cuda_parity)"
  strip -o "$PACK/bin/cuda_parity" "$exe"
else
  echo "warning: no test target cuda_parity (tests/cuda_parity.rs); run.sh will report it missing" >&2
fi
if has_target bench cuda_kernels; then
  exe="$(cargo bench "${FEATURES[@]}" --bench cuda_kernels --no-run --message-format=json | executable_of cuda_kernels)"
  strip -o "$PACK/bin/cuda_kernels" "$exe"
else
  echo "warning: no bench target cuda_kernels (benches/cuda_kernels.rs); run.sh will report it missing" >&2
fi

cp scripts/gpu-pack-run.sh "$PACK/run.sh"
cp tools/torch_llama_bench.py tools/gpu_summary.py "$PACK/tools/"
cp configs/llama-2-7b.json configs/smollm2-135m.json "$PACK/configs/"

du -ah "$PACK" | sort -k2
size=$(du -sb "$PACK" | cut -f1)
if [ "$size" -ge $((LIMIT_MIB * 1024 * 1024)) ]; then
  echo "error: $PACK is $((size / 1024 / 1024)) MiB, over the ${LIMIT_MIB} MiB the device call can carry" >&2
  exit 1
fi
cat <<EOF

$PACK/ is ready: $((size / 1024)) KiB of ${LIMIT_MIB} MiB. Device call (the \`run\` tool):
  run(carry=["$PACK"], command="bash $PACK/run.sh", timeout_s=450)
Logs and JSON come back under \$OUT; the summary table is the last thing printed.
EOF
