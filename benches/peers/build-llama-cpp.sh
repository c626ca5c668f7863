#!/usr/bin/env bash
# Build llama.cpp (peer baseline for benchmarks) from the copy vendored inside
# the PyPI sdist of llama-cpp-python. Nothing from llama.cpp is committed here:
# this script downloads the sdist from PyPI, unpacks vendor/llama.cpp and
# builds a handful of command-line tools with CMake, then compiles our own
# tools/llama-logits/llama_logits.cpp against the static libraries it produced.
#
# Usage: benches/peers/build-llama-cpp.sh [DEST]
#   DEST defaults to <repo>/../peers/llama.cpp. Layout produced:
#     DEST/dl/llama_cpp_python-<ver>.tar.gz   downloaded sdist
#     DEST/src/                              vendor/llama.cpp from the sdist
#     DEST/build/bin/llama-*                 binaries (llama.cpp tools + our llama-logits)
#     DEST/BUILD-INFO.txt                    version, sha256, cmake flags, build time
# Environment:
#   LLAMA_CPP_PYTHON_VERSION  sdist version (default 0.3.36; its sha256 is verified)
#   JOBS                      parallel build jobs (default 2)
#   LLAMA_CMAKE_ARGS          extra cmake configure arguments (e.g. "-DGGML_CUDA=ON")
#   PYTHON                    python interpreter used for pip (default python3)
#   CXX                       C++ compiler for llama-logits (default g++; CMake also
#                             reads it on the first configure)
#   LLAMA_LOGITS_LDFLAGS      extra link flags for llama-logits (the default link line
#                             covers a CPU-only build; e.g. a CUDA build needs
#                             "-L/usr/local/cuda/lib64 -lcudart -lcublas -lcuda")
# Idempotent: download, unpack and configure are skipped when already done;
# the build step is incremental. GGML_NATIVE=ON tunes the binaries to this CPU:
# build on the machine that runs the benchmarks.
#
# Usage of the binaries (checked with 0.3.36; B=DEST/build/bin):
#   token ids only, model's default BOS handling (SmolLM2: no BOS; Gemma 3: BOS 2):
#     $B/llama-tokenize -m M.gguf -p "TEXT" --ids --log-disable
#   never add BOS:                 ... --ids --no-bos --log-disable
#   special tokens as plain text:  ... --ids --no-parse-special --log-disable
#   text from a file / stdin:      -f FILE  or  --stdin
#   (llama-tokenize ignores --override-kv; to get a BOS on a model whose GGUF
#    says add_bos_token=false, put the BOS text, e.g. "<|im_start|>", in the prompt)
#   perplexity, context 2048, 16 threads:
#     $B/llama-perplexity -m M.gguf -f text.raw -c 2048 -b 2048 -t 16 [--chunks N]
#   (each chunk of 2048 tokens is scored on its second half only; the first token
#    of every chunk is replaced by BOS when the GGUF has add_bos_token=true.
#    Disable that with --override-kv tokenizer.ggml.add_bos_token=bool:false)
#   logits for every position of a token-id list (our tools/llama-logits, linked
#   statically against the libraries built here; CPU, flash attention on, no BOS
#   added, one llama_decode; output raw little-endian f32 n_tokens x n_vocab):
#     $B/llama-logits M.gguf --ids 1,2,3 --out logits.f32 [-t 16] [--ctx N] [--kv-info]
#     $B/llama-logits M.gguf --ids-file ids.txt --out logits.f32   (ids split by , or space)
#   (stdout: {"n_tokens":N,"n_vocab":V}; exit 1 bad args/ids, 2 load, 3 context,
#    4 decode, 5 output I/O; -v shows llama.cpp's log)
#   f32 model from a quantized GGUF (dequantize):
#     $B/llama-quantize --allow-requantize M.Q4_1.gguf M.f32.gguf F32
#   f32 GGUF from an HF folder (needs torch, transformers; config.json must name
#   "architectures"):
#     python DEST/src/convert_hf_to_gguf.py HF_DIR --outtype f32 --outfile M.f32.gguf
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="${1:-$REPO/../peers/llama.cpp}"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
JOBS="${JOBS:-2}"
PYTHON="${PYTHON:-python3}"
TARGETS=(llama-tokenize llama-perplexity llama-simple llama-quantize llama-bench)

# sha256 of sdists we have built from; other versions are accepted but not verified.
declare -A KNOWN_SHA256=(
  [0.3.36]=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
)

log() { printf '[build-llama-cpp] %s\n' "$*" >&2; }

