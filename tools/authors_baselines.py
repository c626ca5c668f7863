#!/usr/bin/env python3
"""Run the AUTHORS' OWN baseline pruning functions and record their decisions as JSON.

Purpose
-------
Issue 13 adds the 2SSP paper's baselines to twossp-engine (`prune --method shortgpt|window|
blockpruner|sleb|evopress|slicegpt`). This driver produces the reference the engine is checked
against: it imports and calls the functions the authors wrote, on a local HF model folder,
on calibration windows given as token ids (so the engine and the authors' code see identical
windows), in float32 on the CPU, and writes what they decided:

  method        code that decides (imported, never copied)              repository
  ------------  -----------------------------------------------------  ---------------------------
  shortgpt      src/pruning.py  shortGPT(model, n, windows)             FabrizioSandri/2SSP
  window        src/pruning.py  window_based(model, n, windows)         FabrizioSandri/2SSP
  blockpruner   src/pruning.py  blockpruner(model, n, window)           FabrizioSandri/2SSP
  evopress      src/evopress.py evopress(model, n, tok, docs)           FabrizioSandri/2SSP
  slicegpt      src/slicegpt.py slicegpt(path, s, windows)              FabrizioSandri/2SSP
  sleb          sleb.py         sleb(...)                               jiwonsong-dev/SLEB

The 2SSP authors' repository has NO SLEB (main.py offers 2ssp, window_based, shortgpt,
blockpruner, evopress, slicegpt). SLEB is therefore run from the SLEB authors' official code
(Song et al., ICML 2024, github.com/jiwonsong-dev/SLEB), whose sleb() is called as is.

None of their code is in this repository. Check the two repositories out elsewhere (the
commits below) and point --authors-src / --sleb-src at them, e.g.

    git --git-dir=<mirror of FabrizioSandri/2SSP> archive 88ab66024881d55bf22332293e1b431015bb9d59 \
        main.py src | tar x -C /work/peers/2ssp-authors-src
    git --git-dir=<mirror of jiwonsong-dev/SLEB> archive d07129af60520e751087b8abb04a268a3c7ec861 \
        sleb.py utils | tar x -C /work/peers/sleb-authors-src

then apply the adaptations listed below (benches/authors-baselines.md has the exact diff).

How to run (from the repository root; the reference in tests/fixtures/baselines_authors.json)
---------------------------------------------------------------------------------------------
    target/release/twossp-engine --threads 1 tokenize --model models/SmolLM2-135M-Instruct.Q4_1 \
        --data data/calib-sotu.jsonl --json --limit 16384 > /work/peers/baselines/engine-ids-16384.json
    PY=/tmp/venv/bin/python
    $PY tools/authors_baselines.py --model models/SmolLM2-135M-Instruct.Q4_1 \
        --engine-ids /work/peers/baselines/engine-ids-16384.json --data data/calib-sotu.jsonl \
        --seq-len 512 --samples 8 --search-samples 1 --sparsity 0.375 --threads 1 \
        --methods shortgpt,window,blockpruner,sleb,evopress,slicegpt \
        --evopress-generations 10 --evopress-offspring 16 --evopress-initially-generated 32 \
        --evopress-initial-tokens 512 --evopress-tokens-per-selection 512,2048 \
        --out tests/fixtures/baselines_authors.json --store-windows 8
  (each method can also be run alone and merged into the same file with --merge)

Calibration windows
-------------------
  --engine-ids FILE  JSON: a list of windows (lists of token ids), or the object printed by
                     `twossp-engine tokenize --json` ({"n_tokens", "ids"}: one flat list that is
                     cut into consecutive non-overlapping --seq-len windows, tail dropped).
  --data FILE.jsonl  documents ("text" field, file order). Without --engine-ids the windows come
                     from the authors' own get_calibration (src/utilities.py:153): documents joined
                     with "\\n\\n", tokenized once without special tokens, consecutive --seq-len
                     windows. With both, the driver checks that the two agree and refuses otherwise.
  Which windows each method gets (as main.py:99-105 does with 256/32/1 windows of 2048):
    shortgpt, window, slicegpt : windows[0:--samples]           (authors' default 256 x 2048)
    blockpruner, sleb          : windows[0:--search-samples] concatenated (default 1, window 0)
    evopress                   : windows[0:--evopress-samples] (default --samples); with
                                 --evopress-data authors: their collect_samples_with_join over
                                 --data instead (each document tokenized alone, "\\n\\n" between)

Budget: main.py:166-175 - for shortgpt, window, blockpruner, evopress, (and sleb here) the number
of blocks is ceil(s * L) when s * L is not an integer; slicegpt gets s itself.

Versions it was run with
------------------------
    python 3.11.7, torch 2.15.0 (CPU), transformers 5.25.0, tokenizers 0.23.3, numpy 2.4.6,
    lm_eval 0.4.13 (imported by their src/evaluation.py, unused); recorded in the JSON too.
    The authors targeted torch 2.3.1 / transformers 4.47.1 (SLEB: 2.2.0 / 4.37.2) on GPUs.

Adaptations (their algorithms untouched; each edit in their checkout is marked "# ADAPTED")
------------------------------------------------------------------------------------------
In the 2SSP checkout (a git repo: commit 1 pristine, the working tree adapted):
  1. utilities.loadModel: torch.float32 instead of the name-based bf16/fp16; device_map=None
     (CPU; accelerate is not installed). Same as benches/authors-comparison.md.
  2. utilities.maskModel: transformers 5 decoder layers return a tensor and unpack TWO values
     from self_attn: the whole-block identity returns hidden_states (was (hidden_states,)), the
     attention identity returns (0, None) (was (0, None, None)). Same functions (identity / +0).
  3. utilities.compute_intermediate_outputs: the hook wraps a tensor output in a tuple before
     its own output[0][0, -1] (with transformers 5 that expression would index a scalar).
  4. evaluation.evaluate_perplexity: default device "cuda" -> "cpu".
  5. evopress.py: two module globals ARGS_OVERRIDE (merged into its args dict after the
     model-type sequence-length rule) and NUM_GENERATIONS_OVERRIDE, so reduced CPU settings can
     be run; empty/None = the authors' defaults.
  6. slicegpt.py: dtype float32; a module global LOCAL_ADAPTER_NAME selects the adapter for a
     local folder whose name is not one of the four hard-coded models (here "meta-llama/Llama-2-
     7b-hf" = the Llama adapter, for model_type llama).
  7. slicegpt_utils/adapters/llama_adapter.py, CompressedLlamaDecoderLayer.forward: the
     transformers 5 calling convention (attention returns 2 values, cache and position
     embeddings come through **kwargs, the layer returns a tensor). Same arithmetic.
In the SLEB checkout:
  8. utils/onoff_utils/onoff_llama.py, OnOff_LlamaDecoderLayer.forward: the same transformers 5
     calling convention as 7. Same arithmetic (skip = identity).
In this driver (monkeypatches of names in their modules, no file edits):
  9. pruning.evaluate_perplexity (used by blockpruner) is called with seq_len = --seq-len instead
     of the hard-coded 2048 (with 2048-token windows this changes nothing; with a shorter window
     their function would divide by zero windows).
 10. SLEB: get_llm returns the model loaded here (f32, CPU, model.seqlen = --seq-len, a name
     containing "llama" so their dispatch picks onoff_llama); get_trainloaders returns the
     calibration windows (SLEB's default is 128 shuffled WikiText-2 train lines); get_loss is
     called with device cpu (was cuda:0); eval_ppl/eval_zeroshot False.
 11. SliceGPT: placeholder modules for `accelerate` and `ml_collections` (not installed; only
     distribute_model and a ConfigDict holding config.device use them); distribute_model is a
     no-op on the CPU.
 12. EvoPress with --evopress-data engine: collect_samples_with_join returns the engine windows.
 13. Instrumentation only (pass-through wrappers): captured hidden states (ShortGPT / Window
     scores are recomputed from them with the formula of pruning.py:90-99 / :43-51 and checked
     against their mask), DEBUG log lines (BlockPruner perplexities), get_loss values (SLEB),
     selection/compute_fitness (EvoPress fitnesses and minibatch windows), pca_calc eigenvalues
     (SliceGPT explained variance), wall and process time per method.
torch.set_num_threads(--threads); their set_seed(--seed) before every method (main.py:161).
"""

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import re
import sys
import tempfile
import time
import types

