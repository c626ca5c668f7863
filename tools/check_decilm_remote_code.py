#!/usr/bin/env python3
"""Self-check of our DeciLM remote code (src/export/decilm_code/*.py) against transformers' native models.

Run with a Python that has torch + transformers 5.x (CPU is enough, well under a minute):

    /work/venv/torch/bin/python tools/check_decilm_remote_code.py

For each case it builds a tiny random native model (Llama, Llama with tied embeddings, Qwen2 with q/k/v biases,
Llama with all biases, Mistral with a sliding window), then writes a DeciLM folder by hand, the way our exporter
does: some blocks (never block 0) lose attention and carry no attention tensors, FFNs are narrowed per block by
keeping a random subset of neurons (exact widths via `ffn.intermediate_size`, or `ffn_mult` with widths zero-padded
to multiples of 256), config.json in the exporter's schema plus the two .py files and model.safetensors.
It loads the folder with `AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)` and checks:
no missing/unexpected keys; logits equal (<= 1e-5, f32) to the ORIGINAL native model edited in memory (o_proj
zeroed where attention was removed, MLP sliced); 20-token greedy generate with cache == without cache == the edited
native model; config round trips and the vLLM-style `hasattr(ffn, "ffn_mult")` reading. Exits 1 on any failure.
"""

import copy
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

TMP = Path(tempfile.mkdtemp(prefix="decilm_check_"))
os.environ["HF_MODULES_CACHE"] = str(TMP / "hf_modules")  # keep the copied remote code out of ~/.cache
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from torch import nn  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

CODE_DIR = Path(__file__).resolve().parent.parent / "src" / "export" / "decilm_code"
CODE_FILES = ("configuration_decilm.py", "modeling_decilm.py")
H, LAYERS, HEADS, KV_HEADS, VOCAB, SRC_FFN = 64, 4, 4, 2, 256, 384
TOL = 1e-5
RESULTS = []  # (case, check, ok, detail)


def record(case, check, ok, detail=""):
    RESULTS.append((case, check, bool(ok), detail))
    return ok


def ffn_mult_width(mult, hidden):  # the DeciLM formula, written independently of the remote code
    n = int(2 * mult * hidden / 3)
    return n if n % 256 == 0 else n + 256 - n % 256


# --------------------------------------------------------------------------------------------- source models
def source_model(family, seed, tied=False, biases=False, window=None):
    common = dict(
        hidden_size=H, intermediate_size=SRC_FFN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS, vocab_size=VOCAB, max_position_embeddings=256, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=tied,
    )
    if family == "llama":
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
        cfg = LlamaConfig(**common, attention_bias=biases, mlp_bias=biases, rope_parameters=rope)
        cls = LlamaForCausalLM
    elif family == "qwen2":
        cfg = Qwen2Config(**common, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
        cls = Qwen2ForCausalLM
    else:
        rope = {"rope_type": "default", "rope_theta": 1e4}
        cfg = MistralConfig(**common, sliding_window=window, rope_parameters=rope)
        cls = MistralForCausalLM
    torch.manual_seed(seed)
    model = cls(cfg).to(torch.float32).eval()
    with torch.no_grad():  # non-trivial weights: O(1) activations, visibly different logits per token
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / math.sqrt(p.shape[1]))
    return model


