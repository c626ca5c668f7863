#!/usr/bin/env bash
# Installs CUDA 13.0's nvcc from PyPI into .venv-cuda (no system CUDA toolkit needed) and prints
# the nvcc path; build.rs finds it there. Idempotent: does nothing when it is already installed.
# The compiler back-ends nvcc depends on (nvvm, crt, runtime) are pinned to 13.0 as well: an
# unpinned nvidia-nvvm pulls a newer cicc whose PTX the 13.0 ptxas (and driver 580) rejects.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-cuda
PY="${PYTHON:-python3}"
PKGS=("nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-cccl==13.0.*"
      "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-cuda-runtime==13.0.*")

find_nvcc() { ls "$VENV"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n1 || true; }

nvcc="$(find_nvcc)"
if [ -z "$nvcc" ] || ! "$nvcc" --version 2>/dev/null | grep -q 'release 13\.0'; then
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PKGS[@]}" >&2
  nvcc="$(find_nvcc)"
fi
[ -n "$nvcc" ] || { echo "error: nvcc not found in $VENV after pip install" >&2; exit 1; }
echo "$(cd "$(dirname "$nvcc")" && pwd)/nvcc"