AUTHORS_COMMIT = "88ab66024881d55bf22332293e1b431015bb9d59"
SLEB_COMMIT = "d07129af60520e751087b8abb04a268a3c7ec861"
ALL_METHODS = ["shortgpt", "window", "blockpruner", "sleb", "evopress", "slicegpt"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="local HF model folder (config.json + safetensors)")
    p.add_argument("--authors-src", default="/work/peers/2ssp-authors-src",
                   help="checkout of FabrizioSandri/2SSP (main.py, src/), adapted as in the docstring")
    p.add_argument("--sleb-src", default="/work/peers/sleb-authors-src",
                   help="checkout of jiwonsong-dev/SLEB (sleb.py, utils/), adapted as in the docstring")
    p.add_argument("--methods", default="shortgpt,window,blockpruner,sleb",
                   help="comma list of " + ",".join(ALL_METHODS))
    p.add_argument("--sparsity", type=float, default=0.375)
    p.add_argument("--engine-ids", help="JSON token ids: list of windows, or twossp-engine tokenize --json")
    p.add_argument("--data", help="JSONL documents with a 'text' field")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--samples", type=int, default=256, help="windows for shortgpt/window/slicegpt (authors: 256)")
    p.add_argument("--search-samples", type=int, default=1, help="windows for blockpruner/sleb (authors: 1)")
    p.add_argument("--evopress-samples", type=int, default=None, help="windows for evopress (default --samples)")
    p.add_argument("--evopress-data", choices=["engine", "authors"], default="engine")
    p.add_argument("--evopress-generations", type=int, default=None, help="default: int(n*(L-n)/1.5)")
    p.add_argument("--evopress-offspring", type=int, default=None, help="authors: 32")
    p.add_argument("--evopress-initially-generated", type=int, default=None, help="authors: 64")
    p.add_argument("--evopress-initial-tokens", type=int, default=None, help="authors: 2048")
    p.add_argument("--evopress-tokens-per-selection", default=None, help="authors: 2048,32768")
    p.add_argument("--evopress-survivors", default=None, help="authors: 2,1")
    p.add_argument("--evopress-max-mutations", type=int, default=None, help="authors: 3")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--store-windows", type=int, default=0,
                   help="store the first K windows' token ids in the output (0 = recipe only)")
    p.add_argument("--out", required=True)
    p.add_argument("--merge", action="store_true", help="add/replace methods in an existing --out")
    return p.parse_args()


