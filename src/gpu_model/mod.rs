//! The model on the GPU: bf16 weights in device buffers (f32 norms and biases), built from a host
//! [`Model`] or generated on the device from a config ([`GpuModel::synthetic`]). FFN widths are padded
//! to a multiple of 8 with zero neurons (the GEMM needs 16-byte rows); the padding contributes exactly 0.

mod engine;
mod forward;
mod surgery;
mod synthetic;
mod upload;

pub use forward::{FfnStats, GpuKvCache, GpuWorkspace};

use crate::backend::cuda::{Gpu, GpuBuffer};
use crate::config::{AttentionSpec, ModelConfig};
use std::sync::Arc;

/// FFN widths on the device are rounded up to this many neurons.
pub const FFN_PAD: usize = 8;

/// bf16 weight matrix `[rows, cols]` (row-major, HF layout).
pub struct GpuMatrix {
    /// bf16 bits.
    pub data: GpuBuffer<u16>,
    /// Rows (output features).
    pub rows: usize,
    /// Columns (input features), the row stride.
    pub cols: usize,
}

/// An attention submodule on the device.
pub struct GpuAttention {
    /// Shape, masking and RoPE.
    pub spec: AttentionSpec,
    /// Pre-norm weights.
    pub norm: GpuBuffer<f32>,
    /// Fused q | k | v projection.
    pub qkv: GpuMatrix,
    /// Bias of the fused projection (Qwen2).
    pub qkv_bias: Option<GpuBuffer<f32>>,
    /// Output projection.
    pub o: GpuMatrix,
    /// Output projection bias.
    pub o_bias: Option<GpuBuffer<f32>>,
    /// Per-head query norm.
    pub q_norm: Option<GpuBuffer<f32>>,
    /// Per-head key norm.
    pub k_norm: Option<GpuBuffer<f32>>,
    /// Post-attention norm (Gemma-3).
    pub post_norm: Option<GpuBuffer<f32>>,
}

/// A gated FFN on the device: `gate_up` rows are gate `[0, padded)` then up `[padded, 2 padded)`.
pub struct GpuFfn {
    /// Pre-norm weights.
    pub norm: GpuBuffer<f32>,
    /// Gate and up projections, `[2 padded, hidden]`.
    pub gate_up: GpuMatrix,
    /// Biases of `gate_up` rows (padded like the rows).
    pub gate_up_bias: Option<GpuBuffer<f32>>,
    /// Down projection, `[hidden, padded]`.
    pub down: GpuMatrix,
    /// Down projection bias.
    pub down_bias: Option<GpuBuffer<f32>>,
    /// Post-FFN norm (Gemma-3).
    pub post_norm: Option<GpuBuffer<f32>>,
    /// Real neurons.
    pub width: usize,
    /// Neurons on the device (width rounded up to [`FFN_PAD`]).
    pub padded: usize,
}

/// A decoder block on the device.
pub struct GpuBlock {
    /// Attention, `None` once removed.
    pub attention: Option<GpuAttention>,
    /// FFN, `None` for zero width.
    pub ffn: Option<GpuFfn>,
}

/// A decoder-only model resident on one GPU.
pub struct GpuModel {
    /// The device.
    pub gpu: Arc<Gpu>,
    /// Configuration (updated by pruning).
    pub config: ModelConfig,
    /// Token embeddings `[vocab, hidden]`.
    pub embed: GpuMatrix,
    /// Decoder blocks.
    pub blocks: Vec<GpuBlock>,
    /// Final norm.
    pub final_norm: GpuBuffer<f32>,
    /// Separate LM head (None: tied to `embed`).
    pub lm_head: Option<GpuMatrix>,
}

/// Head dims the attention kernels are built for.
const HEAD_DIMS: [usize; 3] = [64, 128, 256];

/// Refuses, before anything is allocated, a model whose shapes the kernels do not cover.
pub fn check_supported(config: &ModelConfig) -> anyhow::Result<()> {
    if config.slicing.is_some() {
        anyhow::bail!("the GPU backend does not run SliceGPT's sliced widths and shortcut matrices yet; use --device cpu");
    }
    if !config.hidden.is_multiple_of(8) {
        anyhow::bail!("the GPU backend needs a hidden size that is a multiple of 8 (this model: {}); use --device cpu", config.hidden);
    }
    for (i, block) in config.blocks.iter().enumerate() {
        if let Some(a) = &block.attention {
            if !HEAD_DIMS.contains(&a.head_dim) {
                anyhow::bail!("the GPU attention kernels take head dims 64, 128 or 256 (block {i}: {}); use --device cpu", a.head_dim);
            }
        }
    }
    Ok(())
}

/// Width rounded up to the device padding.
pub fn padded_width(width: usize) -> usize {
    width.div_ceil(FFN_PAD) * FFN_PAD
}

fn bytes<T>(b: &GpuBuffer<T>) -> u64 {
    (b.len() * std::mem::size_of::<T>()) as u64
}

fn opt_bytes<T>(b: &Option<GpuBuffer<T>>) -> u64 {
    b.as_ref().map_or(0, bytes)
}

impl GpuAttention {
    /// Device bytes held.
    pub fn device_bytes(&self) -> u64 {
        bytes(&self.norm)
            + bytes(&self.qkv.data)
            + bytes(&self.o.data)
            + opt_bytes(&self.qkv_bias)
            + opt_bytes(&self.o_bias)
            + opt_bytes(&self.q_norm)
            + opt_bytes(&self.k_norm)
            + opt_bytes(&self.post_norm)
    }
}

impl GpuFfn {
    /// Device bytes held.
    pub fn device_bytes(&self) -> u64 {
        bytes(&self.norm)
            + bytes(&self.gate_up.data)
            + bytes(&self.down.data)
            + opt_bytes(&self.gate_up_bias)
            + opt_bytes(&self.down_bias)
            + opt_bytes(&self.post_norm)
    }
}

impl GpuModel {
    /// Device bytes held by the weights.
    pub fn device_bytes(&self) -> u64 {
        let blocks: u64 = self
            .blocks
            .iter()
            .map(|b| {
                b.attention.as_ref().map_or(0, GpuAttention::device_bytes)
                    + b.ffn.as_ref().map_or(0, GpuFfn::device_bytes)
            })
            .sum();
        blocks
            + bytes(&self.embed.data)
            + bytes(&self.final_norm)
            + self.lm_head.as_ref().map_or(0, |h| bytes(&h.data))
    }

    /// LM head weights (its own or the tied embeddings).
    pub fn head(&self) -> &GpuMatrix {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_outside_the_kernels_are_refused_up_front() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let gpu_shaped = ModelConfig::from_dir(&dir.join("tests/fixtures/gpu_gemma3")).unwrap();
        assert!(check_supported(&gpu_shaped).is_ok());
        let tiny = ModelConfig::from_dir(&dir.join("tests/fixtures/llama")).unwrap(); // hidden 36, head dim 8
        let err = check_supported(&tiny).unwrap_err().to_string();
        assert!(err.contains("--device cpu"), "{err}");
    }
}
