#!/usr/bin/env python3
"""Build the tiny random-weight reference models used as twossp-engine test fixtures.

Purpose
-------
The Rust engine's f32 CPU forward pass must match Hugging Face transformers to
<= 1e-4 max |logit diff| for every supported architecture. This script builds one
tiny model per architecture with HF transformers, gives it deliberately
non-trivial random weights (so that logits vary with magnitude O(1-10) and bugs
cannot hide behind near-uniform outputs), and stores it together with reference
outputs computed by transformers itself.

How to run (from the repository root)
-------------------------------------
    python tools/make_fixtures.py --out tests/fixtures

It runs on the CPU in well under a minute with a single torch thread. The output is
deterministic (fixed seeds, single thread): running it twice produces identical
files.

Pinned versions it was run with
-------------------------------
    python 3.11, torch 2.15.0 (CPU), transformers 5.24.0, tokenizers 0.23.3,
    safetensors 0.8.0, numpy 2.4.6
Other versions may write config.json differently (transformers 5 writes the new
`rope_parameters` layout); the script warns when the versions differ.

What it writes
--------------
    <out>/text/sample.txt            ~3.4 KB of English prose (SAMPLE_TEXT below), used
                                     to train the tokenizer and for the perplexity check
    <out>/<name>/config.json         exactly what `save_pretrained` wrote (f32), plus a
                                     `block_configs` list for the heterogeneous fixtures
    <out>/<name>/config.hub.json     the same model described in the older Hub layout
                                     (top-level `rope_theta`, `rope_scaling`,
                                     `rope_local_base_freq`, `sliding_window_pattern`,
                                     `torch_dtype`...) as found in real checkpoints made
                                     with transformers 4.x; verified to load to the very
                                     same model (non-hetero fixtures only)
    <out>/<name>/model.safetensors   f32 weights (tied models store no lm_head.weight)
    <out>/<name>/tokenizer.json      the shared byte-level BPE tokenizer (vocab 317)
    <out>/<name>/reference.safetensors
                                     input_ids: I64 [T] (T = 40), logits: F32 [T, vocab]
    <out>/<name>/reference.json      versions, max |logit| and the perplexity record

Fixtures: llama (llama3 rope scaling, GQA, head_dim != hidden/heads), llama_tied,
mistral (sliding window 7), qwen2 (random q/k/v biases), qwen3 (q_norm/k_norm),
phi3 (fused projections), phi3_partial (partial_rotary_factor 0.5), gemma3
(sliding/full layer types, local/global rope bases, query_pre_attn_scalar),
hetero_llama and hetero_gemma3 (attention removed from some blocks, per-block FFN
widths, described by `block_configs`), and the GPU-shaped gpu_llama, gpu_qwen2,
gpu_qwen3 and gpu_gemma3 (hidden 128, head_dim 64 / 64 / 128 / 256, FFN widths 196 /
200 / 180 / 204 of which only 200 is a multiple of 8, gemma3 with sliding window 16
and a final logit soft cap) for tests/cuda_parity.rs.

Reference computation
---------------------
Logits come from the HF model in f32 with attn_implementation="eager", batch 1,
no attention_mask argument, position ids 0..T-1. Every fixture is also checked
(assertions) against:
  * sdpa attention (<= 1e-5),
  * an independent plain-torch re-implementation (`manual_forward` below) that
    reads only config.json and model.safetensors (<= 2e-5). It computes RoPE
    frequencies in float64, so it also shows that the fixtures tolerate that.
    Sensitivity checks assert that deliberately wrong variants (sliding window off
    by one, rope scaling ignored, wrong attention scale, ...) differ by > 1e-3, so
    the fixtures really exercise those features,
  * for non-hetero fixtures: reloading the folder with
    AutoModelForCausalLM.from_pretrained (from config.json, and again from
    config.hub.json) reproduces the stored logits bit for bit.

Heterogeneous fixtures (hetero_llama, hetero_gemma3)
----------------------------------------------------
transformers has no class for a llama/gemma3 model whose blocks differ, so the
reference model is built by module surgery on a normal model:
  1. instantiate LlamaForCausalLM / Gemma3ForCausalLM from the base config,
  2. replace block i's MLP by a fresh MLP module of width block_configs[i].ffn
     .intermediate_size (same class, config copy with that intermediate_size),
  3. for blocks whose attention is a no-op, replace `self_attn` by `ZeroAttention`
     (a parameter-free module returning zeros) and the norms that belong to the
     attention (`input_layernorm`; for gemma3 also `post_attention_layernorm`) by
     nn.Identity. Such a block therefore computes
         llama:  h + mlp(post_attention_layernorm(h))
         gemma3: h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h)))
  4. initialise the remaining parameters randomly and run the model.
Its state dict then holds no q/k/v/o (no q_norm/k_norm) and no attention norms
for those blocks, and MLP tensors at each block's own width. config.json is the
base config (`model_type` and `architectures` unchanged; top-level
`intermediate_size` = the largest block width) plus
    "block_configs": [{"attention": {"no_op": bool, "n_heads_in_group":
                        num_attention_heads // num_key_value_heads or null},
                       "ffn": {"no_op": false, "intermediate_size": W}}, ...]
`layer_types` (gemma3) keeps one entry per block, indexed by the absolute block
index, including the attention-free blocks. Since from_pretrained cannot rebuild
this model, the saved folder is verified with `manual_forward`, which takes the
block structure from block_configs and the tensor shapes.

Perplexity protocol (reference.json "ppl")
------------------------------------------
Read text/sample.txt, tokenize it with the fixture tokenizer without special
tokens (no BOS; this tokenizer adds none anyway), cut the ids into consecutive
non-overlapping windows of seq_len = 16 tokens (the short tail is dropped), keep at
most max_windows = 8 windows. Each window is run on its own (positions 0..15); its
NLL is the mean over its 15 predicted positions of -log_softmax(logits[p])[ids[p+1]]
(log-softmax in f32). mean_nll is the token-weighted mean over windows (sums
accumulated in float64), ppl = exp(mean_nll).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import tempfile
import warnings

import torch
from torch import nn

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.models.gemma3.modeling_gemma3 import Gemma3MLP  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaMLP  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

PINNED = {"torch": "2.15.0", "transformers": "5.24.0", "tokenizers": "0.23.3", "safetensors": "0.8.0"}

VOCAB_SIZE = 317          # tokenizer size: 1 special token + 256 bytes + 60 merges
SPECIAL_TOKEN = "<|endoftext|>"  # id 0; used as bos/eos id in the configs
T_REF = 40                # reference sequence length (longer than every sliding window)
PPL_SEQ_LEN = 16
PPL_MAX_WINDOWS = 8

# Reference input: the first T_REF tokens of this sentence (not part of sample.txt).
PROMPT = (
    "On 12 March the ferry left Pier 7 at 09:30 with 148 passengers, 3 bicycles and "
    "one very patient dog; nobody asked why the captain was singing."
)

# Original prose written for this project; used for tokenizer training and perplexity.
SAMPLE_TEXT = """\
The harbour at Keswick Point was built in 1887, and for the first 40 years it served mostly fishing boats. By 1931 the town had 2,416 residents, three bakeries, one bank and a ferry that crossed to the island twice a day: at 7:15 in the morning and at 4:30 in the afternoon. The crossing took 55 minutes in calm water, and closer to 80 when the wind came from the west.