# --- tools: cmake (system one if >= 3.14, else from PyPI in a private venv) ---
TOOLS_VENV="$DEST/.tools-venv"
cmake_ok() {
  command -v "$1" >/dev/null 2>&1 || return 1
  local v
  v="$("$1" --version | head -n1 | awk '{print $3}')"
  [ "$(printf '%s\n3.14\n' "$v" | sort -V | head -n1)" = "3.14" ]
}
if cmake_ok cmake; then
  CMAKE=cmake
elif [ -f "$TOOLS_VENV/.complete" ] && cmake_ok "$TOOLS_VENV/bin/cmake"; then
  CMAKE="$TOOLS_VENV/bin/cmake"
else
  log "installing cmake + ninja from PyPI into $TOOLS_VENV"
  rm -rf "$TOOLS_VENV"
  "$PYTHON" -m venv "$TOOLS_VENV"
  "$TOOLS_VENV/bin/pip" install --quiet --disable-pip-version-check 'cmake==3.31.6' 'ninja==1.11.1.4'
  touch "$TOOLS_VENV/.complete"
  CMAKE="$TOOLS_VENV/bin/cmake"
fi
export PATH="$TOOLS_VENV/bin:$PATH"
GEN=()
if command -v ninja >/dev/null 2>&1; then GEN=(-G Ninja); fi

# --- download the sdist ---
SDIST="$DEST/dl/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$SDIST" ]; then
  log "downloading llama-cpp-python==$VERSION sdist from PyPI"
  mkdir -p "$DEST/dl"
  TMPD="$(mktemp -d "$DEST/dl/.tmp.XXXXXX")"
  # --no-binary only for llama-cpp-python: build requirements (cmake, ...) that pip
  # installs to read the sdist metadata may then come as wheels (":all:" would
  # compile cmake from source).
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
    --no-binary=llama-cpp-python "llama-cpp-python==$VERSION" -d "$TMPD"
  mv "$TMPD/llama_cpp_python-$VERSION.tar.gz" "$SDIST"
  rm -rf "$TMPD"
fi
SHA="$(sha256sum "$SDIST" | awk '{print $1}')"
if [ -n "${KNOWN_SHA256[$VERSION]:-}" ]; then
  if [ "$SHA" != "${KNOWN_SHA256[$VERSION]}" ]; then
    log "sha256 mismatch for $SDIST: $SHA != ${KNOWN_SHA256[$VERSION]}"; exit 1
  fi
  log "sdist sha256 verified: $SHA"
else
  log "sdist sha256 (unverified version): $SHA"
fi

# --- unpack vendor/llama.cpp ---
SRC="$DEST/src"
if [ ! -f "$SRC/.from-sdist" ] || [ "$(cat "$SRC/.from-sdist")" != "$VERSION $SHA" ]; then
  log "unpacking vendor/llama.cpp into $SRC"
  TMPD="$(mktemp -d "$DEST/.src.tmp.XXXXXX")"
  tar -xzf "$SDIST" -C "$TMPD" --strip-components=3 "llama_cpp_python-$VERSION/vendor/llama.cpp"
  # The sdist keeps the submodule's ".git" pointer file; it points nowhere here.
  rm -f "$TMPD/.git"
  echo "$VERSION $SHA" > "$TMPD/.from-sdist"
  rm -rf "$SRC" "$DEST/build"
  mv "$TMPD" "$SRC"
fi

# --- configure + build ---
BUILD="$DEST/build"
CMAKE_FLAGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=OFF
  -DGGML_NATIVE=ON
  -DGGML_OPENMP=ON
  -DLLAMA_OPENSSL=OFF
  -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_SERVER=OFF
  -DLLAMA_BUILD_APP=OFF
  -DLLAMA_BUILD_EXAMPLES=ON
  -DLLAMA_BUILD_TOOLS=ON
  # ggml's AMX matmul for quantized types segfaults on this project's Intel (Sapphire Rapids class)
  # machines (ggml_backend_amx_mul_mat, seen with 0.3.36 on every Q4_1/Q4_K_M model): keep it out of
  # the build. -U cancels the macros -march=native defines, whatever their order; elsewhere a no-op.
  "-DCMAKE_C_FLAGS=-U__AMX_INT8__ -U__AMX_TILE__ -U__AMX_BF16__"
  "-DCMAKE_CXX_FLAGS=-U__AMX_INT8__ -U__AMX_TILE__ -U__AMX_BF16__"
)
# shellcheck disable=SC2206
EXTRA=(${LLAMA_CMAKE_ARGS:-})
START=$(date +%s)
FRESH=0
# A build configured with other flags is configured afresh.
FLAGS_STAMP="$BUILD/.configure-flags"
if [ -f "$BUILD/CMakeCache.txt" ] && [ "$(cat "$FLAGS_STAMP" 2>/dev/null)" != "${CMAKE_FLAGS[*]} ${EXTRA[*]:-}" ]; then
  log "cmake flags changed: configuring afresh"
  rm -rf "$BUILD"
