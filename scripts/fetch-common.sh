# Helpers shared by the fetch scripts (sourced, not run): logging, sha256 checks, temporary
# directories under the cache. The caller sets LOG_TAG, PY (a Python 3) and CACHE (an existing dir).

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | awk '{print $1}'
  else "$PY" -c 'import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"; fi
}
# verify FILE SHA256: exit with an error on mismatch (the file is left for inspection)
verify() {
  local got
  got="$(sha256_of "$1")"
  if [ "$got" != "$2" ]; then
    log "sha256 mismatch for $1"; log "  expected $2"; log "  got      $got"; return 1
  fi
}
# new_tmpdir: private temporary directory under the cache (all removed on exit)
TMPROOT="$(mktemp -d "$CACHE/.tmp.XXXXXX")"
trap 'rm -rf "$TMPROOT"' EXIT
new_tmpdir() { mktemp -d "$TMPROOT/XXXXXX"; }
