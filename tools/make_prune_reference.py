#!/usr/bin/env python3
"""Independent brute-force 2SSP reference for the twossp-engine test fixtures.

Purpose
-------
Compute, with Hugging Face transformers and nothing else, the decisions that 2SSP
(/work/shared/SPEC-2SSP.md; arXiv 2501.17771) makes on every tiny non-heterogeneous
fixture model, so that the Rust engine's `prune` can be checked against them. The
implementation is deliberately naive and written straight from the spec:

  * parameter counts come from `numel()` of the HF modules (P_attn = one layer's
    `self_attn`, including biases and q_norm/k_norm where present; P_ffn = one layer's
    `mlp`; P_main = all of `model.model.layers`), then Eq. 5 with Python's round;
  * stage 1 runs the DENSE model on each calibration window with a forward pre-hook
    on every `mlp.down_proj` (its input is act(gate)*up, for Phi-3 too), scores
    neuron j as sqrt(sum_t h[t, j]^2) in float64, averages over the windows, keeps
    the `keep` best per block (ties: lower index) and slices the HF weights
    (Phi-3: gate_up_proj split into halves, both indexed, re-joined);
  * stage 2 on the width-pruned model is greedy brute force: for every candidate
    the whole model is run (no prefix caching); a removed attention is a module
    returning zeros; the candidate whose removal gives the LOWEST perplexity of
    window 0 is removed for good (ties: lower index).

Calibration: text/sample.txt tokenized with the fixture's tokenizer.json without
special tokens, cut into consecutive non-overlapping windows of SEQ_LEN = 64 tokens
(tail dropped); stage 1 uses the first 8 windows, stage 2 window 0. Each window is
run alone (batch 1, positions 0..63, no attention_mask). Perplexity =
exp(mean over the 63 predicted positions of the next-token NLL), the NLL taken
from an f32 log-softmax, the mean accumulated in float64.

Models: the eight tiny architecture fixtures and the four GPU-shaped ones (gpu_*), whose
decisions every backend is checked against (tests/engines.rs).

Cases per model
---------------
  "alpha"  : sparsity 0.375, alpha 1.5, N_attn from Eq. 5 (0 for most tiny models;
             recorded anyway; left out where Eq. 5's N_attn is infeasible).
  "fixed"  : sparsity 0.375, N_attn fixed to L-1 (else 2 if L-1 fails one of the
             spec's two feasibility checks, else the largest feasible value).

How to run (from the repository root)
-------------------------------------
    /work/venv/bin/python tools/make_prune_reference.py \
        [--fixtures tests/fixtures] [--out tests/fixtures/prune_reference.json]

Single torch thread, CPU, well under a minute; deterministic output.

Versions it was run with
------------------------
    python 3.11.7, torch 2.15.0 (+cu132 build, run on the CPU), transformers 5.24.0, tokenizers 0.23.3,
    safetensors 0.8.0, numpy 2.4.6  (also recorded in the JSON).

Output (tests/fixtures/prune_reference.json)
--------------------------------------------
Global keys: seq_len, stage1_samples, stage2_samples, text, fragile_threshold,
versions, cases (list). One case:
    model, case ("alpha" | "fixed"), sparsity, alpha (null for "fixed"), n_attn,
    keep, d_ff, p_attn, p_ffn, p_main, target, p_main_after (numel of the pruned
    layers, norms kept),
    ffn_kept            [[ascending kept neuron indices] per block],
    ffn_scores          [[stage-1 score per neuron, 7 significant digits] per block] (lets a
                        bf16 backend's near-threshold differences be told from errors),
    removed_attention   [block indices in removal order],
    stage2_ppl          [ppl after each removal],
    stage2_ppl_before   ppl of the width-pruned model before any removal,
    stage2_candidate_ppl [[ppl per block, null if already removed] per step],
    score_margin        min over blocks of (s_kth_kept - s_best_removed) / s_kth_kept
                        (null if nothing removed),
    ppl_margin          min over steps with >= 2 candidates of
                        (ppl_second_best - ppl_best) / ppl_best (null if none),
    fragile             true if a margin is < fragile_threshold (1e-5).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from torch import nn  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

MODELS = ["llama", "llama_tied", "mistral", "qwen2", "qwen3", "phi3", "phi3_partial", "gemma3",
          "gpu_llama", "gpu_qwen2", "gpu_qwen3", "gpu_gemma3"]
SEQ_LEN = 64
STAGE1_SAMPLES = 8
STAGE2_SAMPLES = 1
SPARSITY = 0.375
ALPHA = 1.5
FRAGILE = 1e-5
TEXT = "tests/fixtures/text/sample.txt"
PINNED = {"torch": "2.15.0", "transformers": "5.24.0", "tokenizers": "0.23.3",
          "safetensors": "0.8.0", "numpy": "2.4.6"}


class ZeroAttention(nn.Module):
    """A removed attention sub-module: contributes exactly zero to the residual."""

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


def numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def load(fixtures: str, name: str) -> nn.Module:
    model = AutoModelForCausalLM.from_pretrained(
        os.path.join(fixtures, name), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return model


def windows(fixtures: str, name: str, text: str) -> list[torch.Tensor]:
    tok = Tokenizer.from_file(os.path.join(fixtures, name, "tokenizer.json"))
    ids = tok.encode(text, add_special_tokens=False).ids
    n = len(ids) // SEQ_LEN
    return [torch.tensor(ids[i * SEQ_LEN:(i + 1) * SEQ_LEN], dtype=torch.long) for i in range(n)]


# ----------------------------------------------------------------------------- balance (Eq. 5)

def feasible(n_attn: int, p_attn: int, p_ffn: int, L: int, target: int) -> bool:
    return not (n_attn * p_attn > target or n_attn * p_attn + L * p_ffn < target)


def balance(L, d_ff, p_attn, p_ffn, p_main, s, alpha=None, n_attn=None) -> dict:
    if n_attn is None:
        n_attn = round(L * s ** ((p_ffn / p_attn) / alpha))
    target = round(s * p_main)
    if not feasible(n_attn, p_attn, p_ffn, L, target):
        raise ValueError(f"infeasible: n_attn={n_attn} p_attn={p_attn} p_ffn={p_ffn} target={target}")
    ffn_prune_per_block = round((target - n_attn * p_attn) / L)
    keep = round(d_ff * (1 - ffn_prune_per_block / p_ffn))
    return {"n_attn": n_attn, "target": target, "keep": keep}


# ----------------------------------------------------------------------------- stage 1

@torch.no_grad()
def stage1_scores(model: nn.Module, samples: list[torch.Tensor]) -> list[np.ndarray]:
    layers = model.model.layers
    acc = [None] * len(layers)
    handles = []

    def make_hook(i):
        def hook(_mod, args):
            h = args[0][0].to(torch.float64)          # [T, d_ff]
            sc = h.pow(2).sum(dim=0).sqrt()
            acc[i] = sc if acc[i] is None else acc[i] + sc
        return hook

    for i, layer in enumerate(layers):
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(make_hook(i)))
    for ids in samples:
        model(input_ids=ids[None])
    for h in handles:
        h.remove()
    return [(a / len(samples)).numpy() for a in acc]


def select(score: np.ndarray, keep: int) -> tuple[list[int], float | None]:
    # descending score, ties -> lower index (stable sort of the negated score)
    order = np.argsort(-score, kind="stable")
    kept = sorted(int(j) for j in order[:keep])
    if keep >= len(score):
        return kept, None
    kth, best_removed = score[order[keep - 1]], score[order[keep]]
    return kept, float((kth - best_removed) / kth)


def new_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    lin.weight = nn.Parameter(weight.clone())
    if bias is not None:
        lin.bias = nn.Parameter(bias.clone())
    return lin


@torch.no_grad()
def width_prune(model: nn.Module, kept: list[list[int]]) -> None:
    for layer, idx_list in zip(model.model.layers, kept):
        mlp = layer.mlp
        idx = torch.tensor(idx_list, dtype=torch.long)
        if hasattr(mlp, "gate_up_proj"):  # Phi-3: [gate; up] fused along the output dim
            w, b = mlp.gate_up_proj.weight, mlp.gate_up_proj.bias
            d = w.shape[0] // 2
            w2 = torch.cat([w[:d][idx], w[d:][idx]], dim=0)
            b2 = None if b is None else torch.cat([b[:d][idx], b[d:][idx]], dim=0)
            mlp.gate_up_proj = new_linear(w2, b2)
        else:
            for name in ("gate_proj", "up_proj"):
                lin = getattr(mlp, name)
                setattr(mlp, name, new_linear(lin.weight[idx], None if lin.bias is None else lin.bias[idx]))
        dp = mlp.down_proj
        mlp.down_proj = new_linear(dp.weight[:, idx], dp.bias)


# ----------------------------------------------------------------------------- stage 2

@torch.no_grad()
def perplexity(model: nn.Module, ids: torch.Tensor) -> float:
    logits = model(input_ids=ids[None]).logits[0].float()        # [T, V] f32
    logp = torch.log_softmax(logits[:-1], dim=-1)
    nll = -logp.gather(1, ids[1:, None])[:, 0]                    # [T-1] f32
    return math.exp(float(nll.to(torch.float64).mean()))


@torch.no_grad()
def check_zero_attention_block(model: nn.Module, ids: torch.Tensor, i: int, gemma: bool) -> None:
    """With block i's attention zeroed, its output must be h + ffn(norm2(h)) (gemma3:
    h + post_ffn_norm(mlp(pre_ffn_norm(h)))), i.e. post_attention_layernorm(0) == 0."""
    layer = model.model.layers[i]
    if gemma:
        z = torch.zeros(1, 3, model.config.hidden_size)
        assert torch.equal(layer.post_attention_layernorm(z), z), "gemma3 norm(0) != 0"
    seen = {}
    hk = layer.register_forward_hook(lambda m, a, kw, out: seen.update(x=kw.get("hidden_states", a[0] if a else None),
                                                                        y=out[0] if isinstance(out, tuple) else out),
                                     with_kwargs=True)
    model(input_ids=ids[None])
    hk.remove()
    h, y = seen["x"], seen["y"]
    if gemma:
        ref = h + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h)))
    else:
        ref = h + layer.mlp(layer.post_attention_layernorm(h))
    assert torch.allclose(y, ref, atol=1e-6, rtol=0), f"zero-attention block {i} mismatch"


def stage2(model: nn.Module, ids: torch.Tensor, n_attn: int, gemma: bool) -> dict:
    layers = model.model.layers
    L = len(layers)
    present = list(range(L))
    before = perplexity(model, ids)
    removed, ppls, cands, margins = [], [], [], []
    checked = False
    for _ in range(n_attn):
        row = [None] * L
        for i in present:
            saved = layers[i].self_attn
            layers[i].self_attn = ZeroAttention()
            row[i] = perplexity(model, ids)
            if not checked:
                check_zero_attention_block(model, ids, i, gemma)
                checked = True
            layers[i].self_attn = saved
        best = min(present, key=lambda i: (row[i], i))           # lowest ppl, ties -> lowest index
        if len(present) >= 2:
            vals = sorted(row[i] for i in present)
            margins.append((vals[1] - vals[0]) / vals[0])
        layers[best].self_attn = ZeroAttention()
        present.remove(best)
        removed.append(best)
        ppls.append(row[best])
        cands.append(row)
        assert perplexity(model, ids) == row[best]
    return {"removed_attention": removed, "stage2_ppl": ppls, "stage2_ppl_before": before,
            "stage2_candidate_ppl": cands, "ppl_margin": min(margins) if margins else None}


# ----------------------------------------------------------------------------- driver

@torch.no_grad()
def check_dense(model: nn.Module, fixtures: str, name: str) -> None:
    ref = load_file(os.path.join(fixtures, name, "reference.safetensors"))
    logits = model(input_ids=ref["input_ids"][None]).logits[0]
    diff = (logits - ref["logits"]).abs().max().item()
    assert diff <= 1e-5, f"{name}: dense model does not reproduce reference.safetensors ({diff})"


def run_model(fixtures: str, name: str, text: str) -> list[dict]:
    dense = load(fixtures, name)
    check_dense(dense, fixtures, name)
    gemma = dense.config.model_type.startswith("gemma3")
    layers = dense.model.layers
    L = len(layers)
    p_attn, p_ffn, p_main = numel(layers[0].self_attn), numel(layers[0].mlp), numel(layers)
    assert all(numel(l.self_attn) == p_attn and numel(l.mlp) == p_ffn for l in layers)
    d_ff = dense.config.intermediate_size
    wins = windows(fixtures, name, text)
    assert len(wins) >= STAGE1_SAMPLES
    scores = stage1_scores(dense, wins[:STAGE1_SAMPLES])

    target = round(SPARSITY * p_main)
    fixed = L - 1
    if not feasible(fixed, p_attn, p_ffn, L, target):
        fixed = 2
    if not feasible(fixed, p_attn, p_ffn, L, target):
        ok = [n for n in range(L + 1) if feasible(n, p_attn, p_ffn, L, target)]
        fixed = max(ok)

    out = []
    for case, alpha, n_fixed in (("alpha", ALPHA, None), ("fixed", None, fixed)):
        try:
            bal = balance(L, d_ff, p_attn, p_ffn, p_main, SPARSITY, alpha=alpha, n_attn=n_fixed)
        except ValueError as e:  # gpu_qwen3: Eq. 5 asks for more attention than the budget holds
            print(f"{name}: no {case} case ({e})")
            continue
        keep = bal["keep"]
        sel = [select(sc, keep) for sc in scores]
        kept = [k for k, _ in sel]
        smargins = [m for _, m in sel if m is not None]
        model = copy.deepcopy(dense)
        width_prune(model, kept)
        s2 = stage2(model, wins[0], bal["n_attn"], gemma)
        p_after = numel(model.model.layers)
        assert p_after == p_main - bal["n_attn"] * p_attn - L * (d_ff - keep) * (p_ffn // d_ff)
        rec = {
            "model": name, "case": case, "sparsity": SPARSITY, "alpha": alpha,
            "n_attn": bal["n_attn"], "keep": keep, "d_ff": d_ff,
            "p_attn": p_attn, "p_ffn": p_ffn, "p_main": p_main, "target": bal["target"],
            "p_main_after": p_after,
            "ffn_kept": kept,
            "ffn_scores": [[float(f"{v:.7g}") for v in sc] for sc in scores],
            **s2,
            "score_margin": min(smargins) if smargins else None,
        }
        margins = [m for m in (rec["score_margin"], rec["ppl_margin"]) if m is not None]
        rec["fragile"] = any(m < FRAGILE for m in margins)
        out.append(rec)
    return out


def compact_json(obj) -> str:
    """Indented JSON with number lists kept on one line (keeps the committed file small)."""
    def enc(o, ind):
        pad = "  " * ind
        if isinstance(o, dict):
            items = [f'{pad}  {json.dumps(k)}: {enc(v, ind + 1)}' for k, v in o.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(o, list) and o and all(isinstance(x, dict) for x in o):
            return "[\n" + ",\n".join(pad + "  " + enc(x, ind + 1) for x in o) + "\n" + pad + "]"
        return json.dumps(o, separators=(", ", ": "))
    return enc(obj, 0) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fixtures", default="tests/fixtures")
    ap.add_argument("--out", default="tests/fixtures/prune_reference.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                "safetensors": safetensors.__version__, "numpy": np.__version__}
    for k, v in PINNED.items():
        if not versions[k].startswith(v):
            print(f"warning: {k} {versions[k]} differs from pinned {v}", file=sys.stderr)
    with open(os.path.join(args.fixtures, "text", "sample.txt")) as f:
        text = f.read()
    t0 = time.time()
    cases = []
    for name in MODELS:
        t = time.time()
        recs = run_model(args.fixtures, name, text)
        cases += recs
        for r in recs:
            print(f"{name:13s} {r['case']:5s} n_attn={r['n_attn']} keep={r['keep']}/{r['d_ff']} "
                  f"removed={r['removed_attention']} score_margin={r['score_margin']} "
                  f"ppl_margin={r['ppl_margin']} fragile={r['fragile']} ({time.time() - t:.1f}s)")
    doc = {"seq_len": SEQ_LEN, "stage1_samples": STAGE1_SAMPLES, "stage2_samples": STAGE2_SAMPLES,
           "text": TEXT, "fragile_threshold": FRAGILE, "versions": versions, "cases": cases}
    with open(args.out, "w") as f:
        f.write(compact_json(doc))
    print(f"wrote {args.out} ({len(cases)} cases, {time.time() - t0:.1f}s)")


if __name__ == "__main__":
    main()
