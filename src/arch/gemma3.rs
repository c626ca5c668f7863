//! Gemma-3 text: (1+w) RMSNorm, sqrt(hidden) embedding scale, sandwich norms, q/k norm,
//! local sliding-window layers with their own RoPE base, GELU-tanh gate.

use super::{ArchTraits, Family};
use serde_json::Value;

/// Traits of Gemma-3.
pub fn traits() -> ArchTraits {
    ArchTraits {
        family: Family::Gemma3,
        norm_offset: 1.0,
        embed_scaled: true,
        sandwich_norms: true,
        qk_norm: true,
        fused_qkv: false,
        fused_gate_up: false,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
    }
}

/// Without `layer_types`: every `sliding_window_pattern`-th layer is global, the others local.
pub fn sliding_layers(cfg: &Value, n_layers: usize) -> Vec<bool> {
    let pattern = cfg["sliding_window_pattern"]
        .as_u64()
        .or_else(|| cfg["_sliding_window_pattern"].as_u64())
        .unwrap_or(6)
        .max(1) as usize;
    (0..n_layers).map(|i| (i + 1) % pattern != 0).collect()
}

/// RoPE base of local layers (`rope_local_base_freq`, 10000 by default).
pub fn local_rope_theta(cfg: &Value) -> Option<f32> {
    Some(cfg["rope_local_base_freq"].as_f64().unwrap_or(10_000.0) as f32)
}

/// Scores are scaled by `query_pre_attn_scalar ** -0.5`.
pub fn attention_scale(cfg: &Value, head_dim: usize) -> f32 {
    let scalar = cfg["query_pre_attn_scalar"]
        .as_f64()
        .unwrap_or(head_dim as f64);
    scalar.powf(-0.5) as f32
}