Mara Ellison kept the ferry ledger for 23 years. Every trip got one line: the date, the number of passengers, the weight of the cargo in kilograms, and a short note about the weather. Her notes were rarely longer than six words. "Fog until noon; gulls loud." "Sea flat, sky like tin." On 9 August 1944 she wrote only "Full moon, 112 aboard, all safe." Nobody in town remembers why that night mattered so much to her, but the page is worn thin at the corner, as if she returned to it often.

The ledger tells a quiet story about money, too. A single ticket cost 3 pence in 1920 and 1 shilling by 1952. Cargo was cheaper per kilogram when it was heavier, so farmers learned to combine their loads: one cart of potatoes (about 600 kg) cost less than two half-carts sent on different days. Mara recorded the savings in the margin, in pencil, with a small arrow pointing to the total. In 1958 the numbers changed: the island opened a school, and the morning trip suddenly carried 35 children, each with a satchel and a packed lunch.

Engineers who studied the harbour later were surprised by how well it had been designed. The breakwater is 310 metres long and curves gently to the north-east, which sends most of the winter swell past the entrance instead of into it. The original plans, drawn at a scale of 1:500, show a second wall that was never built; the budget ran out after the first one. In a storm on 14 January 1962 the waves reached 6.5 metres, yet only 2 boats were damaged. Afterwards the town voted, 318 to 97, to keep the harbour as it was.

Today the ferry is faster. A diesel boat does the crossing in 25 minutes and runs 8 times a day between April and October. Tourists photograph the old ledger, which sits behind glass in the library, open to a page from 1949. Some of them try to work out the average number of passengers per trip (the answer for that year is roughly 47.3) and some simply read the weather notes aloud, like short poems: "Rain sideways. Bread late." "Clear, cold, 6 degrees."

What makes a record like this valuable is not precision. Mara rounded the cargo weights to the nearest 10 kg, she sometimes forgot to write the year, and on at least 12 days the passenger count is missing. It is valuable because it is steady. For more than 8,000 crossings someone sat down after the boat was tied up and wrote what had happened, in the same order, with the same care. Read one line and you learn almost nothing; read a thousand and you can hear the town breathing.

