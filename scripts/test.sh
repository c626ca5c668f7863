#!/usr/bin/env bash
# The test suite (what .ci/run calls): fetches the real models and the text data when missing,
# builds llama.cpp (from the PyPI sdist of llama-cpp-python, with our tools/llama-logits) so that
# the GGUF exports are run in it, then runs every test with optimisations. Needs only Rust,
# Python 3.11 with pip, gcc/g++ (npm is used when present).
# TWOSSP_SKIP_LLAMA_CPP=1 skips the llama.cpp build; its tests then say SKIPPED.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
scripts/fetch-model.sh all
scripts/fetch-data.sh
scripts/fetch-tasks.sh
if [ "${TWOSSP_SKIP_LLAMA_CPP:-0}" != 1 ]; then
  benches/peers/build-llama-cpp.sh >&2
  export TWOSSP_REQUIRE_LLAMA_CPP=1
fi
cargo test --release --locked
