//! Qwen2 (q/k/v biases) and Qwen3 (per-head q/k RMSNorm, no biases).

use super::{ArchTraits, Family};
use serde_json::Value;

/// Traits of Qwen2/Qwen3.
pub fn traits(family: Family) -> ArchTraits {
    ArchTraits {
        family,
        norm_offset: 0.0,
        embed_scaled: false,
        sandwich_norms: false,
        qk_norm: family == Family::Qwen3,
        fused_qkv: false,
        fused_gate_up: false,
        qkv_bias: family == Family::Qwen2,
        o_bias: false,
        mlp_bias: false,
    }
}

/// v4-style configs: with `use_sliding_window`, layers from `max_window_layers` on use the window.
pub fn sliding_layers(cfg: &Value, n_layers: usize) -> Vec<bool> {
    let enabled =
        cfg["use_sliding_window"].as_bool().unwrap_or(false) && !cfg["sliding_window"].is_null();
    let first = cfg["max_window_layers"].as_u64().unwrap_or(0) as usize;
    (0..n_layers).map(|i| enabled && i >= first).collect()
}