fi
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  FRESH=1
  log "configuring: ${CMAKE_FLAGS[*]} ${EXTRA[*]:-}"
  "$CMAKE" -S "$SRC" -B "$BUILD" "${GEN[@]}" "${CMAKE_FLAGS[@]}" "${EXTRA[@]}"
  echo "${CMAKE_FLAGS[*]} ${EXTRA[*]:-}" > "$FLAGS_STAMP"
fi
log "building ${TARGETS[*]} with -j$JOBS"
"$CMAKE" --build "$BUILD" --config Release -j "$JOBS" --target "${TARGETS[@]}"
END=$(date +%s)
# Remember how long the from-scratch configure + build took (later runs are incremental).
if [ "$FRESH" = 1 ]; then echo "$((END - START))" > "$BUILD/.full-build-seconds"; fi

for t in "${TARGETS[@]}"; do
  [ -x "$BUILD/bin/$t" ] || { log "missing binary $BUILD/bin/$t"; exit 1; }
done

# --- llama-logits: our own program (tools/llama-logits) linked statically ---
# against the libraries built above (libllama.a, libggml*.a). Recompiled only
# when the binary is older than its source or any of those libraries.
LOGITS_SRC="$REPO/tools/llama-logits/llama_logits.cpp"
LOGITS_BIN="$BUILD/bin/llama-logits"
CXX="${CXX:-g++}"
LLAMA_LIB="$(find "$BUILD" -name libllama.a -print -quit)"
[ -n "$LLAMA_LIB" ] || { log "libllama.a not found under $BUILD"; exit 1; }
mapfile -t GGML_LIBS < <(find "$BUILD" -name 'libggml*.a' | sort)
[ "${#GGML_LIBS[@]}" -gt 0 ] || { log "no libggml*.a found under $BUILD"; exit 1; }
LOGITS_STALE=0
if [ ! -x "$LOGITS_BIN" ]; then
  LOGITS_STALE=1
else
  for dep in "$LOGITS_SRC" "$LLAMA_LIB" "${GGML_LIBS[@]}"; do
    if [ "$dep" -nt "$LOGITS_BIN" ]; then LOGITS_STALE=1; break; fi
  done
fi
LOGITS_CMD=("$CXX" -O2 -std=c++17 -fopenmp
  -I"$SRC/include" -I"$SRC/ggml/include"
  "$LOGITS_SRC" -o "$LOGITS_BIN.tmp"
  -Wl,--start-group "$LLAMA_LIB" "${GGML_LIBS[@]}" -Wl,--end-group
  -lpthread -ldl -lm)
# shellcheck disable=SC2206
LOGITS_CMD+=(${LLAMA_LOGITS_LDFLAGS:-})
if [ "$LOGITS_STALE" = 1 ]; then
  log "compiling llama-logits: ${LOGITS_CMD[*]}"
  LSTART=$(date +%s)
  "${LOGITS_CMD[@]}"
  mv "$LOGITS_BIN.tmp" "$LOGITS_BIN"
  echo "$(($(date +%s) - LSTART))" > "$BUILD/.llama-logits-seconds"
else
  log "llama-logits is up to date"
fi
[ -x "$LOGITS_BIN" ] || { log "missing binary $LOGITS_BIN"; exit 1; }
{
  echo "llama-cpp-python sdist: $VERSION"
  echo "sdist sha256: $SHA"
  echo "source: $SRC (vendor/llama.cpp)"
  echo "cmake: $("$CMAKE" --version | head -n1)"
  echo "cmake flags: ${CMAKE_FLAGS[*]} ${EXTRA[*]:-}"
  echo "full configure+build seconds: $(cat "$BUILD/.full-build-seconds" 2>/dev/null || echo unknown) with -j$JOBS"
  echo "build seconds (this run): $((END - START))"
  echo "llama-logits: $LOGITS_SRC ($(cat "$BUILD/.llama-logits-seconds" 2>/dev/null || echo unknown) s to compile)"
  echo "llama-logits compile: ${LOGITS_CMD[*]/%.tmp/}"
  echo "binaries:"
  for t in "${TARGETS[@]}" llama-logits; do echo "  $BUILD/bin/$t"; done
} > "$DEST/BUILD-INFO.txt.tmp"
mv "$DEST/BUILD-INFO.txt.tmp" "$DEST/BUILD-INFO.txt"
cat "$DEST/BUILD-INFO.txt"
