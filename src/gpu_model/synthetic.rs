//! Random weights of a config's real shapes, generated on the device (for timing a 7B shape without
//! its checkpoint): matrices uniform with standard deviation 0.02, norms at 1, biases at 0.

use super::{GpuAttention, GpuBlock, GpuFfn, GpuMatrix, GpuModel};
use crate::backend::cuda::{kernels, Gpu, GpuBuffer};
use crate::config::ModelConfig;
use anyhow::Result;
use std::sync::Arc;

/// Standard deviation of the synthetic matrices (uniform: half-width sqrt(3) times larger).
const WEIGHT_STD: f32 = 0.02;

/// Generates buffers with distinct seeds.
struct Generator<'a> {
    gpu: &'a Gpu,
    seed: u64,
    counter: u64,
}

impl Generator<'_> {
    fn matrix(&mut self, rows: usize, cols: usize) -> Result<GpuMatrix> {
        let data = self.gpu.zeros::<u16>(rows * cols)?;
        self.counter += 1;
        let seed = self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ self.counter;
        kernels::fill_uniform_bf16(
            self.gpu,
            self.gpu.ptr(&data, 0),
            rows * cols,
            seed,
            WEIGHT_STD * 3f32.sqrt(),
        )?;
        Ok(GpuMatrix { data, rows, cols })
    }

    /// A norm weight vector whose effective scale (offset + w) is 1.
    fn norm(&self, n: usize, offset: f32) -> Result<GpuBuffer<f32>> {
        let v = self.gpu.zeros::<f32>(n)?;
        kernels::fill_f32(self.gpu, self.gpu.ptr(&v, 0), n, 1.0 - offset)?;
        Ok(v)
    }

    fn bias(&self, n: usize, present: bool) -> Result<Option<GpuBuffer<f32>>> {
        present.then(|| self.gpu.zeros::<f32>(n)).transpose()
    }
}

impl GpuModel {
    /// A model of `config`'s shapes with seeded random weights, generated on the device.
    pub fn synthetic(gpu: Arc<Gpu>, config: &ModelConfig, seed: u64) -> Result<Self> {
        super::check_supported(config)?;
        let (hidden, vocab, arch) = (config.hidden, config.vocab, &config.arch);
        let offset = arch.norm_offset;
        let mut g = Generator {
            gpu: &gpu,
            seed,
            counter: 0,
        };
        let mut blocks = Vec::with_capacity(config.blocks.len());
        for spec in &config.blocks {
            let attention = match &spec.attention {
                None => None,
                Some(a) => {
                    let qkv_rows = a.q_dim() + 2 * a.kv_dim();
                    let head_norm = |g: &Generator| -> Result<Option<GpuBuffer<f32>>> {
                        arch.qk_norm.then(|| g.norm(a.head_dim, offset)).transpose()
                    };
                    Some(GpuAttention {
                        spec: a.clone(),
                        norm: g.norm(hidden, offset)?,
                        qkv: g.matrix(qkv_rows, hidden)?,
                        qkv_bias: g.bias(qkv_rows, arch.qkv_bias)?,
                        o: g.matrix(hidden, a.q_dim())?,
                        o_bias: g.bias(hidden, arch.o_bias)?,
                        q_norm: head_norm(&g)?,
                        k_norm: head_norm(&g)?,
                        post_norm: arch
                            .sandwich_norms
                            .then(|| g.norm(hidden, offset))
                            .transpose()?,
                    })
                }
            };
            let ffn = if spec.ffn_width == 0 {
                None
            } else {
                // Random padding rows would not be zero: generate exact widths, then pad.
                let width = spec.ffn_width;
                let mut ffn = GpuFfn {
                    norm: g.norm(hidden, offset)?,
                    gate_up: g.matrix(2 * width, hidden)?,
                    gate_up_bias: g.bias(2 * width, arch.mlp_bias)?,
                    down: g.matrix(hidden, width)?,
                    down_bias: g.bias(hidden, arch.mlp_bias)?,
                    post_norm: arch
                        .sandwich_norms
                        .then(|| g.norm(hidden, offset))
                        .transpose()?,
                    width,
                    padded: width,
                };
                ffn.pad(&gpu)?;
                Some(ffn)
            };
            blocks.push(GpuBlock { attention, ffn });
        }
        let embed = g.matrix(vocab, hidden)?;
        let lm_head = (!config.tie_embeddings)
            .then(|| g.matrix(vocab, hidden))
            .transpose()?;
        let final_norm = g.norm(hidden, offset)?;
        gpu.sync()?;
        Ok(Self {
            config: config.clone(),
            embed,
            blocks,
            final_norm,
            lm_head,
            gpu,
        })
    }
}
