//! Llama family (Llama 2/3, SmolLM2, TinyLlama) and Mistral: optional biases from the config.

use super::{ArchTraits, Family};
use serde_json::Value;

/// Traits of Llama/Mistral: plain pre-norm blocks; `attention_bias` and `mlp_bias` switch biases
/// on, and DeciLM's `qkv_bias` (a Qwen2 exported as DeciLM) puts biases on q/k/v only.
pub fn traits(family: Family, cfg: &Value) -> ArchTraits {
    let attention_bias = cfg["attention_bias"].as_bool().unwrap_or(false);
    ArchTraits {
        family,
        norm_offset: 0.0,
        embed_scaled: false,
        sandwich_norms: false,
        qk_norm: false,
        fused_qkv: false,
        fused_gate_up: false,
        qkv_bias: attention_bias || cfg["qkv_bias"].as_bool().unwrap_or(false),
        o_bias: attention_bias,
        mlp_bias: cfg["mlp_bias"].as_bool().unwrap_or(false),
    }
}