The library plans to scan every page by the end of next year. Volunteers have already typed the first 1,200 entries into a spreadsheet, checking each row twice. They found small surprises: a goat listed as a passenger in 1937, a cargo of 44 umbrellas in a dry July, and a note that says only "Whale!" with three underlines. When the work is done, anyone will be able to search the ledger, count the storms, or compare winter traffic with summer traffic. But the volunteers agree on one thing: the best way to read it is still slowly, one day at a time, the way it was written.
"""

COMMON = dict(vocab_size=VOCAB_SIZE, bos_token_id=0, eos_token_id=0, pad_token_id=None)

# name -> (model class, config class, config kwargs, seed, hetero spec or None)
# hetero spec: {"no_attention": [block indices], "ffn_widths": [one width per block]}
FIXTURES = {
    "llama": (
        LlamaForCausalLM,
        LlamaConfig,
        dict(
            COMMON,
            hidden_size=36,  # != num_attention_heads * head_dim = 48 (HF requires hidden % heads == 0)
            num_hidden_layers=3,
            num_attention_heads=6,
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size=70,
            max_position_embeddings=256,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            attention_bias=False,
            # head_dim 8 -> 4 frequencies with wavelengths 6.28, 29.7, 140.5, 664 positions.
            # With original_max_position_embeddings 32: high_freq_wavelen = 32/4 = 8 and
            # low_freq_wavelen = 32/1 = 32, so the 4 frequencies fall in all three regimes
            # (kept, smoothed, divided by factor).
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=32,
            ),
        ),
        1001,
        None,
    ),
    "llama_tied": (  # SmolLM2-like: tied embeddings, GQA 3:1, plain rope
        LlamaForCausalLM,
        LlamaConfig,
        dict(
            COMMON,
            hidden_size=36,
            num_hidden_layers=2,
            num_attention_heads=9,
            num_key_value_heads=3,
            intermediate_size=64,
            max_position_embeddings=2048,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
        1002,
        None,
    ),
    "mistral": (
        MistralForCausalLM,
        MistralConfig,
        dict(
            COMMON,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=12,  # != hidden/heads = 8 (Mistral-Nemo style)
            intermediate_size=56,
            max_position_embeddings=1024,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            sliding_window=7,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
        1003,
        None,
    ),
    "qwen2": (
        Qwen2ForCausalLM,
        Qwen2Config,
        dict(
            COMMON,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=60,
            max_position_embeddings=1024,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,  # like Qwen2.5-0.5B
            use_sliding_window=False,
            sliding_window=8,  # ignored by HF because use_sliding_window is false (written as null)
            max_window_layers=1,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
        1004,
        None,
    ),
    "qwen3": (
        Qwen3ForCausalLM,
        Qwen3Config,
        dict(
            COMMON,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,  # != hidden/heads = 8 (as in real Qwen3)
            intermediate_size=48,
            max_position_embeddings=1024,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            attention_bias=False,
            use_sliding_window=False,
            max_window_layers=2,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
        1005,
        None,
    ),
    "phi3": (
        Phi3ForCausalLM,
        Phi3Config,
        dict(
            COMMON,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=44,
            max_position_embeddings=1024,
            original_max_position_embeddings=1024,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=1.0),
        ),
        1006,
        None,
    ),
    "phi3_partial": (  # Phi-4-mini style: partial rotary, tied embeddings
        Phi3ForCausalLM,
        Phi3Config,
        dict(
            COMMON,
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=3,
            num_key_value_heads=1,
            intermediate_size=40,
            max_position_embeddings=1024,
            original_max_position_embeddings=1024,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5),
        ),
        1007,
        None,
    ),
    "gemma3": (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        dict(
            COMMON,
            hidden_size=48,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,  # != hidden/heads = 12
            query_pre_attn_scalar=24,  # != head_dim: scaling = 24**-0.5
            intermediate_size=64,
            hidden_activation="gelu_pytorch_tanh",
            max_position_embeddings=1024,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            sliding_window=6,
            layer_types=["sliding_attention"] * 3 + ["full_attention"],
            rope_parameters=dict(
                sliding_attention=dict(rope_type="default", rope_theta=100.0),
                full_attention=dict(rope_type="default", rope_theta=5000.0),
            ),
        ),
        1008,
        None,
    ),
    "hetero_llama": (
        LlamaForCausalLM,
        LlamaConfig,
        dict(
            COMMON,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size=70,
            max_position_embeddings=1024,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
        1009,
        {"no_attention": [1, 2], "ffn_widths": [70, 33, 52, 17]},
    ),
    "hetero_gemma3": (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        dict(
            COMMON,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=24,
            intermediate_size=64,
            hidden_activation="gelu_pytorch_tanh",
            max_position_embeddings=1024,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            sliding_window=6,
            layer_types=["sliding_attention"] * 3 + ["full_attention"],
            rope_parameters=dict(
                sliding_attention=dict(rope_type="default", rope_theta=100.0),
                full_attention=dict(rope_type="default", rope_theta=5000.0),
            ),
        ),
        1010,
        {"no_attention": [1, 2], "ffn_widths": [64, 29, 41, 18]},
    ),
    # GPU-shaped fixtures (tests/cuda_parity.rs): the CUDA kernels need head_dim 64/128/256 and
    # hidden / q / kv widths that are multiples of 8. The FFN widths are deliberately NOT multiples
    # of 8 (the device pads them with zero neurons) and the sliding window is shorter than T_REF.
    "gpu_llama": (
        LlamaForCausalLM,
        LlamaConfig,
        dict(
            COMMON,
            hidden_size=128,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=64,
            intermediate_size=196,  # padded to 200 on the device
            max_position_embeddings=256,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            attention_bias=False,
            # head_dim 64 -> 32 frequencies, wavelengths 6.3 ... 2585 positions: with
            # original_max_position_embeddings 32 they fall in all three llama3 regimes.
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=32,
            ),
        ),
        1011,
        None,
    ),
    "gpu_qwen2": (
        Qwen2ForCausalLM,
        Qwen2Config,
        dict(
            COMMON,
            hidden_size=128,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=64,
            intermediate_size=200,  # a multiple of 8: no device padding
            max_position_embeddings=1024,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            use_sliding_window=False,
            max_window_layers=1,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
        1012,
        None,
    ),
    "gpu_qwen3": (
        Qwen3ForCausalLM,
        Qwen3Config,
        dict(
            COMMON,
            hidden_size=128,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=128,
            intermediate_size=180,  # padded to 184 on the device
            max_position_embeddings=1024,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            attention_bias=False,
            use_sliding_window=False,
            max_window_layers=3,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
        1013,
        None,
    ),
    "gpu_gemma3": (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        dict(
            COMMON,
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=256,
            query_pre_attn_scalar=192,  # != head_dim: scaling = 192**-0.5
            intermediate_size=204,  # padded to 208 on the device
            hidden_activation="gelu_pytorch_tanh",
            max_position_embeddings=1024,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            sliding_window=16,  # < T_REF: the window masks keys in the reference
            layer_types=["sliding_attention"] * 3 + ["full_attention"],
            final_logit_softcapping=15.0,  # Gemma-2 style cap (exercises the GPU NLL's cap)
            rope_parameters=dict(
                sliding_attention=dict(rope_type="default", rope_theta=100.0),
                full_attention=dict(rope_type="default", rope_theta=5000.0),
            ),
        ),
        1014,
        None,
    ),
}


# --------------------------------------------------------------------------- tokenizer


def build_tokenizer(text: str) -> Tokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenizer, no prefix space, no post-processor)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.split("\n\n"), trainer)
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    assert tok.token_to_id(SPECIAL_TOKEN) == 0
    ids = tok.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids) == text, "byte-level BPE must round-trip"
    return tok


# --------------------------------------------------------------------------- weights


def init_weights(model: nn.Module, seed: int, gemma: bool) -> None:
    """Non-trivial deterministic weights.

    embeddings N(0, 1) when untied; linear weights N(0, 1/fan_in) (so activations stay
    O(1)), except an untied lm_head: N(0, 4/hidden); tied embeddings N(0, 4/hidden) (they
    are also the output head: logits then have std ~2 instead of ~sqrt(hidden));
    biases N(0, 0.3^2); norm weights 1 + 0.2 N(0,1) (gemma: 0.2 N(0,1), used as 1 + w).
    """
    g = torch.Generator().manual_seed(seed)
    tied = model.config.tie_word_embeddings
    head_std = 2.0 / math.sqrt(model.config.hidden_size)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):  # tied weights are listed once
            if name.endswith("embed_tokens.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * (head_std if tied else 1.0))
            elif name == "lm_head.weight":
                assert not tied
                p.copy_(torch.randn(p.shape, generator=g) * head_std)
            elif "norm" in name:
                assert p.dim() == 1, name
                w = 0.2 * torch.randn(p.shape, generator=g)
                p.copy_(w if gemma else 1.0 + w)
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            else:
                raise AssertionError(f"unexpected parameter {name} {tuple(p.shape)}")


# --------------------------------------------------------------------------- hetero


class ZeroAttention(nn.Module):
    """Stands for a removed attention sub-module: contributes exactly zero."""

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


def apply_hetero(model: nn.Module, spec: dict, gemma: bool) -> list[dict]:
    cfg = model.config
    layers = model.model.layers
    assert len(spec["ffn_widths"]) == len(layers)
    block_configs = []
    for i, layer in enumerate(layers):
        width = spec["ffn_widths"][i]
        mcfg = copy.deepcopy(cfg)
        mcfg.intermediate_size = width
        layer.mlp = Gemma3MLP(mcfg) if gemma else LlamaMLP(mcfg)
        no_attn = i in spec["no_attention"]
        if no_attn:
            layer.self_attn = ZeroAttention()
            layer.input_layernorm = nn.Identity()
            if gemma:
                layer.post_attention_layernorm = nn.Identity()
        block_configs.append(
            {
                "attention": {
                    "no_op": no_attn,
                    "n_heads_in_group": None if no_attn else cfg.num_attention_heads // cfg.num_key_value_heads,
                },
                "ffn": {"no_op": False, "intermediate_size": width},
            }
        )
    return block_configs


# --------------------------------------------------------------------------- manual reference


def canonical_config(cfg: dict) -> dict:
    """Reduce a config.json (transformers-5 layout or older Hub layout) to what the forward needs.

    This is the interpretation the Rust config parser has to implement.
    """
    mt = cfg["model_type"]
    gemma = mt == "gemma3_text"
    n = cfg["num_hidden_layers"]
    H, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or H // nh

    def flat_rope(rp: dict | None, legacy_theta, legacy_prf) -> dict:
        rp = dict(rp or {})
        rp.setdefault("rope_type", rp.pop("type", "default"))
        rp.setdefault("rope_theta", legacy_theta)
        if legacy_prf is not None:
            rp.setdefault("partial_rotary_factor", legacy_prf)
        if rp["rope_type"] == "llama3":
            rp.setdefault("original_max_position_embeddings", cfg["max_position_embeddings"])
        return rp

    # layer types / sliding windows
    sw = cfg.get("sliding_window")
    if cfg.get("use_sliding_window") is False:  # qwen2/qwen3: window disabled even if a number is given
        sw = None
    lt = cfg.get("layer_types")
    if lt is None:
        if gemma:
            pat = cfg.get("sliding_window_pattern", 6)
            lt = ["sliding_attention" if (i + 1) % pat else "full_attention" for i in range(n)]
        elif mt in ("qwen2", "qwen3"):
            lt = [
                "sliding_attention" if sw is not None and i >= cfg["max_window_layers"] else "full_attention"
                for i in range(n)
            ]
        else:  # llama / mistral / phi3: one window (or none) for every layer
            lt = ["sliding_attention" if sw is not None else "full_attention"] * n
    windows = [sw if t == "sliding_attention" else None for t in lt]

    # rope per layer
    if gemma:
        rp = cfg.get("rope_parameters")
        if rp is None:  # legacy: rope_theta (global), rope_local_base_freq, rope_scaling (global only)
            full = dict(cfg.get("rope_scaling") or {})
            full.setdefault("rope_theta", cfg.get("rope_theta", 1_000_000.0))
            rp = {"full_attention": full, "sliding_attention": {"rope_theta": cfg.get("rope_local_base_freq", 10_000.0)}}
        ropes = [flat_rope(rp[t], None, None) for t in lt]
    else:
        rp = cfg.get("rope_parameters") or cfg.get("rope_scaling")
        r = flat_rope(rp, cfg.get("rope_theta", 10000.0), cfg.get("partial_rotary_factor"))
        ropes = [r] * n

    blocks = cfg.get("block_configs") or [{"attention": {"no_op": False}, "ffn": {"no_op": False}}] * n
    return dict(
        model_type=mt,
        gemma=gemma,
        n_layers=n,
        hidden=H,
        n_heads=nh,
        n_kv=cfg["num_key_value_heads"],
        head_dim=hd,
        eps=cfg["rms_norm_eps"],
        layer_types=lt,
        windows=windows,
        ropes=ropes,
        scale=(cfg["query_pre_attn_scalar"] ** -0.5) if gemma else hd**-0.5,
        act=cfg.get("hidden_activation") or cfg.get("hidden_act"),
        final_softcap=cfg.get("final_logit_softcapping"),
        attn_softcap=cfg.get("attn_logit_softcapping"),
        attn_noop=[bool(b["attention"]["no_op"]) for b in blocks],
        block_configs=cfg.get("block_configs"),
    )


def rope_inv_freq(r: dict, head_dim: int) -> torch.Tensor:
    """Inverse frequencies in float64 (HF computes them in f32; the difference is harmless)."""
    dim = int(head_dim * r.get("partial_rotary_factor", 1.0))
    inv = 1.0 / (r["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    if r["rope_type"] == "default":
        return inv
    assert r["rope_type"] == "llama3", r
    factor, lf, hf = r["factor"], r["low_freq_factor"], r["high_freq_factor"]
    old = r["original_max_position_embeddings"]
    low_wl, high_wl = old / lf, old / hf
    out = []
    for f in inv.tolist():
        wl = 2 * math.pi / f
        if wl < high_wl:
            out.append(f)
        elif wl > low_wl:
            out.append(f / factor)
        else:
            s = (old / wl - lf) / (hf - lf)
            out.append((1 - s) * f / factor + s * f)
    return torch.tensor(out, dtype=torch.float64)


def manual_forward(cfg: dict, W: dict, ids: torch.Tensor, tweak: dict | None = None) -> torch.Tensor:
    """Plain-torch f32 forward from config.json + safetensors only. Returns logits [T, vocab].

    `tweak` injects deliberate mistakes for the sensitivity checks.
    """
    c = canonical_config(cfg)
    tw = tweak or {}
    T = ids.shape[0]
    H, nh, nkv, hd, eps = c["hidden"], c["n_heads"], c["n_kv"], c["head_dim"], c["eps"]
    gemma = c["gemma"]
    f32 = torch.float32

    def rms(x, w):
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        return y * (1.0 + w) if gemma else y * w

    def lin(x, name):
        y = x @ W[name + ".weight"].T
        b = W.get(name + ".bias")
        return y if b is None else y + b

    def act(x):
        if c["act"] == "silu":
            return torch.nn.functional.silu(x)
        assert c["act"] == "gelu_pytorch_tanh", c["act"]
        return torch.nn.functional.gelu(x, approximate="tanh")

    def rope(x, r):  # x: [T, heads, hd]; rotate-half convention on the first rotary_dim dims
        inv = rope_inv_freq(r, hd)
        if tw.get("no_rope_scaling"):
            inv = rope_inv_freq(dict(r, rope_type="default"), hd)
        if "rope_theta" in tw:
            inv = rope_inv_freq(dict(r, rope_theta=tw["rope_theta"]), hd)
        rd = 2 * inv.shape[0]
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
        cos, sin = ang.cos().to(f32)[:, None, :], ang.sin().to(f32)[:, None, :]
        x1, x2, rest = x[..., : rd // 2], x[..., rd // 2 : rd], x[..., rd:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)

    h = W["model.embed_tokens.weight"][ids]
    if gemma:
        h = h * torch.tensor(H**0.5, dtype=f32)  # sqrt(hidden) rounded to f32
    pos = torch.arange(T)
    for i in range(c["n_layers"]):
        p = f"model.layers.{i}."
        if not c["attn_noop"][i]:
            x = rms(h, W[p + "input_layernorm.weight"])
            if p + "self_attn.qkv_proj.weight" in W:  # phi3 fused: rows [q | k | v]
                qkv = lin(x, p + "self_attn.qkv_proj")
                q, k, v = qkv.split([nh * hd, nkv * hd, nkv * hd], dim=-1)
            else:
                q, k, v = lin(x, p + "self_attn.q_proj"), lin(x, p + "self_attn.k_proj"), lin(x, p + "self_attn.v_proj")
            q, k, v = q.view(T, nh, hd), k.view(T, nkv, hd), v.view(T, nkv, hd)
            if p + "self_attn.q_norm.weight" in W:  # qwen3 / gemma3: per-head RMSNorm before rope
                q, k = rms(q, W[p + "self_attn.q_norm.weight"]), rms(k, W[p + "self_attn.k_norm.weight"])
            r = c["ropes"][i]
            if tw.get("swap_rope_layer_type"):  # use the other layer type's rope
                other = [j for j in range(c["n_layers"]) if c["layer_types"][j] != c["layer_types"][i]][0]
                r = c["ropes"][other]
            q, k = rope(q, r), rope(k, r)
            grp = nh // nkv  # query head j uses kv head j // grp
            k, v = k.repeat_interleave(grp, dim=1), v.repeat_interleave(grp, dim=1)
            scale = tw.get("scale", c["scale"])
            s = torch.einsum("phd,jhd->hpj", q, k) * scale
            if c["attn_softcap"] is not None:
                s = torch.tanh(s / c["attn_softcap"]) * c["attn_softcap"]
            win = tw.get("windows", c["windows"])[i]
            if win is not None:
                win += tw.get("window_delta", 0)
            d = pos[:, None] - pos[None, :]  # query p, key j: d = p - j
            allowed = d >= 0
            if win is not None:
                allowed = allowed & (d < win)
            s = s.masked_fill(~allowed[None], float("-inf"))
            a = torch.softmax(s, dim=-1)
            o = torch.einsum("hpj,jhd->phd", a, v).reshape(T, nh * hd)
            o = lin(o, p + "self_attn.o_proj")
            if gemma:
                o = rms(o, W[p + "post_attention_layernorm.weight"])
            h = h + o
        if gemma:
            x = rms(h, W[p + "pre_feedforward_layernorm.weight"])
        else:
            x = rms(h, W[p + "post_attention_layernorm.weight"])
        if p + "mlp.gate_up_proj.weight" in W:  # phi3 fused: rows [gate | up]
            gate, up = lin(x, p + "mlp.gate_up_proj").chunk(2, dim=-1)
        else:
            gate, up = lin(x, p + "mlp.gate_proj"), lin(x, p + "mlp.up_proj")
        if c["block_configs"] is not None:
            assert gate.shape[-1] == c["block_configs"][i]["ffn"]["intermediate_size"]
        m = lin(act(gate) * up, p + "mlp.down_proj")
        if gemma:
            m = rms(m, W[p + "post_feedforward_layernorm.weight"])
        h = h + m
    h = rms(h, W["model.norm.weight"])
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])  # absent when tied
    logits = h @ head.T
    if c["final_softcap"] is not None and not tw.get("no_final_softcap"):
        logits = torch.tanh(logits / c["final_softcap"]) * c["final_softcap"]
    return logits


# --------------------------------------------------------------------------- legacy config


def hub_style_config(d: dict) -> dict:
    """Rewrite a transformers-5 config dict in the older layout real Hub checkpoints use."""
    d = copy.deepcopy(d)
    d["torch_dtype"] = d.pop("dtype")
    d["transformers_version"] = "4.51.3"
    d.pop("_sliding_window_pattern", None)  # internal field transformers 5 writes for gemma3
    rp = d.pop("rope_parameters")
    if d["model_type"] == "gemma3_text":
        d.pop("layer_types")
        d["sliding_window_pattern"] = 4  # blocks 3, 7, ... are full attention
        full = dict(rp["full_attention"])
        d["rope_theta"] = full.pop("rope_theta")
        d["rope_local_base_freq"] = rp["sliding_attention"]["rope_theta"]
        d["rope_scaling"] = None if full.get("rope_type", "default") == "default" else full
    else:
        rp = dict(rp)
        d["rope_theta"] = rp.pop("rope_theta")
        prf = rp.pop("partial_rotary_factor", None)
        if prf is not None:
            d["partial_rotary_factor"] = prf
        d["rope_scaling"] = None if rp.get("rope_type", "default") == "default" else rp
    if d["model_type"] in ("qwen2", "qwen3"):
        # Real Qwen configs carry a number here even though use_sliding_window is false.
        d.pop("layer_types")
        d["sliding_window"] = 8
    return d


# --------------------------------------------------------------------------- perplexity


@torch.no_grad()
def perplexity(model: nn.Module, tok: Tokenizer, text: str) -> dict:
    ids = tok.encode(text, add_special_tokens=False).ids
    n_windows = min(len(ids) // PPL_SEQ_LEN, PPL_MAX_WINDOWS)
    assert n_windows == PPL_MAX_WINDOWS
    total, count = 0.0, 0
    for w in range(n_windows):
        win = torch.tensor(ids[w * PPL_SEQ_LEN : (w + 1) * PPL_SEQ_LEN], dtype=torch.long)
        logits = model(input_ids=win[None]).logits[0].float()
        logp = torch.log_softmax(logits[:-1], dim=-1)
        nll = -logp.gather(1, win[1:, None])[:, 0]
        total += float(nll.double().sum())
        count += nll.shape[0]
    mean = total / count
    return {
        "seq_len": PPL_SEQ_LEN,
        "max_windows": PPL_MAX_WINDOWS,
        "n_windows": n_windows,
        "n_predicted": count,
        "mean_nll": mean,
        "ppl": math.exp(mean),
    }


# --------------------------------------------------------------------------- main


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def write_json(path: str, obj: dict) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


@torch.no_grad()
def build_fixture(name: str, out: str, tok: Tokenizer, ref_ids: torch.Tensor) -> dict:
    model_cls, cfg_cls, kwargs, seed, hetero = FIXTURES[name]
    gemma = cfg_cls is Gemma3TextConfig
    d = os.path.join(out, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)

    torch.manual_seed(seed)  # construction draws random init; everything is overwritten below
    config = cfg_cls(**copy.deepcopy(kwargs))
    model = model_cls(config).to(torch.float32).eval()
    block_configs = apply_hetero(model, hetero, gemma) if hetero else None
    init_weights(model, seed, gemma)
    model.config._attn_implementation = "eager"
    model.set_attn_implementation("eager")

    logits = model(input_ids=ref_ids[None]).logits[0].float().contiguous()
    model.set_attn_implementation("sdpa")
    sdpa = model(input_ids=ref_ids[None]).logits[0].float()
    model.set_attn_implementation("eager")
    assert max_diff(logits, sdpa) <= 5e-5, (name, max_diff(logits, sdpa))

    model.save_pretrained(d, safe_serialization=True)
    gen = os.path.join(d, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    cfg_path = os.path.join(d, "config.json")
    with open(cfg_path) as f:
        cfg_json = json.load(f)
    if hetero:
        cfg_json["block_configs"] = block_configs
        write_json(cfg_path, cfg_json)
    tok.save(os.path.join(d, "tokenizer.json"), pretty=True)

    # saved weights: f32 only, expected key set
    W = load_file(os.path.join(d, "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in W.values())
    if cfg_json.get("tie_word_embeddings"):
        assert "lm_head.weight" not in W
    if hetero:
        for i in hetero["no_attention"]:
            leftovers = [k for k in W if k.startswith(f"model.layers.{i}.") and ("self_attn" in k or "input_layernorm" in k or (gemma and "post_attention_layernorm" in k))]
            assert not leftovers, leftovers
        for i, w in enumerate(hetero["ffn_widths"]):
            assert W[f"model.layers.{i}.mlp.down_proj.weight"].shape == (config.hidden_size, w)

    # independent re-implementation from the saved files
    man = manual_forward(cfg_json, W, ref_ids)
    man_diff = max_diff(man, logits)
    assert man_diff <= 2e-5, (name, man_diff)

    # sensitivity: the fixture must notice these mistakes
    c = canonical_config(cfg_json)
    tweaks = {}
    if any(w is not None for w in c["windows"]):
        tweaks["sliding window + 1"] = {"window_delta": 1}
        tweaks["sliding window - 1"] = {"window_delta": -1}
        tweaks["sliding window ignored"] = {"windows": [None] * c["n_layers"]}
    if any(w is None for w in c["windows"]) and cfg_json.get("sliding_window"):
        # e.g. gemma3 `_sliding_window_pattern`: 6 or counting only attention blocks would make all sliding
        tweaks["every layer sliding"] = {"windows": [cfg_json["sliding_window"]] * c["n_layers"]}
    if c["model_type"] in ("qwen2", "qwen3"):
        # config.hub.json carries "sliding_window": 8 next to "use_sliding_window": false
        tweaks["disabled qwen window applied"] = {"windows": [8] * c["n_layers"]}
    if any(r["rope_type"] == "llama3" for r in c["ropes"]):
        tweaks["llama3 scaling ignored"] = {"no_rope_scaling": True}
    if c["final_softcap"] is not None:
        tweaks["final soft cap ignored"] = {"no_final_softcap": True}
    if gemma:
        tweaks["scale head_dim**-0.5"] = {"scale": c["head_dim"] ** -0.5}
        tweaks["local/global rope swapped"] = {"swap_rope_layer_type": True}
    for label, tw in tweaks.items():
        dd = max_diff(manual_forward(cfg_json, W, ref_ids, tw), logits)
        assert dd > 1e-3, (name, label, dd)

    if not hetero:
        # the saved folder alone must reproduce the reference exactly
        re = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
        assert type(re) is model_cls
        assert torch.equal(re(input_ids=ref_ids[None]).logits[0].float(), logits), name
        # the same model described in the older Hub layout
        hub = hub_style_config(cfg_json)
        write_json(os.path.join(d, "config.hub.json"), hub)
        with tempfile.TemporaryDirectory() as tmp:
            write_json(os.path.join(tmp, "config.json"), hub)
            shutil.copy(os.path.join(d, "model.safetensors"), tmp)
            re2 = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, attn_implementation="eager").eval()
            assert torch.equal(re2(input_ids=ref_ids[None]).logits[0].float(), logits), name
            assert re2.config.rope_parameters == re.config.rope_parameters, (re2.config.rope_parameters, re.config.rope_parameters)
        assert max_diff(manual_forward(hub, W, ref_ids), man) == 0.0

    save_file(
        {"input_ids": ref_ids.clone(), "logits": logits},
        os.path.join(d, "reference.safetensors"),
        metadata={"format": "pt"},
    )
    with open(os.path.join(out, "text", "sample.txt")) as f:
        text = f.read()
    ppl = perplexity(model, tok, text)
    ref = {
        "fixture": name,
        "arch": cfg_json["architectures"][0],
        "model_type": cfg_json["model_type"],
        "hetero": bool(hetero),
        "seed": seed,
        "attn_implementation": "eager",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "tokenizers_version": tokenizers.__version__,
        "T": int(ref_ids.shape[0]),
        "max_abs_logit": float(logits.abs().max()),
        "logit_std": float(logits.std()),
        "manual_max_abs_diff": man_diff,
        "ppl": ppl,
    }
    write_json(os.path.join(d, "reference.json"), ref)
    return ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="tests/fixtures", help="output folder (default tests/fixtures)")
    ap.add_argument("--only", nargs="*", help="build only these fixtures")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    got = {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
           "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__}
    for k, v in PINNED.items():
        if got[k] != v:
            print(f"warning: {k} {got[k]} != pinned {v}; outputs may differ", file=sys.stderr)

    out = args.out
    os.makedirs(os.path.join(out, "text"), exist_ok=True)
    with open(os.path.join(out, "text", "sample.txt"), "w") as f:
        f.write(SAMPLE_TEXT)

    tok = build_tokenizer(SAMPLE_TEXT)
    ref_ids = torch.tensor(tok.encode(PROMPT, add_special_tokens=False).ids[:T_REF], dtype=torch.long)
    assert ref_ids.shape[0] == T_REF

    for name in args.only or FIXTURES:
        ref = build_fixture(name, out, tok, ref_ids)
        print(
            f"{name:14s} {ref['arch']:18s} max|logit| {ref['max_abs_logit']:7.3f} std {ref['logit_std']:6.3f} "
            f"manual diff {ref['manual_max_abs_diff']:.2e} ppl {ref['ppl']['ppl']:.2f}"
        )


if __name__ == "__main__":
    main()
