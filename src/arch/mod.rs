//! Architecture families: what differs between Llama, Mistral, Qwen2/3, Phi-3 and Gemma-3, as data.
//!
//! The forward pass and pruning are written once against [`crate::config::ModelConfig`]; each family
//! file only says how its HF config and tensor names map onto that common description.

mod gemma3;
mod llama;
mod phi3;
mod qwen;

use anyhow::{bail, Result};
use serde_json::Value;

/// A supported model family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Llama 2/3, SmolLM2, TinyLlama (`llama`).
    Llama,
    /// Mistral (`mistral`): Llama with a sliding window.
    Mistral,
    /// Qwen2 / Qwen2.5 (`qwen2`): q/k/v biases.
    Qwen2,
    /// Qwen3 (`qwen3`): per-head q/k RMSNorm.
    Qwen3,
    /// Phi-3 (`phi3`): fused qkv_proj and gate_up_proj.
    Phi3,
    /// Gemma-3 text (`gemma3_text`): (1+w) norms, scaled embeddings, sandwich norms, local/global layers.
    Gemma3,
}

/// Fixed traits of a family plus the config-dependent choices it resolves.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchTraits {
    /// The family.
    pub family: Family,
    /// RMSNorm multiplies by `(offset + w)`: 0 for most, 1 for Gemma.
    pub norm_offset: f32,
    /// Embeddings are multiplied by sqrt(hidden_size).
    pub embed_scaled: bool,
    /// Extra norms after the attention and FFN outputs (Gemma-3).
    pub sandwich_norms: bool,
    /// Per-head RMSNorm on queries and keys before RoPE.
    pub qk_norm: bool,
    /// q/k/v stored as one `qkv_proj` tensor.
    pub fused_qkv: bool,
    /// gate/up stored as one `gate_up_proj` tensor.
    pub fused_gate_up: bool,
    /// q/k/v projections carry biases.
    pub qkv_bias: bool,
    /// The attention output projection carries a bias.
    pub o_bias: bool,
    /// FFN projections carry biases.
    pub mlp_bias: bool,
}

/// Layer kind as HF `layer_types` names it.
pub fn is_sliding_layer_type(kind: &str) -> Result<bool> {
    match kind {
        "sliding_attention" => Ok(true),
        "full_attention" => Ok(false),
        other => bail!("unsupported layer type '{other}' in layer_types"),
    }
}

impl Family {
    /// Maps an HF `model_type` onto a family, or explains that it is unsupported.
    pub fn from_model_type(model_type: &str) -> Result<Self> {
        Ok(match model_type {
            // DeciLM / nemotron-nas (our `decilm` export): Llama blocks with per-block shapes.
            "llama" | "nemotron-nas" => Family::Llama,
            "mistral" => Family::Mistral,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "phi3" => Family::Phi3,
            "gemma3_text" | "gemma3" => Family::Gemma3,
            other => bail!(
                "unsupported architecture: model_type '{other}' (supported: llama, mistral, qwen2, qwen3, phi3, gemma3_text, nemotron-nas)"
            ),
        })
    }

    /// Resolves the family's traits against its config.json.
    pub fn traits(self, cfg: &Value) -> ArchTraits {
        match self {
            Family::Llama | Family::Mistral => llama::traits(self, cfg),
            Family::Qwen2 | Family::Qwen3 => qwen::traits(self),
            Family::Phi3 => phi3::traits(),
            Family::Gemma3 => gemma3::traits(),
        }
    }

    /// Per-layer sliding-window flags when the config has no `layer_types` list.
    pub fn default_sliding_layers(self, cfg: &Value, n_layers: usize) -> Vec<bool> {
        match self {
            Family::Llama => vec![false; n_layers],
            Family::Mistral | Family::Phi3 => vec![!cfg["sliding_window"].is_null(); n_layers],
            Family::Qwen2 | Family::Qwen3 => qwen::sliding_layers(cfg, n_layers),
            Family::Gemma3 => gemma3::sliding_layers(cfg, n_layers),
        }
    }

    /// Name of the activation field and its default.
    pub fn activation_field(self) -> (&'static str, &'static str) {
        match self {
            Family::Gemma3 => ("hidden_activation", "gelu_pytorch_tanh"),
            _ => ("hidden_act", "silu"),
        }
    }

    /// RoPE theta of sliding-window layers in v4-style configs (Gemma-3's `rope_local_base_freq`).
    pub fn local_rope_theta(self, cfg: &Value) -> Option<f32> {
        match self {
            Family::Gemma3 => gemma3::local_rope_theta(cfg),
            _ => None,
        }
    }

    /// Attention score scale for a head dimension.
    pub fn attention_scale(self, cfg: &Value, head_dim: usize) -> f32 {
        match self {
            Family::Gemma3 => gemma3::attention_scale(cfg, head_dim),
            _ => (head_dim as f64).powf(-0.5) as f32,
        }
    }
}
