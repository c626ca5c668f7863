//! The model in memory: weights laid out per block (f32, or 16-bit as the checkpoint stores them),
//! loaded from an HF checkpoint folder.

mod engine;
mod forward;
mod kv_cache;
mod load;

pub use load::check_config_against_tensors;
#[cfg(feature = "cuda")]
pub(crate) use load::{load_block, load_lm_head};
mod surgery;

pub use engine::CpuWorkspace;
pub use forward::{FfnObserver, Workspace};
pub use kv_cache::{KvCache, LayerCache};

use crate::config::{AttentionSpec, ModelConfig};
pub use crate::weights::{Precision, Weights};

/// A linear layer `y = x W^T + b` with `W` row-major `[out_dim, in_dim]`.
#[derive(Clone, Debug)]
pub struct Linear {
    /// Weight rows, one per output feature.
    pub weight: Weights,
    /// Optional bias per output feature.
    pub bias: Option<Vec<f32>>,
    /// Output features.
    pub out_dim: usize,
    /// Input features.
    pub in_dim: usize,
}

/// An attention submodule with its pre-norm (and Gemma's post-norm).
#[derive(Clone, Debug)]
pub struct Attention {
    /// Shape, masking and RoPE.
    pub spec: AttentionSpec,
    /// RMSNorm before the attention (`input_layernorm`).
    pub norm: Vec<f32>,
    /// Fused projection: rows q | k | v.
    pub qkv: Linear,
    /// Output projection.
    pub o: Linear,
    /// Per-head RMSNorm of queries (Qwen3, Gemma-3).
    pub q_norm: Option<Vec<f32>>,
    /// Per-head RMSNorm of keys (Qwen3, Gemma-3).
    pub k_norm: Option<Vec<f32>>,
    /// RMSNorm of the attention output before the residual add (Gemma-3).
    pub post_norm: Option<Vec<f32>>,
    /// SliceGPT: the matrix on the residual path (`[out, in]` widths); its pre-norm is then the
    /// weightless RMSN and `norm` is empty.
    pub shortcut: Option<Linear>,
}

/// A gated FFN with its pre-norm (and Gemma's post-norm).
#[derive(Clone, Debug)]
pub struct Ffn {
    /// RMSNorm before the FFN.
    pub norm: Vec<f32>,
    /// Fused gate and up projections: rows gate (width) | up (width).
    pub gate_up: Linear,
    /// Down projection `[hidden, width]`.
    pub down: Linear,
    /// RMSNorm of the FFN output before the residual add (Gemma-3).
    pub post_norm: Option<Vec<f32>>,
    /// SliceGPT: the matrix on the residual path, as for [`Attention::shortcut`].
    pub shortcut: Option<Linear>,
}

impl Ffn {
    /// Number of neurons.
    pub fn width(&self) -> usize {
        self.down.in_dim
    }
}

/// A decoder block; either submodule may be absent.
#[derive(Clone, Debug)]
pub struct Block {
    /// Attention submodule, `None` once pruned.
    pub attention: Option<Attention>,
    /// FFN submodule, `None` for zero width.
    pub ffn: Option<Ffn>,
}

/// A decoder-only language model.
#[derive(Clone, Debug)]
pub struct Model {
    /// Configuration the weights follow.
    pub config: ModelConfig,
    /// Token embeddings `[vocab, hidden]`.
    pub embed: Weights,
    /// Decoder blocks.
    pub blocks: Vec<Block>,
    /// Final RMSNorm.
    pub final_norm: Vec<f32>,
    /// Separate LM head, `None` when tied to the embeddings.
    pub lm_head: Option<Linear>,
    /// Dtype the checkpoint stored its weights in (saved models keep it).
    pub storage_dtype: safetensors::Dtype,
}

impl Linear {
    /// `y = x W^T + b` for `n` rows of `x`.
    pub fn apply(&self, x: &[f32], y: &mut [f32], n: usize) {
        self.weight
            .linear(x, self.bias.as_deref(), y, n, self.out_dim, self.in_dim);
    }
}

impl Model {
    /// LM head weight `[vocab, hidden]`: its own or the tied embeddings.
    pub fn head_weight(&self) -> &Weights {
        self.lm_head.as_ref().map_or(&self.embed, |h| &h.weight)
    }

    /// The precision the matrices are kept in.
    pub fn precision(&self) -> Precision {
        self.embed.precision()
    }

    /// Every weight matrix: embeddings, the untied LM head and each block's projections.
    pub fn matrices(&self) -> impl Iterator<Item = &Weights> {
        let projections = self.blocks.iter().flat_map(|b| {
            let a = b
                .attention
                .iter()
                .flat_map(|a| [Some(&a.qkv), Some(&a.o), a.shortcut.as_ref()]);
            let f = b
                .ffn
                .iter()
                .flat_map(|f| [Some(&f.gate_up), Some(&f.down), f.shortcut.as_ref()]);
            a.chain(f).flatten().map(|l| &l.weight)
        });
        std::iter::once(&self.embed)
            .chain(self.lm_head.iter().map(|h| &h.weight))
            .chain(projections)
    }

    /// Bytes of all weights as kept in memory (matrices at their precision, norms and biases f32).
    pub fn weight_bytes(&self) -> u64 {
        let (bytes, elems) = self
            .matrices()
            .fold((0, 0), |(b, e), w| (b + w.n_bytes(), e + w.len() as u64));
        // A tied checkpoint that also stores lm_head.weight holds the head twice; the config counts it once.
        let head_copy = match (&self.lm_head, self.config.tie_embeddings) {
            (Some(head), true) => head.weight.len() as u64,
            _ => 0,
        };
        bytes + 4 * (self.config.params_total() + head_copy - elems)
    }
}
