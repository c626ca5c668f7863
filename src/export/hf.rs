//! Native HF folders (the source's own `model_type`): one FFN width for every block (narrower
//! blocks zero-padded, which is exact) and removed attention kept as zeros, so stock
//! transformers, vLLM and llama.cpp's converter load it with nothing missing. Attention's compute
//! and KV cache stay in those runtimes; this engine skips the declared zero attention.

use super::plan::{AttentionOut, BlockPlan};
use crate::arch::Family;
use crate::config::{ModelConfig, FFN_WIDTHS_KEY, ZERO_ATTENTION_KEY};
use serde_json::{json, Value};

/// The native `config.json` of the output.
pub fn config_json(
    config: &ModelConfig,
    blocks: &[BlockPlan],
    exact_widths: &[usize],
    dtype: &str,
) -> Value {
    let mut c = config.raw.clone();
    let Some(obj) = c.as_object_mut() else {
        return c;
    };
    for key in [
        "block_configs",
        "auto_map",
        ZERO_ATTENTION_KEY,
        FFN_WIDTHS_KEY,
        "qkv_bias",
    ] {
        obj.remove(key);
    }
    if config.model_type == "nemotron-nas" {
        // A DeciLM source goes back to the Llama architecture (Qwen2 when it had q/k/v biases).
        let (model_type, class) = if config.arch.qkv_bias && !config.arch.o_bias {
            ("qwen2", "Qwen2ForCausalLM")
        } else {
            ("llama", "LlamaForCausalLM")
        };
        obj.insert("model_type".into(), json!(model_type));
        obj.insert("architectures".into(), json!([class]));
        if let Some(a) = config.blocks.iter().find_map(|b| b.attention.as_ref()) {
            obj.insert("num_key_value_heads".into(), json!(a.n_kv_heads));
        }
    }
    let width = blocks.iter().map(|b| b.neurons.len()).max().unwrap_or(0);
    obj.insert("intermediate_size".into(), json!(width));
    let zeroed: Vec<usize> = blocks
        .iter()
        .enumerate()
        .filter(|(_, b)| b.attention == AttentionOut::Zero)
        .map(|(i, _)| i)
        .collect();
    if !zeroed.is_empty() {
        obj.insert(ZERO_ATTENTION_KEY.into(), json!(zeroed));
    }
    if exact_widths.iter().any(|&w| w != width) {
        obj.insert(FFN_WIDTHS_KEY.into(), json!(exact_widths));
    }
    if obj.contains_key("torch_dtype") {
        obj.insert("torch_dtype".into(), json!(dtype));
    }
    obj.insert("dtype".into(), json!(dtype));
    if config.arch.family == Family::Gemma3 && obj.get("architectures").is_none() {
        obj.insert("architectures".into(), json!(["Gemma3ForCausalLM"]));
    }
    c
}
