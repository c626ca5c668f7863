//! Phi-3: fused `qkv_proj` (rows q | k | v) and `gate_up_proj` (rows gate | up), optional partial rotary.

use super::{ArchTraits, Family};

/// Traits of Phi-3.
pub fn traits() -> ArchTraits {
    ArchTraits {
        family: Family::Phi3,
        norm_offset: 0.0,
        embed_scaled: false,
        sandwich_norms: false,
        qk_norm: false,
        fused_qkv: true,
        fused_gate_up: true,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
    }
}
