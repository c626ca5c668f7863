#!/usr/bin/env python3
"""lm-eval reference for the zero-shot task scores of `twossp-engine tasks`.

Purpose
-------
Runs EleutherAI's lm-evaluation-harness (lm-eval) with its HF transformers backend
(`HFLM`) on a local model folder and on our task files (data/tasks/, built by
scripts/fetch-tasks.sh), and writes a JSON fixture that the Rust tests compare with:
per task acc / acc_norm, and per document the exact (context, continuation) strings of
every request, lm-eval's per-choice log-likelihood and is_greedy, the gold index, and
how HFLM split each request into tokens (context and continuation token counts). The
fixture's "format" entry describes every field.

The task configs are tools/lmeval_tasks/*.yaml (and mmlu/): lm-eval's own configs with
only the data location changed (dataset_path json + data_files; no train split). Before
running, this script loads lm-eval's upstream YAMLs and checks that every prompt/scoring
field of each local config equals upstream's (and that the !function hooks are lm-eval's
own functions); it stops if not.

How to run (from the repository root, or anywhere: it changes into the repository root)
-------------------------------------------------------------------------------------
    scripts/fetch-tasks.sh
    python tools/lmeval_reference.py --model tests/fixtures/llama --limit 8 \\
        --mmlu-subjects abstract_algebra,anatomy --mmlu-limit 4 \\
        --out tests/fixtures/tasks/llama.json
    python tools/lmeval_reference.py --model models/SmolLM2-135M-Instruct.Q4_1 --limit 20 \\
        --compact-mmlu --out tests/fixtures/tasks/smollm2-135m-instruct-q4_1.json

Everything runs offline (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1, TRANSFORMERS_OFFLINE=1
are set here), on the CPU in float32, batch size 1, one torch thread by default
(--threads). `--limit N` is lm-eval's: the first N documents of each task's evaluation
split, for MMLU per subject. `--mmlu-subjects` runs only those subjects and reports their
size-weighted mean (lm-eval's group aggregation); without it the `local_mmlu` group (all
57 subjects) is run. `--num-fewshot K` passes K to lm-eval (fewshot seed 1234).

Versions it was run with
------------------------
    python 3.11, lm-eval 0.4.13, torch 2.15.0 (CPU), transformers 5.25.0, tokenizers 0.23.3,
    datasets 5.2.0, numpy 2.4.6
The fixture records the versions it was made with; the script warns when lm-eval is not
0.4.13 (the configs and the upstream check are written against that version).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import platform
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK_DIR = os.path.join(REPO, "tools", "lmeval_tasks")
LMEVAL_VERSION = "0.4.13"

# our task name -> (local lm-eval task, upstream YAML relative to lm_eval/tasks, data files)
TASKS = {
    "arc_easy": ("local_arc_easy", "arc/arc_easy.yaml", ["arc_easy/test.jsonl"]),
    "arc_challenge": ("local_arc_challenge", "arc/arc_challenge.yaml", ["arc_challenge/test.jsonl"]),
    "hellaswag": ("local_hellaswag", "hellaswag/hellaswag.yaml", ["hellaswag/validation.jsonl"]),
    "piqa": ("local_piqa", "piqa/piqa.yaml", ["piqa/validation.jsonl"]),
    "winogrande": ("local_winogrande", "winogrande/default.yaml", ["winogrande/validation.jsonl"]),
    "mmlu": ("local_mmlu", None, ["mmlu/test.jsonl", "mmlu/dev.jsonl"]),
}
# Config keys that may differ between a local task and its upstream twin: where the data
# come from, the task's name, and the train split (not shipped offline).
ALLOWED_DIFF = {"task", "tag", "dataset_path", "dataset_name", "dataset_kwargs", "training_split"}


def die(msg: str) -> None:
    print(f"lmeval_reference.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------- config check
def same_function(a, b) -> bool:
    """Two !function hooks are the same code: same source file and same source text."""
    try:
        return (os.path.realpath(inspect.getsourcefile(a)) == os.path.realpath(inspect.getsourcefile(b))
                and inspect.getsource(a) == inspect.getsource(b))
    except (TypeError, OSError):
        return a is b


def compare_configs(local: dict, upstream: dict, name: str, allowed: set) -> None:
    keys = (set(local) | set(upstream)) - allowed
    for k in sorted(keys):
        a, b = local.get(k), upstream.get(k)
        if callable(a) or callable(b):
            ok = callable(a) and callable(b) and same_function(a, b)
        else:
            ok = a == b
        if not ok:
            die(f"{name}: config field {k!r} differs from lm-eval's: {a!r} != {b!r}")


def check_local_configs(tasks: list[str], mmlu_subjects: list[str]) -> None:
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    up_root = os.path.dirname(lm_eval.tasks.__file__)
    for t in tasks:
        local_name, up_rel, _ = TASKS[t]
        if t == "mmlu":
            for s in mmlu_subjects:
                local = load_yaml(os.path.join(TASK_DIR, "mmlu", f"local_mmlu_{s}.yaml"))
                up = load_yaml(os.path.join(up_root, "mmlu", "default", f"mmlu_{s}.yaml"))
                # the per-subject filter replaces upstream's per-subject dataset_name
                compare_configs(local, up, f"local_mmlu_{s}", ALLOWED_DIFF | {"process_docs"})
                if local["task"] != f"local_mmlu_{s}" or local["description"] != up["description"]:
                    die(f"local_mmlu_{s}: task name or description differs")
            continue
        local = load_yaml(os.path.join(TASK_DIR, f"{local_name}.yaml"))
        up = load_yaml(os.path.join(up_root, up_rel))
        compare_configs(local, up, local_name, ALLOWED_DIFF)


def dump_json(obj, indent: int = 0) -> str:
    """JSON with one line per document record and per list of scalars (small, diffable)."""
    def compact(x):
        return json.dumps(x, ensure_ascii=False, separators=(",", ":"))
    pad, pad1 = " " * indent, " " * (indent + 1)
    if isinstance(obj, dict) and obj and not ("index" in obj and "ll" in obj):
        items = [f"{pad1}{json.dumps(k)}: {dump_json(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and obj and isinstance(obj[0], (dict, list)):
        return "[\n" + ",\n".join(pad1 + dump_json(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return compact(obj)


# ----------------------------------------------------------------- the run
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="local HF model folder")
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma list of " + ",".join(TASKS))
    ap.add_argument("--limit", type=int, required=True, help="first N docs per task (per MMLU subject)")
    ap.add_argument("--mmlu-subjects", default="", help="comma list (default: all 57, group local_mmlu)")
    ap.add_argument("--mmlu-limit", type=int, default=None, help="limit for MMLU subjects (default --limit)")
    ap.add_argument("--num-fewshot", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compact-mmlu", action="store_true",
                    help="for MMLU keep only the columns gold and ll per subject (docs 0..n-1; no "
                         "strings, token counts or is_greedy) to keep a 57-subject fixture small")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    tasks = [t for t in args.tasks.split(",") if t]
    for t in tasks:
        if t not in TASKS:
            die(f"unknown task {t!r} (known: {', '.join(TASKS)})")
    if args.limit <= 0:
        die("--limit must be positive")

    args.model = os.path.abspath(args.model)
    args.out = os.path.abspath(args.out)
    os.chdir(REPO)  # the task YAMLs name their data files relative to the repository root
    for t in tasks:
        for rel in TASKS[t][2]:
            if not os.path.isfile(os.path.join("data", "tasks", rel)):
                die(f"missing data/tasks/{rel}: run scripts/fetch-tasks.sh")

    import numpy as np
    import torch
    import transformers
    import tokenizers
    import datasets
    import lm_eval
    from lm_eval.api.metrics import aggregate_subtask_metrics
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if lm_eval.__version__ != LMEVAL_VERSION:
        print(f"warning: lm-eval {lm_eval.__version__}, written for {LMEVAL_VERSION}", file=sys.stderr)
    torch.set_num_threads(args.threads)

    all_subjects = sorted(f[len("local_mmlu_"):-len(".yaml")]
                          for f in os.listdir(os.path.join(TASK_DIR, "mmlu"))
                          if f.startswith("local_mmlu_") and f.endswith(".yaml"))
    subjects = [s for s in args.mmlu_subjects.split(",") if s] or all_subjects
    for s in subjects:
        if s not in all_subjects:
            die(f"unknown MMLU subject {s!r}")
    use_group = not args.mmlu_subjects
    mmlu_limit = args.mmlu_limit or args.limit

    check_local_configs(tasks, subjects)

    model_dir = os.path.abspath(args.model)
    # The tiny test fixtures ship only tokenizer.json (no tokenizer_config.json), so their HF
    # tokenizer knows no BOS/EOS token and HFLM's prefix_token_id would be None (tok_encode
    # decodes it). Then give HFLM the model config's bos_token_id (eos_token_id if none):
    # it is only used as the context of an empty-context request, which these tasks never
    # make, and it does not change how any string is tokenized.
    # Without tokenizer_config.json, AutoTokenizer picks a class from the config's model_type
    # (Qwen2Tokenizer, GemmaTokenizer...) that rebuilds parts of the pipeline and no longer
    # encodes like tokenizer.json (qwen2 fixture: different ids; gemma3 fixture: an error).
    # The engine reads tokenizer.json as it is, so load exactly that file then.
    tokenizer_arg = None
    if not os.path.isfile(os.path.join(model_dir, "tokenizer_config.json")):
        tokenizer_arg = transformers.PreTrainedTokenizerFast(
            tokenizer_file=os.path.join(model_dir, "tokenizer.json"))
    tok0 = tokenizer_arg or transformers.AutoTokenizer.from_pretrained(model_dir)
    prefix_token_id = None
    if tok0.bos_token_id is None and tok0.eos_token_id is None:
        cfg = transformers.AutoConfig.from_pretrained(model_dir)
        prefix_token_id = cfg.bos_token_id if cfg.bos_token_id is not None else cfg.eos_token_id
    lm = HFLM(pretrained=model_dir, tokenizer=tokenizer_arg, device="cpu", dtype="float32",
              batch_size=1, prefix_token_id=prefix_token_id)
    tm = TaskManager(include_path=TASK_DIR, include_defaults=False)

    def run(task_names, limit):
        t0 = time.time()
        res = lm_eval.simple_evaluate(
            model=lm, tasks=task_names, task_manager=tm, limit=limit, num_fewshot=args.num_fewshot,
            log_samples=True, bootstrap_iters=0, batch_size=1)
        return res, time.time() - t0

    out_tasks = {}
    timings = {}
    plain = [TASKS[t][0] for t in tasks if t != "mmlu"]
    results = {}
    if plain:
        res, dt = run(plain, args.limit)
        timings["non_mmlu_s"] = round(dt, 1)
        results.update({"results": res["results"], "samples": res["samples"], "n": res["n-samples"]})
    if "mmlu" in tasks:
        names = ["local_mmlu"] if use_group else [f"local_mmlu_{s}" for s in subjects]
        res_m, dt = run(names, mmlu_limit)
        timings["mmlu_s"] = round(dt, 1)
        for k, key in (("results", "results"), ("samples", "samples"), ("n", "n-samples")):
            results.setdefault(k, {}).update(res_m[key])

    def encode(ctx, cont):
        """HFLM's own split of one request into tokens (TemplateLM.loglikelihood)."""
        if ctx == "":
            cont_enc = lm.tok_encode(cont, add_special_tokens=False)
            if lm.prefix_token_id != cont_enc[0]:
                return [lm.prefix_token_id], cont_enc
            return cont_enc[:1], cont_enc[1:]
        return lm._encode_pair(ctx, cont)

    def f32(x) -> float:
        """lm-eval's log-likelihoods are float32 sums; keep the shortest decimal that reads
        back to the same float32 (exact, and about half as long as a float64 repr)."""
        return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))

    def doc_record(sample, gold, compact):
        args_ = [tuple(a) for a in sample["arguments"]]
        resps = [r[0] for r in sample["resps"]]
        rec = {"index": sample["doc_id"], "gold": gold,
               "ll": [f32(r[0]) for r in resps],
               "greedy": [int(bool(r[1])) for r in resps]}
        for m in ("acc", "acc_norm"):
            if m in sample:
                rec[m] = int(sample[m])
        if not compact:
            ctxs = [a[0] for a in args_]
            conts = [a[1] for a in args_]
            if all(c == ctxs[0] for c in ctxs):
                rec["context"] = ctxs[0]
                rec["continuations"] = conts
            else:
                rec["contexts"] = ctxs
                rec["continuation"] = conts[0] if all(c == conts[0] for c in conts) else conts
            ntok, trunc = [], []
            for c, x in args_:
                ce, xe = encode(c, x)
                ntok.append([len(ce), len(xe)])
                trunc.append(int(len(ce) + len(xe) > lm.max_length + 1))
            rec["n_tokens"] = ntok
            if any(trunc):
                rec["truncated"] = trunc
        return rec

    def gold_of(task_name, sample):
        if task_name == "local_winogrande":  # multiple inputs: gold is doc_to_text(doc)
            return {"1": 0, "2": 1}[sample["doc"]["answer"]]
        return int(sample["target"])

    def metric(r, m):
        v = r.get(f"{m},none")
        return None if v is None else float(v)

    for t in tasks:
        if t == "mmlu":
            continue
        name = TASKS[t][0]
        r = results["results"][name]
        out_tasks[t] = {
            "lm_eval_task": name, "n": int(results["n"][name]["effective"]),
            "acc": metric(r, "acc"), "acc_norm": metric(r, "acc_norm"),
            "docs": [doc_record(s, gold_of(name, s), False) for s in results["samples"][name]],
        }
    if "mmlu" in tasks:
        per = {}
        for s in subjects:
            name = f"local_mmlu_{s}"
            r = results["results"][name]
            recs = [doc_record(x, gold_of(name, x), args.compact_mmlu) for x in results["samples"][name]]
            per[s] = {"n": int(results["n"][name]["effective"]), "acc": metric(r, "acc")}
            if args.compact_mmlu:  # columns: docs 0..n-1 of the subject, in order
                assert [x["index"] for x in recs] == list(range(len(recs)))
                per[s]["gold"] = [x["gold"] for x in recs]
                per[s]["ll"] = [x["ll"] for x in recs]
            else:
                per[s]["docs"] = recs
        accs = [per[s]["acc"] for s in subjects]
        sizes = [per[s]["n"] for s in subjects]
        agg = float(aggregate_subtask_metrics(accs, sizes, True))
        if use_group:
            group_acc = metric(results["results"]["local_mmlu"], "acc")
            if abs(group_acc - agg) > 1e-12:
                die(f"local_mmlu acc {group_acc} != size-weighted mean {agg}")
        out_tasks["mmlu"] = {
            "lm_eval_task": "local_mmlu" if use_group else [f"local_mmlu_{s}" for s in subjects],
            "aggregate": "size-weighted mean of the subjects' acc (lm_eval.api.metrics."
                         "aggregate_subtask_metrics, weight_by_size=True)",
            "limit_per_subject": mmlu_limit,
            "n": int(sum(sizes)), "acc": agg, "acc_norm": None, "subjects": per,
        }

    tok = lm.tokenizer
    fixture = {
        "generator": "tools/lmeval_reference.py",
        "command": " ".join(
            ["tools/lmeval_reference.py", "--model", os.path.relpath(model_dir, REPO),
             "--tasks", ",".join(tasks), "--limit", str(args.limit)]
            + (["--mmlu-subjects", args.mmlu_subjects] if args.mmlu_subjects else [])
            + (["--mmlu-limit", str(args.mmlu_limit)] if args.mmlu_limit else [])
            + (["--num-fewshot", str(args.num_fewshot)] if args.num_fewshot else [])
            + (["--compact-mmlu"] if args.compact_mmlu else [])
            + ["--out", os.path.relpath(args.out, REPO)]),
        "versions": {"python": platform.python_version(), "lm_eval": lm_eval.__version__,
                     "torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__, "datasets": datasets.__version__,
                     "numpy": np.__version__},
        "model": {
            "path": os.path.relpath(model_dir, REPO),
            "files_sha256": {f: sha256_file(os.path.join(model_dir, f))
                             for f in ("config.json", "model.safetensors", "tokenizer.json")
                             if os.path.isfile(os.path.join(model_dir, f))},
            "dtype": "float32", "device": "cpu", "batch_size": 1, "threads": args.threads,
            "max_length": lm.max_length,
            "tokenizer": ("PreTrainedTokenizerFast(tokenizer_file=tokenizer.json)" if tokenizer_arg
                          else f"AutoTokenizer ({type(tok).__name__})"),
            "add_bos_token": lm.add_bos_token,
            "prefix_token_id": lm.prefix_token_id,
            "prefix_token_id_from_config": prefix_token_id is not None,
            "encode_adds_special_tokens": tok.encode("a") != tok.encode("a", add_special_tokens=False),
        },
        "data_sha256": {rel: sha256_file(os.path.join("data", "tasks", rel))
                        for t in tasks for rel in TASKS[t][2]},
        "limit": args.limit, "num_fewshot": args.num_fewshot, "fewshot_seed": 1234,
        "wall_seconds": timings,
        "format": {
            "index": "doc_id: position in the evaluation split (per MMLU subject: among that "
                     "subject's rows of data/tasks/mmlu/test.jsonl, in file order)",
            "gold": "gold choice index (WinoGrande: the gold context)",
            "ll": "lm-eval's log-likelihood of each request's continuation (float32 values, "
                  "shortest decimal that reads back to the same float32)",
            "greedy": "lm-eval's is_greedy per request (1: every continuation token is the argmax)",
            "acc/acc_norm": "lm-eval's process_results for the doc (1 correct, 0 not)",
            "context/continuations": "the exact strings of every request: one shared context and "
                                     "one continuation per choice; WinoGrande: contexts (one per "
                                     "choice) and the shared continuation",
            "n_tokens": "per request [context tokens, continuation tokens] as HFLM._encode_pair "
                        "splits it, before truncation",
            "truncated": "present when some request exceeds max_length+1 tokens: HFLM keeps the "
                         "last max_length+1 tokens of context+continuation (left truncation)",
            "mmlu.subjects.<s>.gold/ll": "with --compact-mmlu, instead of docs: gold index and the "
                                         "four log-likelihoods of docs 0..n-1 of the subject",
        },
        "tasks": out_tasks,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(dump_json(fixture) + "\n")
    os.replace(tmp, args.out)
    summary = ", ".join(f"{t} acc={v['acc']:.4f}" + (f" acc_norm={v['acc_norm']:.4f}" if v.get("acc_norm") is not None else "")
                        for t, v in out_tasks.items())
    print(f"wrote {args.out}: {summary}; {timings}")


if __name__ == "__main__":
    main()
