//! DeciLM / nemotron-nas folders (`DeciLMForCausalLM`): blocks without attention carry no
//! attention tensors, each block has its own FFN width. vLLM loads them natively, HF transformers
//! with our remote code (`decilm_code/`), llama.cpp through its `deci` architecture.

use super::plan::{AttentionOut, BlockPlan};
use crate::arch::Family;
use crate::config::{ModelConfig, FFN_WIDTHS_KEY};
use anyhow::{bail, Result};
use serde_json::{json, Map, Value};

/// Our `trust_remote_code` config class for transformers 5.x.
pub const CONFIGURATION_PY: &str = include_str!("decilm_code/configuration_decilm.py");
/// Our `trust_remote_code` model for transformers 5.x.
pub const MODELING_PY: &str = include_str!("decilm_code/modeling_decilm.py");

/// Width a DeciLM `ffn_mult` stands for, as vLLM, TRT-LLM, SGLang and llama.cpp compute it.
pub fn ffn_mult_width(ffn_mult: f64, hidden: usize) -> usize {
    ((2.0 * ffn_mult * hidden as f64 / 3.0) as usize).div_ceil(256) * 256
}

/// The `ffn_mult` that maps back to `width` (a multiple of 256): aims at the middle of the bucket.
pub fn ffn_mult_for(width: usize, hidden: usize) -> Result<f64> {
    if width == 0 || !width.is_multiple_of(256) {
        bail!("ffn_mult can only express widths that are positive multiples of 256, not {width}");
    }
    let mult = (1.5 * (width as f64 - 128.0) / hidden as f64 * 1e6).round() / 1e6;
    if ffn_mult_width(mult, hidden) != width {
        bail!("ffn_mult {mult} does not reproduce width {width} for hidden size {hidden}");
    }
    Ok(mult)
}

/// Refuses models DeciLM cannot express, naming the fallback.
pub fn check_expressible(config: &ModelConfig) -> Result<()> {
    let family = config.arch.family;
    let fallback = "use --format hf (native architecture, removed attention kept as zeros)";
    match family {
        Family::Llama | Family::Mistral | Family::Qwen2 | Family::Phi3 => {}
        Family::Qwen3 => bail!("--format decilm cannot express Qwen3's per-head q/k norms; {fallback}"),
        Family::Gemma3 => bail!(
            "--format decilm cannot express Gemma-3 (GELU, sandwich norms, q/k norms, scaled embeddings); {fallback}"
        ),
    }
    if let Some(a) = config.blocks.iter().find_map(|b| b.attention.as_ref()) {
        if a.rope.rotary_dim != a.head_dim {
            bail!("--format decilm cannot express partial rotary embeddings; {fallback}");
        }
    }
    Ok(())
}

/// The DeciLM `config.json` of the output.
pub fn config_json(
    config: &ModelConfig,
    blocks: &[BlockPlan],
    exact_widths: &[usize],
    ffn_mult: bool,
    dtype: &str,
) -> Result<Value> {
    let src = &config.raw;
    let template = config
        .blocks
        .iter()
        .find_map(|b| b.attention.as_ref())
        .ok_or_else(|| anyhow::anyhow!("the model has no attention in any block"))?;
    let mut c = Map::new();
    c.insert("architectures".into(), json!(["DeciLMForCausalLM"]));
    c.insert("model_type".into(), json!("nemotron-nas"));
    c.insert(
        "auto_map".into(),
        json!({"AutoConfig": "configuration_decilm.DeciLMConfig",
               "AutoModelForCausalLM": "modeling_decilm.DeciLMForCausalLM"}),
    );
    let widths: Vec<usize> = blocks.iter().map(|b| b.neurons.len()).collect();
    c.insert("hidden_size".into(), json!(config.hidden));
    c.insert("num_hidden_layers".into(), json!(blocks.len()));
    c.insert("num_attention_heads".into(), json!(template.n_heads));
    c.insert("num_key_value_heads".into(), json!(template.n_kv_heads));
    c.insert("head_dim".into(), json!(template.head_dim));
    c.insert("intermediate_size".into(), json!(widths.iter().max()));
    c.insert("hidden_act".into(), json!("silu"));
    c.insert("rms_norm_eps".into(), src["rms_norm_eps"].clone());
    c.insert("vocab_size".into(), json!(config.vocab));
    let max_pos = src["max_position_embeddings"].as_u64().unwrap_or(4096);
    c.insert("max_position_embeddings".into(), json!(max_pos));
    c.insert("tie_word_embeddings".into(), json!(config.tie_embeddings));
    let arch = &config.arch;
    let attention_bias = arch.o_bias;
    c.insert("attention_bias".into(), json!(attention_bias));
    c.insert("qkv_bias".into(), json!(arch.qkv_bias && !attention_bias));
    c.insert("mlp_bias".into(), json!(arch.mlp_bias));
    c.insert("attention_dropout".into(), json!(0.0));
    for key in [
        "rope_theta",
        "rope_scaling",
        "rope_parameters",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "initializer_range",
    ] {
        if !src[key].is_null() {
            c.insert(key.into(), src[key].clone());
        }
    }
    c.insert("dtype".into(), json!(dtype));
    c.insert("torch_dtype".into(), json!(dtype));
    let entries = blocks
        .iter()
        .zip(&config.blocks)
        .map(|(plan, spec)| {
            let attention = match (plan.attention, &spec.attention) {
                (AttentionOut::Keep, Some(a)) => json!({
                    "no_op": false, "replace_with_linear": false, "sparsify": null,
                    "n_heads_in_group": a.n_heads / a.n_kv_heads, "window_length": a.window,
                    "num_sink_tokens": null, "use_prefill_window_in_sink_attention": false,
                    "unshifted_sink": false}),
                _ => json!({
                    "no_op": true, "replace_with_linear": false, "sparsify": null,
                    "n_heads_in_group": null, "window_length": null, "num_sink_tokens": null,
                    "use_prefill_window_in_sink_attention": false, "unshifted_sink": false}),
            };
            let width = plan.neurons.len();
            let mut ffn =
                json!({"no_op": width == 0, "replace_with_linear": false, "sparsify": null});
            if width > 0 {
                if ffn_mult {
                    ffn["ffn_mult"] = json!(ffn_mult_for(width, config.hidden)?);
                }
                ffn["intermediate_size"] = json!(width);
            }
            Ok(json!({"attention": attention, "ffn": ffn}))
        })
        .collect::<Result<Vec<_>>>()?;
    c.insert("block_configs".into(), Value::Array(entries));
    if exact_widths != widths.as_slice() {
        c.insert(FFN_WIDTHS_KEY.into(), json!(exact_widths));
    }
    Ok(Value::Object(c))
}