# ----------------------------------------------------------------------------- helpers

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 22)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def read_docs(path):
    docs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                docs.append(json.loads(line)["text"])
    return docs


class DocList:
    """List-backed stand-in for the few datasets.Dataset features their loaders use."""

    def __init__(self, texts):
        self.texts = list(texts)

    def __len__(self):
        return len(self.texts)

    def select(self, indices):
        return DocList([self.texts[i] for i in indices])

    def __getitem__(self, key):
        if key == "text":
            return self.texts
        if isinstance(key, slice):
            return DocList(self.texts[key])
        return {"text": self.texts[key]}

    def __iter__(self):
        return iter({"text": t} for t in self.texts)


def dumps(obj):
    """Indented JSON with every list of plain numbers on one line (keeps the token ids compact)."""
    text = json.dumps(obj, indent=1)
    return re.sub(r"\[\s*([-0-9.eE+,\s]+?)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


def blocks_for_sparsity(s, num_blocks):
    """main.py:166-175 for window_based/shortgpt/blockpruner/evopress (here also SLEB)."""
    x = s * num_blocks
    if not float(x).is_integer():
        return int(math.ceil(x))
    return int(x)


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


def ids_of(mask):
    return [i for i, m in enumerate(mask) if int(m) == 1]


# ----------------------------------------------------------------------------- methods

def run_shortgpt_or_window(ctx, which):
    torch, pruning = ctx["torch"], ctx["pruning"]
    model = ctx["load"]()
    L = len(model.model.layers)
    n = blocks_for_sparsity(ctx["s"], L)
    windows = ctx["windows"][: ctx["args"].samples]
    captured = {}
    orig = pruning.compute_intermediate_outputs

    def capture(model_, calib, last_token):
        out = orig(model_, calib, last_token)
        captured["h"] = out
        return out

    pruning.compute_intermediate_outputs = capture
    ctx["set_seed"](ctx["args"].seed)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        if which == "shortgpt":
            mask = pruning.shortGPT(model, n, windows)
        else:
            mask = pruning.window_based(model, n, windows)
    finally:
        pruning.compute_intermediate_outputs = orig
    t1, c1 = time.perf_counter(), time.process_time()
    removed = ids_of(mask)
    h = captured["h"]  # list over windows of [L, D] (output of every block at the last token)
    cos = torch.nn.functional.cosine_similarity
    res = {
        "code": "src/pruning.py:shortGPT (lines 81-107)" if which == "shortgpt"
        else "src/pruning.py:window_based (lines 28-64)",
        "num_blocks": L, "blocks_to_remove": n, "achieved_block_fraction": n / L,
        "calibration_windows": list(range(len(windows))), "seq_len": int(windows[0].shape[1]),
        "removed_blocks": removed,
        "seconds_wall": t1 - t0, "seconds_cpu": c1 - c0,
    }
    if which == "shortgpt":
        sim = [0.0] * L
        for ci in range(len(h)):
            for li in range(1, L):
                sim[li] += cos(h[ci][li - 1], h[ci][li], dim=0).item()
        infl = [1 - b / len(h) for b in sim]
        order = sorted(range(L), key=lambda i: infl[i])
        assert sorted(order[:n]) == removed, (order[:n], removed)
        res["block_influence"] = infl
        res["influence_note"] = ("1 - mean over windows of cos(out[l-1], out[l]) at the last token; "
                                 "block 0 is never scored (influence fixed at 1 - 0/N = 1)")
        res["ranking_ascending_influence"] = order
        if n < L:
            res["margin_next_minus_last_removed"] = infl[order[n]] - infl[order[n - 1]]
    else:
        sims = {}
        for l1 in range(L):
            l2 = l1 + n
            if l2 >= L:
                continue
            v = [cos(h[ci][l1], h[ci][l2], dim=0).item() for ci in range(len(h))]
            sims[l1] = sum(v) / len(v)
        best = max(sims.values())
        res["window_mean_cosine"] = {str(k): v for k, v in sims.items()}
        res["window_note"] = ("key l1: mean over windows of cos(out[l1], out[l1+n]) at the last token; "
                              "removes l1+1..l1+n for the max (>= : ties go to the LARGER l1; start best_sim=0)")
        res["best_l1"] = removed[0] - 1
        srt = sorted(sims.values(), reverse=True)
        res["margin_best_minus_second"] = srt[0] - srt[1] if len(srt) > 1 else None
        res["check_best_equals_max"] = abs(sims[removed[0] - 1] - best) < 1e-12
    return res


def run_blockpruner(ctx):
    torch, pruning = ctx["torch"], ctx["pruning"]
    model = ctx["load"]()
    L = len(model.model.layers)
    n = blocks_for_sparsity(ctx["s"], L)
    k = ctx["args"].search_samples
    sample = torch.cat(ctx["windows"][:k], dim=1)
    seq_len = ctx["args"].seq_len
    orig_ep = pruning.evaluate_perplexity

    def ep(model_, input_ids, seq_len=2048, **kw):  # adaptation 9
        return orig_ep(model_, input_ids, seq_len=ctx["args"].seq_len, **kw)

    pruning.evaluate_perplexity = ep
    handler = ListHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    ctx["set_seed"](ctx["args"].seed)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        attn, mlp = pruning.blockpruner(model, n, sample)
    finally:
        pruning.evaluate_perplexity = orig_ep
        root.removeHandler(handler)
        root.setLevel(old_level)
    t1, c1 = time.perf_counter(), time.process_time()
    steps, cur = [], {}
    rx_c = re.compile(r"^\[(Attention|MLP)\] When pruning (\d+) perplexity is (\S+)$")
    rx_b = re.compile(r"^\[(Attention|MLP)\] Best to prune: (\d+) \((\S+)\)$")
    for msg in handler.records:
        m = rx_c.match(msg)
        if m:
            cur[int(m.group(2))] = float(m.group(3))
            continue
        m = rx_b.match(msg)
        if m:
            kind = "attn" if m.group(1) == "Attention" else "mlp"
            b, ppl = int(m.group(2)), float(m.group(3))
            vals = sorted(cur.values())
            steps.append({"kind": kind, "block": b, "ppl": ppl,
                          "runner_up_rel_gap": (vals[1] - vals[0]) / vals[0] if len(vals) > 1 else None,
                          "candidates": {str(i): v for i, v in sorted(cur.items())}})
            cur = {}
    assert sorted(s["block"] for s in steps if s["kind"] == "attn") == ids_of(attn)
    assert sorted(s["block"] for s in steps if s["kind"] == "mlp") == ids_of(mlp)
    full = sorted(set(ids_of(attn)) & set(ids_of(mlp)))
    return {
        "code": "src/pruning.py:blockpruner (lines 126-194)",
        "num_blocks": L, "blocks_to_remove": n,
        "note": "n iterations; each removes the best attention (lowest ppl) THEN the best MLP",
        "calibration_windows": list(range(k)), "seq_len": seq_len,
        "removed_attention_order": [s["block"] for s in steps if s["kind"] == "attn"],
        "removed_mlp_order": [s["block"] for s in steps if s["kind"] == "mlp"],
        "removal_order": [{"kind": s["kind"], "block": s["block"]} for s in steps],
        "removed_attention": ids_of(attn), "removed_mlp": ids_of(mlp),
        "whole_blocks_removed": full,
        "min_runner_up_rel_gap": min(s["runner_up_rel_gap"] for s in steps if s["runner_up_rel_gap"] is not None),
        "steps": steps,
        "seconds_wall": t1 - t0, "seconds_cpu": c1 - c0,
    }


def run_sleb(ctx):
    torch = ctx["torch"]
    args = ctx["args"]
    sys.path.insert(0, os.path.abspath(args.sleb_src))
    if "fire" not in sys.modules:
        try:
            import fire  # noqa: F401
        except ImportError:  # only used by sleb.py's __main__
            sys.modules["fire"] = types.ModuleType("fire")
    import sleb as sleb_mod
    from utils.onoff_utils import onoff_llama  # noqa: F401  (their layer wrapper)

    model = ctx["load"]()
    L = len(model.model.layers)
    n = blocks_for_sparsity(ctx["s"], L)
    k = args.search_samples
    ids = torch.cat(ctx["windows"][:k], dim=1)
    model.seqlen = args.seq_len
    model.name = "llama-architecture:" + os.path.basename(os.path.normpath(args.model))
    assert "opt" not in model.name.lower()

    class Enc:  # their TokenizerWrapper shape: .input_ids [1, N]
        def __init__(self, x):
            self.input_ids = x

    calls = []
    orig_loss = sleb_mod.get_loss

    def get_loss(model_, testenc, bs=1, device=None):  # adaptation 10 + instrumentation
        loss = orig_loss(model_, testenc, bs=bs, device=torch.device("cpu"))
        off = [i for i, layer in enumerate(model_.model.layers) if layer.pass_layer]
        calls.append((off, loss))
        return loss

    sleb_mod.get_llm = lambda name, device_map="auto": model
    sleb_mod.get_trainloaders = lambda name, nsamples=128, seed=0, seqlen=2048, model="", batch_size=1: Enc(ids)
    sleb_mod.get_loss = get_loss
    tmp = tempfile.mkdtemp(prefix="sleb-results-")
    ctx["set_seed"](args.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    sleb_mod.sleb(model_name=args.model, num_blocks=L, num_remove_blocks=n, early_barrier=1,
                  latter_barrier=1, seed=args.seed, nsamples=128, result_folder=tmp,
                  result_file="sleb_results.txt", dataset="engine-windows", eval_ppl=False,
                  eval_zeroshot=False)
    t1, c1 = time.perf_counter(), time.process_time()
    text = open(os.path.join(tmp, "sleb_results.txt")).read()
    order = json.loads(re.search(r"Block Removal Order: (\[.*\])", text).group(1))
    # split the calls into phases: phase p evaluates L-p-2 candidates (barriers 1/1)
    steps, pos, removed = [], 0, []
    ntok = ids.shape[1] // args.seq_len * args.seq_len
    for p in range(n):
        cnt = L - p - 2
        cand = {}
        for off, loss in calls[pos:pos + cnt]:
            extra = sorted(set(off) - set(removed))
            assert len(extra) == 1, (off, removed)
            cand[extra[0]] = loss
        pos += cnt
        best = min(cand.items(), key=lambda kv: kv[1])  # ties: first in order (= lower index)
        assert best[0] == order[p], (best, order)
        vals = sorted(cand.values())
        steps.append({"block": order[p], "loss_sum": best[1], "ppl": math.exp(best[1] / ntok),
                      "runner_up_rel_gap_loss": (vals[1] - vals[0]) / vals[0] if len(vals) > 1 else None,
                      "runner_up_rel_gap_ppl": math.exp((vals[1] - vals[0]) / ntok) - 1 if len(vals) > 1 else None,
                      "candidates_loss_sum": {str(b): v for b, v in sorted(cand.items())}})
        removed.append(order[p])
    return {
        "code": "jiwonsong-dev/SLEB sleb.py:sleb (lines 61-135) + get_loss (16-58)",
        "num_blocks": L, "blocks_to_remove": n,
        "note": ("iterative: each phase removes the alive block whose removal gives the lowest "
                 "summed NLL (mean CE x seqlen per window); barriers early=1, latter=1 keep the "
                 "first and last ALIVE blocks"),
        "calibration_windows": list(range(k)), "seq_len": args.seq_len,
        "removal_order": order, "removed_blocks": sorted(order),
        "loss_note": "loss_sum = sum over windows of mean next-token CE x seq_len; ppl = exp(loss_sum / (windows x seq_len))",
        "min_runner_up_rel_gap_loss": min(s["runner_up_rel_gap_loss"] for s in steps),
        "min_runner_up_rel_gap_ppl": min(s["runner_up_rel_gap_ppl"] for s in steps),
        "steps": steps,
        "seconds_wall": t1 - t0, "seconds_cpu": c1 - c0,
    }


def run_evopress(ctx):
    torch, args = ctx["torch"], ctx["args"]
    evo = ctx["import"]("src.evopress")
    model = ctx["load"]()
    L = len(model.model.layers)
    n = blocks_for_sparsity(ctx["s"], L)
    over = {}
    if args.evopress_offspring is not None:
        over["offspring"] = args.evopress_offspring
    if args.evopress_initially_generated is not None:
        over["initially_generated"] = args.evopress_initially_generated
    if args.evopress_initial_tokens is not None:
        over["initial_tokens"] = args.evopress_initial_tokens
    if args.evopress_tokens_per_selection is not None:
        over["tokens_per_selection"] = [int(x) for x in args.evopress_tokens_per_selection.split(",")]
    if args.evopress_survivors is not None:
        over["survivors_per_selection"] = [int(x) for x in args.evopress_survivors.split(",")]
    if args.evopress_max_mutations is not None:
        over["max_mutations"] = args.evopress_max_mutations
    nwin = args.evopress_samples or args.samples
    if args.evopress_data == "engine":
        windows = ctx["windows"][:nwin]
        over["calibration_sequence_length"] = int(windows[0].shape[1])
        over["calibration_tokens"] = int(windows[0].shape[1]) * len(windows)
        orig_collect = evo.collect_samples_with_join
        evo.collect_samples_with_join = lambda *a, **kw: list(windows)  # adaptation 12
    evo.ARGS_OVERRIDE = over
    evo.NUM_GENERATIONS_OVERRIDE = args.evopress_generations
    log = []
    orig_sel, orig_fit = evo.selection, evo.compute_fitness
    state = {"batch": None}
    data_windows = {}

    def fit(model_, data, target_logits):
        if state["batch"] is None:
            state["batch"] = [(window_index(d), int(d.shape[1])) for d in data]
        return orig_fit(model_, data, target_logits)

    def window_index(d):
        key = tuple(d[0, :16].tolist())
        return data_windows.get(key)

    def sel(model, candidates, num_survive, calibration_data, num_tokens, target_logits=None):
        if not data_windows:
            for i, w in enumerate(calibration_data):
                data_windows[tuple(w[0, :16].tolist())] = i
        state["batch"] = None
        out, fits = orig_sel(model, candidates, num_survive, calibration_data, num_tokens, target_logits)
        log.append({"candidates": len(candidates), "num_survive": num_survive, "num_tokens": num_tokens,
                    "minibatch_windows": state["batch"],
                    "survivors": [{"attn": ids_of(c["attn"]), "mlp": ids_of(c["mlp"]), "kl": f}
                                  for c, f in zip(out, fits)]})
        return out, fits

    evo.selection, evo.compute_fitness = sel, fit
    data = ctx["docs"] if ctx["docs"] is not None else DocList([])
    ctx["set_seed"](args.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        attn, mlp = evo.evopress(model, n, ctx["tokenizer"], data, drop_entire_block=False)
    finally:
        evo.selection, evo.compute_fitness = orig_sel, orig_fit
        if args.evopress_data == "engine":
            evo.collect_samples_with_join = orig_collect
    t1, c1 = time.perf_counter(), time.process_time()
    # objective of the result on all its calibration windows (their compute_kl_div)
    if args.evopress_data == "engine":
        calib = list(ctx["windows"][:nwin])
    else:
        calib = orig_collect_for(evo, ctx, over)
    pr = ctx["pruning"]
    with torch.no_grad():
        targets = [model(w).logits for w in calib]
        pr.maskModel(model, attnMask=attn, mlpMask=mlp)
        kl_full = evo.compute_kl_div(model, calib, targets)
        ppl = pr.evaluate_perplexity(model, torch.cat(calib, dim=1), seq_len=int(calib[0].shape[1]), enable_tqdm=False)
        pr.unmaskModel(model, attnMask=attn, mlpMask=mlp)
        ppl_dense = pr.evaluate_perplexity(model, torch.cat(calib, dim=1), seq_len=int(calib[0].shape[1]), enable_tqdm=False)
    defaults = {"calibration_tokens": 131072, "calibration_sequence_length": "4096 (llama, phi3), 2048 (qwen2), else 8192",
                "offspring": 32, "population_size": 1, "initially_generated": 64, "initial_tokens": 2048,
                "survivors_per_selection": [2, 1], "tokens_per_selection": [2048, 32768], "max_mutations": 3,
                "generations": "int(n * (L - n) / 1.5)"}
    return {
        "code": "src/evopress.py:evopress (lines 146-297), selection (103-143), compute_kl_div (51-96)",
        "num_blocks": L, "blocks_to_remove": n,
        "authors_defaults": defaults, "overrides_used": over,
        "generations_used": args.evopress_generations if args.evopress_generations is not None else int(n * (L - n) / 1.5),
        "calibration": ("engine windows 0..%d" % (nwin - 1)) if args.evopress_data == "engine"
        else "authors' collect_samples_with_join over --data",
        "removed_attention": ids_of(attn), "removed_mlp": ids_of(mlp),
        "whole_blocks_removed": sorted(set(ids_of(attn)) & set(ids_of(mlp))),
        "kl_on_all_calibration_windows": kl_full,
        "ppl_calibration_windows": ppl, "ppl_calibration_windows_dense": ppl_dense,
        "selections": log,
        "seconds_wall": t1 - t0, "seconds_cpu": c1 - c0,
    }


def orig_collect_for(evo, ctx, over):
    a = {"calibration_tokens": 131072, "calibration_sequence_length": 4096}
    a.update(over)
    return evo.collect_samples_with_join(ctx["docs"], ctx["tokenizer"],
                                         a["calibration_tokens"] // a["calibration_sequence_length"],
                                         a["calibration_sequence_length"])


def install_slicegpt_stubs():
    try:
        import ml_collections  # noqa: F401
    except ImportError:  # adaptation 11: config.py only needs an attribute bag
        m = types.ModuleType("ml_collections")

        class ConfigDict(types.SimpleNamespace):
            pass

        m.ConfigDict = ConfigDict
        sys.modules["ml_collections"] = m
    try:
        import accelerate  # noqa: F401
    except ImportError:  # adaptation 11: only distribute_model uses it (replaced by a no-op)
        def _unused(*a, **k):
            raise RuntimeError("accelerate placeholder called")
        acc = types.ModuleType("accelerate")
        acc.dispatch_model = acc.infer_auto_device_map = _unused
        accu = types.ModuleType("accelerate.utils")
        accu.get_balanced_memory = _unused
        acc.utils = accu
        sys.modules["accelerate"] = acc
        sys.modules["accelerate.utils"] = accu


def run_slicegpt(ctx):
    torch, args = ctx["torch"], ctx["args"]
    install_slicegpt_stubs()
    sg = ctx["import"]("src.slicegpt")
    rot = ctx["import"]("src.slicegpt_utils.rotate")
    cfg = json.load(open(os.path.join(args.model, "config.json")))
    if cfg["model_type"] != "llama":
        raise SystemExit("this driver maps only model_type llama to the authors' Llama adapter")
    sg.LOCAL_ADAPTER_NAME = "meta-llama/Llama-2-7b-hf"  # adaptation 6: the Llama adapter
    sg.distribute_model = lambda adapter: None  # adaptation 11
    D = cfg["hidden_size"]
    d = int((1 - ctx["s"]) * D)
    d -= d % 8
    sites = []
    orig_pca = rot.pca_calc

    def pca(X, ignore_masks=None):
        eig_val, eig_vec = orig_pca(X, ignore_masks)
        sites.append(eig_val.detach().double().cpu())
        return eig_val, eig_vec

    rot.pca_calc = pca
    windows = list(ctx["windows"][: args.samples])
    ctx["set_seed"](args.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        model = sg.slicegpt(os.path.abspath(args.model), ctx["s"], windows)
    finally:
        rot.pca_calc = orig_pca
    t1, c1 = time.perf_counter(), time.process_time()
    L = cfg["num_hidden_layers"]
    # sites: embeddings, then per layer (mlp input = after attention, layer output)
    names = ["embeddings"] + [f"layer{i}.{w}" for i in range(L) for w in ("attn_out_residual", "layer_out")]
    assert len(sites) == len(names), (len(sites), len(names))
    ev = []
    for name, e in zip(names, sites):
        kept = D if name == f"layer{L - 1}.layer_out" else d  # last layer output is not sliced (head not sliced)
        tot = float(e.sum())
        ev.append({"site": name, "kept_dims": kept, "eig_sum_total": tot,
                   "eig_sum_kept": float(e[:kept].sum()), "fraction_kept": float(e[:kept].sum()) / tot})
    fr = [x["fraction_kept"] for x in ev if x["kept_dims"] < D]
    pr = ctx["pruning"]
    with torch.no_grad():
        T = int(windows[0].shape[1])
        ppl_cal = pr.evaluate_perplexity(model, torch.cat(windows, dim=1), seq_len=T, enable_tqdm=False)
        held = list(ctx["windows"][args.samples: 2 * args.samples])
        ppl_held = pr.evaluate_perplexity(model, torch.cat(held, dim=1), seq_len=T, enable_tqdm=False) if held else None
        dense = ctx["load"]()
        ppl_cal_dense = pr.evaluate_perplexity(dense, torch.cat(windows, dim=1), seq_len=T, enable_tqdm=False)
        ppl_held_dense = pr.evaluate_perplexity(dense, torch.cat(held, dim=1), seq_len=T, enable_tqdm=False) if held else None
        dense_main = sum(p.numel() for p in dense.model.layers.parameters())
        dense_total = sum(p.numel() for p in dense.parameters())
        del dense
    layer0 = model.model.layers[0]
    shapes = {n_: list(p.shape) for n_, p in layer0.named_parameters()}
    return {
        "code": "src/slicegpt.py:slicegpt (lines 13-60) -> slicegpt_utils/rotate.py:rotate_and_slice_sequential",
        "num_blocks": L, "hidden_size": D, "sliced_dim": d,
        "width_rule": "d = int((1 - s) * hidden); d -= d % 8; ConstSlicingScheduler(d); head not sliced; last layer output D",
        "final_orientation": "random (np.random.rand -> QR, upper-left d x d; seed via set_seed)",
        "calibration_windows": list(range(len(windows))), "seq_len": T,
        "params_total_after": sum(p.numel() for p in model.parameters()),
        "params_main_after": sum(p.numel() for p in model.model.layers.parameters()),
        "params_total_dense": dense_total, "params_main_dense": dense_main,
        "layer0_shapes": shapes,
        "explained_variance_note": ("eigenvalues of the damped H = sum X^T X (float64, damp = 0.01 * mean diag) "
                                    "at each PCA site; fraction_kept = sum of the top kept_dims / trace"),
        "explained_variance_mean_fraction_kept": sum(fr) / len(fr),
        "explained_variance_min_fraction_kept": min(fr),
        "explained_variance": ev,
        "ppl_calibration_windows": ppl_cal, "ppl_calibration_windows_dense": ppl_cal_dense,
        "ppl_next_windows": ppl_held, "ppl_next_windows_dense": ppl_held_dense,
        "next_windows": list(range(args.samples, args.samples + len(held))),
        "seconds_wall": t1 - t0, "seconds_cpu": c1 - c0,
    }


# ----------------------------------------------------------------------------- main

def main():
    args = parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in ALL_METHODS:
            raise SystemExit(f"unknown method {m!r}; choose from {','.join(ALL_METHODS)}")
    if not args.engine_ids and not args.data:
        raise SystemExit("give --engine-ids and/or --data")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")

    import importlib
    import numpy as np
    import torch
    import transformers
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    sys.path.insert(0, os.path.abspath(args.authors_src))
    utilities = importlib.import_module("src.utilities")
    pruning = importlib.import_module("src.pruning")

    # tokenizer exactly as main.py:79
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=True, use_fast=False)
    docs = DocList(read_docs(args.data)) if args.data else None
    need = max(args.samples, args.search_samples,
               args.evopress_samples or 0, args.store_windows)
    windows = None
    source = {}
    if args.engine_ids:
        raw = json.load(open(args.engine_ids))
        if isinstance(raw, dict) and "ids" in raw:
            flat = raw["ids"]
            nw = len(flat) // args.seq_len
            windows = [torch.tensor([flat[i * args.seq_len:(i + 1) * args.seq_len]], dtype=torch.long) for i in range(nw)]
            source["engine_ids"] = {"file": os.path.basename(args.engine_ids), "format": "twossp-engine tokenize --json",
                                    "n_tokens_corpus": raw.get("n_tokens"), "ids_given": len(flat)}
        else:
            if isinstance(raw, dict):
                raw = raw["windows"]
            windows = [torch.tensor([w], dtype=torch.long) for w in raw]
            source["engine_ids"] = {"file": os.path.basename(args.engine_ids), "format": "list of windows"}
            if any(w.shape[1] != args.seq_len for w in windows):
                raise SystemExit("--engine-ids windows must all have --seq-len tokens")
        if len(windows) < need:
            raise SystemExit(f"--engine-ids holds {len(windows)} windows of {args.seq_len}; {need} needed")
    if docs is not None:
        t = time.perf_counter()
        theirs = utilities.get_calibration(docs, tokenizer, num_samples=need, seq_len=args.seq_len)
        source["authors_get_calibration"] = {"seconds": time.perf_counter() - t}
        if windows is None:
            windows = theirs
        else:
            for i in range(need):
                if theirs[i].shape != windows[i].shape or not torch.equal(theirs[i], windows[i]):
                    raise SystemExit(f"window {i}: --engine-ids differ from the authors' get_calibration on --data")
            source["engine_ids_equal_authors_get_calibration"] = f"windows 0..{need - 1} identical"
        source["data"] = {"file": os.path.relpath(args.data, os.getcwd()) if not os.path.isabs(args.data) else args.data,
                          "sha256": sha256_file(args.data), "documents": len(docs)}
    if any(w.shape[1] != args.seq_len for w in windows[:need]):
        raise SystemExit("not enough tokens for the windows asked for")

    def load():
        m = utilities.loadModel(args.model)  # adapted: f32, CPU
        m.eval()
        return m

    ctx = {"torch": torch, "np": np, "args": args, "s": args.sparsity, "windows": windows, "docs": docs,
           "tokenizer": tokenizer, "pruning": pruning, "utilities": utilities, "load": load,
           "set_seed": utilities.set_seed, "import": importlib.import_module}

    out = {}
    if args.merge and os.path.exists(args.out):
        out = json.load(open(args.out))
    recipe = (f"consecutive non-overlapping {args.seq_len}-token windows of the token ids of the documents of "
              f"{source.get('data', {}).get('file', '(ids file)')} in file order joined with \"\\n\\n\", tokenized "
              f"once with the model's tokenizer without special tokens (= twossp-engine tokenize = the authors' "
              f"get_calibration); window i = ids[i*{args.seq_len}:(i+1)*{args.seq_len}]")
    calib = {"seq_len": args.seq_len, "recipe": recipe, "source": source}
    if args.store_windows:
        calib["windows"] = [w[0].tolist() for w in windows[: args.store_windows]]
    if "calibration" in out and args.merge:
        old = out["calibration"]
        if old.get("seq_len") != args.seq_len or (
                "windows" in old and old["windows"] != [w[0].tolist() for w in windows[: len(old["windows"])]]):
            raise SystemExit("--merge: the calibration windows differ from those in --out")
        if "windows" in old and "windows" not in calib:
            calib["windows"] = old["windows"]
    cfg_path = os.path.join(args.model, "config.json")
    st = os.path.join(args.model, "model.safetensors")
    out.update({
        "generator": "tools/authors_baselines.py",
        "authors_repo": {"url": "https://github.com/FabrizioSandri/2SSP", "commit": AUTHORS_COMMIT},
        "sleb_repo": {"url": "https://github.com/jiwonsong-dev/SLEB", "commit": SLEB_COMMIT},
        "model": {"dir": os.path.basename(os.path.normpath(args.model)), "config_sha256": sha256_file(cfg_path),
                  "safetensors_sha256": sha256_file(st) if os.path.exists(st) else None,
                  "dtype": "float32", "device": "cpu"},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "numpy": np.__version__,
                     "torch_threads": torch.get_num_threads()},
        "seed": args.seed,
        "sparsity": args.sparsity,
        "budget_rule": "whole-block methods (shortgpt, window, blockpruner, evopress; sleb here): n = ceil(s*L) "
                       "if s*L is not an integer (main.py:166-175); blockpruner/evopress remove n attention AND n MLP "
                       "sub-blocks; slicegpt: d = int((1-s)*hidden) rounded down to a multiple of 8",
        "calibration": calib,
    })
    out.setdefault("methods", {})
    for m in methods:
        logging.info("running %s", m)
        if m in ("shortgpt", "window"):
            res = run_shortgpt_or_window(ctx, m)
        elif m == "blockpruner":
            res = run_blockpruner(ctx)
        elif m == "sleb":
            res = run_sleb(ctx)
        elif m == "evopress":
            res = run_evopress(ctx)
        else:
            res = run_slicegpt(ctx)
        res["settings"] = {"seq_len": args.seq_len, "samples": args.samples, "search_samples": args.search_samples,
                           "threads": args.threads, "seed": args.seed}
        out["methods"][m] = res
        logging.info("%s done in %.1f s", m, res["seconds_wall"])
        with open(args.out, "w") as f:
            f.write(dumps(out))


if __name__ == "__main__":
    main()