# --------------------------------------------------------------------------------------------- hand-made export
def export_decilm(src, out_dir, *, drop_attention, widths, portable, seed, extra=None):
    """Writes a DeciLM folder from `src`. widths[i]: kept neurons of block i (0 = FFN removed); `extra`: more
    top-level config keys.
    Returns (kept neuron indices per block, exported width per block, config dict)."""
    cfg = src.config
    sd = {k: v.detach().clone().contiguous() for k, v in src.state_dict().items()}
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    gen = torch.Generator().manual_seed(seed)
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    window = getattr(cfg, "sliding_window", None)
    blocks, kept, out_widths = [], [], []
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        removed = i in drop_attention
        if removed:
            for k in [k for k in sd if k.startswith((p + "self_attn.", p + "input_layernorm."))]:
                del sd[k]
        attention = {"no_op": removed, "replace_with_linear": False, "sparsify": None,
                     "n_heads_in_group": None if removed else group,
                     "window_length": None if removed else window, "num_sink_tokens": None,
                     "use_prefill_window_in_sink_attention": False, "unshifted_sink": False}
        k = widths[i]
        ffn = {"no_op": k == 0, "replace_with_linear": False, "sparsify": None}
        if k == 0:
            for key in [key for key in sd if key.startswith((p + "mlp.", p + "post_attention_layernorm."))]:
                del sd[key]
            kept.append(None)
            out_widths.append(0)
        else:
            idx = torch.sort(torch.randperm(cfg.intermediate_size, generator=gen)[:k]).values
            width = -(-k // 256) * 256 if portable else k
            pad = width - k
            for name in ("gate_proj", "up_proj"):
                w = sd[p + f"mlp.{name}.weight"][idx]
                sd[p + f"mlp.{name}.weight"] = torch.cat([w, w.new_zeros(pad, w.shape[1])]).contiguous()
                if p + f"mlp.{name}.bias" in sd:
                    b = sd[p + f"mlp.{name}.bias"][idx]
                    sd[p + f"mlp.{name}.bias"] = torch.cat([b, b.new_zeros(pad)]).contiguous()
            w = sd[p + "mlp.down_proj.weight"][:, idx]
            sd[p + "mlp.down_proj.weight"] = torch.cat([w, w.new_zeros(w.shape[0], pad)], 1).contiguous()
            if portable:
                ffn["ffn_mult"] = round(1.5 * (width - 128) / cfg.hidden_size, 6)
                assert ffn_mult_width(ffn["ffn_mult"], cfg.hidden_size) == width
            ffn["intermediate_size"] = width
            kept.append(idx)
            out_widths.append(width)
        blocks.append({"attention": attention, "ffn": ffn})

    src_json = cfg.to_dict()
    family_bias = getattr(cfg, "attention_bias", False)
    config = {
        "architectures": ["DeciLMForCausalLM"], "model_type": "nemotron-nas",
        "auto_map": {"AutoConfig": "configuration_decilm.DeciLMConfig",
                     "AutoModelForCausalLM": "modeling_decilm.DeciLMForCausalLM"},
        "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
        "intermediate_size": max(out_widths), "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps, "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings, "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": family_bias, "mlp_bias": getattr(cfg, "mlp_bias", False),
        "qkv_bias": isinstance(src, Qwen2ForCausalLM),
    }
    if isinstance(src, Qwen2ForCausalLM):  # v4-style rope keys, as a v4 source config would have them
        config["rope_theta"] = src_json["rope_parameters"]["rope_theta"]
    else:
        config["rope_parameters"] = src_json["rope_parameters"]
    config.update({"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "dtype": "float32",
                   "block_configs": blocks, **(extra or {})})
    out_dir.mkdir(parents=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    for name in CODE_FILES:
        shutil.copy(CODE_DIR / name, out_dir / name)
    save_file(sd, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return kept, out_widths, config


def edited_reference(src, *, drop_attention, kept):
    """The original dense model edited in memory: zero o_proj where attention is removed, slice the MLPs."""
    ref = copy.deepcopy(src).eval()
    with torch.no_grad():
        for i, layer in enumerate(ref.model.layers):
            if i in drop_attention:
                layer.self_attn.o_proj.weight.zero_()
                if layer.self_attn.o_proj.bias is not None:
                    layer.self_attn.o_proj.bias.zero_()
            mlp = layer.mlp
            if kept[i] is None:
                mlp.down_proj.weight.zero_()
                if mlp.down_proj.bias is not None:
                    mlp.down_proj.bias.zero_()
                continue
            idx = kept[i]
            for name in ("gate_proj", "up_proj"):
                old = getattr(mlp, name)
                new = nn.Linear(old.in_features, len(idx), bias=old.bias is not None)
                new.weight.copy_(old.weight[idx])
                if old.bias is not None:
                    new.bias.copy_(old.bias[idx])
                setattr(mlp, name, new)
            old = mlp.down_proj
            new = nn.Linear(len(idx), old.out_features, bias=old.bias is not None)
            new.weight.copy_(old.weight[:, idx])
            if old.bias is not None:
                new.bias.copy_(old.bias)
            mlp.down_proj = new
    return ref


# --------------------------------------------------------------------------------------------- checks
def greedy(model, prompt, use_cache):
    out = model.generate(prompt, max_new_tokens=20, min_new_tokens=20, do_sample=False, use_cache=use_cache,
                         pad_token_id=0)
    return out[:, prompt.shape[1]:]


def check_case(name, family, *, seed, drop_attention, widths, portable, tied=False, biases=False, window=None,
               resave=False, extra=None, eager=False):
    src = source_model(family, seed, tied=tied, biases=biases, window=window)
    folder = TMP / name
    kept, out_widths, config_json = export_decilm(src, folder, drop_attention=drop_attention, widths=widths,
                                                  portable=portable, seed=seed + 1, extra=extra)
    ref = edited_reference(src, drop_attention=drop_attention, kept=kept)

    model, info = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, output_loading_info=True,
                                                       dtype=torch.float32)
    model.eval()
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    record(name, "load: no missing/unexpected keys", type(model).__name__ == "DeciLMForCausalLM" and not bad,
           f"{type(model).__name__} {bad or ''}".strip())

    file_keys = set(load_file(str(folder / "model.safetensors")).keys())
    model_keys = set(model.state_dict().keys()) - ({"lm_head.weight"} if tied else set())
    shapes_ok = all(
        (w == 0 and not model.model.layers[i].has_mlp) or model.model.layers[i].mlp.gate_proj.out_features == w
        for i, w in enumerate(out_widths)
    )
    record(name, "params == checkpoint tensors", model_keys == file_keys and shapes_ok,
           f"widths {out_widths}, attn-free {sorted(drop_attention)}")
    if tied:
        same = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        record(name, "tied lm_head", same and "lm_head.weight" not in file_keys)

    # vLLM-style reading of the loaded config: widths and KV heads must agree with the tensor shapes
    cfg = model.config
    vllm_ok = True
    for i, block in enumerate(cfg.block_configs):
        ffn = block.ffn
        if not ffn.no_op:
            if hasattr(ffn, "ffn_mult"):
                width = ffn_mult_width(ffn.ffn_mult, cfg.hidden_size)
            else:
                width = ffn.intermediate_size
            vllm_ok &= width == out_widths[i] and hasattr(ffn, "ffn_mult") == portable
        if not block.attention.no_op:
            kv = cfg.num_attention_heads // block.attention.n_heads_in_group
            vllm_ok &= model.model.layers[i].self_attn.k_proj.out_features == kv * cfg.head_dim
    record(name, "vLLM-style config reading", vllm_ok, "ffn_mult form" if portable else "intermediate_size form")

    torch.manual_seed(seed + 2)
    ids = torch.randint(3, VOCAB, (2, 12))
    with torch.no_grad():
        diff = (model(ids).logits - ref(ids).logits).abs().max().item()
        mask = torch.ones_like(ids)
        mask[1, :3] = 0  # left padding on row 1
        a, b = model(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits
        pad_diff = (a - b)[mask.bool()].abs().max().item()
    record(name, "logits vs edited native", diff <= TOL, f"max|diff| {diff:.1e}")
    record(name, "logits, left-padded batch", pad_diff <= TOL, f"max|diff| {pad_diff:.1e}")

    prompt = ids[:, :8]
    with torch.no_grad():
        g_cache, g_full, g_ref = greedy(model, prompt, True), greedy(model, prompt, False), greedy(ref, prompt, True)
    distinct = len(set(g_cache.flatten().tolist()))
    record(name, "greedy 20: cache == no cache == ref", torch.equal(g_cache, g_full) and torch.equal(g_cache, g_ref),
           f"{distinct} distinct tokens")

    if eager:  # the eager kernel takes the (sliding-window) mask as an additive float mask
        m_eager = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, attn_implementation="eager")
        with torch.no_grad():
            d_eager = (m_eager.eval()(ids).logits - ref(ids).logits).abs().max().item()
            same = torch.equal(greedy(m_eager, prompt, True), g_ref)
        record(name, "eager attention: logits, greedy 20", d_eager <= TOL and same, f"max|diff| {d_eager:.1e}")

    if resave:  # model.save_pretrained writes a folder that loads back to the same logits and tensor names
        again = TMP / (name + "_resaved")
        model.save_pretrained(again)
        saved = json.loads((again / "config.json").read_text())
        m2, info2 = AutoModelForCausalLM.from_pretrained(again, trust_remote_code=True, output_loading_info=True)
        with torch.no_grad():
            d2 = (m2.eval()(ids).logits - ref(ids).logits).abs().max().item()
        keys2 = set(load_file(str(again / "model.safetensors")).keys())
        ok = (d2 <= TOL and keys2 == file_keys and not info2["missing_keys"] and not info2["unexpected_keys"]
              and saved["block_configs"] == config_json["block_configs"] and saved["model_type"] == "nemotron-nas")
        record(name, "save_pretrained round trip", ok, f"max|diff| {d2:.1e}")
    return model


def check_config(folder_exact, folder_portable, model_cls):
    case = "config"
    cfg = AutoConfig.from_pretrained(folder_exact, trust_remote_code=True)
    ConfigCls = type(cfg)
    on_disk = json.loads((folder_exact / "config.json").read_text())
    ffn0, attn0 = cfg.block_configs[0].ffn, cfg.block_configs[0].attention
    record(case, "attribute access, hasattr semantics",
           ffn0.intermediate_size == on_disk["block_configs"][0]["ffn"]["intermediate_size"]
           and not hasattr(ffn0, "ffn_mult") and attn0.no_op is False
           and hasattr(AutoConfig.from_pretrained(folder_portable, trust_remote_code=True).block_configs[0].ffn,
                       "ffn_mult"))

    def plain(x):
        if isinstance(x, dict):
            return type(x) is dict and all(plain(v) for v in x.values())
        if isinstance(x, list):
            return all(plain(v) for v in x)
        return True

    d = cfg.to_dict()
    js = json.loads(cfg.to_json_string())
    record(case, "to_dict / to_json_string plain dicts",
           plain(d["block_configs"]) and js["block_configs"] == on_disk["block_configs"]
           and isinstance(d["intermediate_size"], int) and isinstance(d["num_key_value_heads"], int))
    out = TMP / "config_resaved"
    cfg.save_pretrained(out)
    back = AutoConfig.from_pretrained(out, trust_remote_code=True)
    copied = copy.deepcopy(cfg)
    record(case, "save_pretrained / deepcopy round trip",
           back.block_configs == cfg.block_configs and copied.block_configs == cfg.block_configs
           and back.qkv_bias == cfg.qkv_bias and type(copied.block_configs[1].ffn).__name__ == "_AttrDict")

    # NVIDIA-style globals (null) are derived from the blocks; the ffn_mult formula beats intermediate_size
    blocks = [{"attention": {"no_op": False, "n_heads_in_group": 2},
               "ffn": {"no_op": False, "intermediate_size": 300}},
              {"attention": {"no_op": True, "n_heads_in_group": None},
               "ffn": {"no_op": False, "ffn_mult": 3.0, "intermediate_size": 300}}]
    c = ConfigCls(block_configs=blocks, hidden_size=H, num_hidden_layers=2, num_attention_heads=HEADS,
                  num_key_value_heads=None, intermediate_size=None, vocab_size=VOCAB, rope_theta=1e4)
    m = model_cls(c)
    widths = [layer.mlp.gate_proj.out_features for layer in m.model.layers]
    record(case, "null globals derived; ffn_mult formula wins",
           c.num_key_value_heads == 2 and c.intermediate_size == 300 and widths == [300, 256]
           and not hasattr(m.model.layers[1], "self_attn") and not hasattr(m.model.layers[1], "input_layernorm"),
           f"widths {widths}")
    try:
        ConfigCls(block_configs=blocks[:1], hidden_size=H, num_hidden_layers=2, num_attention_heads=HEADS)
        record(case, "rejects len(block_configs) != layers", False)
    except ValueError:
        record(case, "rejects len(block_configs) != layers", True)


def main():
    transformers.utils.logging.disable_progress_bar()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, work dir {TMP}")
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead
    failed = False
    try:
        check_case("llama_exact", "llama", seed=10, drop_attention={1, 3}, widths=[300, 170, 97, 384],
                   portable=False, resave=True)
        check_case("llama_tied_ffn_mult", "llama", seed=20, drop_attention={2}, widths=[200, 300, 57, 256],
                   portable=True, tied=True, resave=True,
                   # keys our Rust exporter writes beyond the schema (exact widths go in twossp_ffn_widths)
                   extra={"torch_dtype": "float32", "attention_dropout": 0.0, "initializer_range": 0.02,
                          "twossp_ffn_widths": [200, 300, 57, 256]})
        qwen = check_case("qwen2_qkv_bias", "qwen2", seed=30, drop_attention={1, 2}, widths=[333, 128, 250, 199],
                          portable=False)
        check_case("llama_all_biases", "llama", seed=40, drop_attention={3}, widths=[120, 0, 310, 64],
                   portable=False, biases=True)
        check_case("mistral_window5", "mistral", seed=50, drop_attention={2}, widths=[256, 100, 200, 150],
                   portable=False, window=5, eager=True)
        check_config(TMP / "llama_exact", TMP / "llama_tied_ffn_mult", type(qwen))
    except Exception as exc:  # report the crash as a failure, keep the table
        import traceback

        traceback.print_exc()
        record("crash", type(exc).__name__, False, str(exc)[:80])

    w_case = max(len(r[0]) for r in RESULTS)
    w_check = max(len(r[1]) for r in RESULTS)
    for case, check, ok, detail in RESULTS:
        print(f"{'PASS' if ok else 'FAIL'}  {case:<{w_case}}  {check:<{w_check}}  {detail}")
        failed |= not ok
    n_fail = sum(not r[2] for r in RESULTS)
    print(f"{len(RESULTS) - n_fail}/{len(RESULTS)} checks passed")
    shutil.rmtree(TMP, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
