//! Building a [`GpuModel`] from a host [`Model`]: weights rounded to bf16 tensor by tensor.

use super::{padded_width, GpuAttention, GpuBlock, GpuFfn, GpuMatrix, GpuModel};
use crate::backend::cuda::{Gpu, GpuBuffer};
use crate::model::{Attention, Ffn, Model};
use anyhow::Result;
use rayon::prelude::*;
use std::sync::Arc;

impl GpuModel {
    /// Copies `model` to the GPU (bf16 matrices, f32 norms and biases).
    pub fn upload(gpu: Arc<Gpu>, model: &Model) -> Result<Self> {
        let cfg = &model.config;
        let blocks = model
            .blocks
            .iter()
            .map(|b| {
                Ok(GpuBlock {
                    attention: b.attention.as_ref().map(|a| upload_attention(&gpu, a)).transpose()?,
                    ffn: b.ffn.as_ref().map(|f| upload_ffn(&gpu, f, cfg.hidden)).transpose()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed: matrix(&gpu, &model.embed, cfg.vocab, cfg.hidden)?,
            final_norm: gpu.upload(&model.final_norm)?,
            lm_head: model
                .lm_head
                .as_ref()
                .map(|h| matrix(&gpu, &h.weight, h.out_dim, h.in_dim))
                .transpose()?,
            blocks,
            config: model.config.clone(),
            gpu,
        })
    }
}

/// Rounds f32 values to bf16 bits (nearest even), in parallel.
pub(super) fn to_bf16_bits(values: &[f32]) -> Vec<u16> {
    values.par_iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect()
}

fn matrix(gpu: &Gpu, weight: &[f32], rows: usize, cols: usize) -> Result<GpuMatrix> {
    Ok(GpuMatrix {
        data: gpu.upload(&to_bf16_bits(weight))?,
        rows,
        cols,
    })
}

fn optional(gpu: &Gpu, v: &Option<Vec<f32>>) -> Result<Option<GpuBuffer<f32>>> {
    v.as_ref().map(|v| gpu.upload(v)).transpose()
}

fn upload_attention(gpu: &Gpu, a: &Attention) -> Result<GpuAttention> {
    Ok(GpuAttention {
        spec: a.spec.clone(),
        norm: gpu.upload(&a.norm)?,
        qkv: matrix(gpu, &a.qkv.weight, a.qkv.out_dim, a.qkv.in_dim)?,
        qkv_bias: optional(gpu, &a.qkv.bias)?,
        o: matrix(gpu, &a.o.weight, a.o.out_dim, a.o.in_dim)?,
        o_bias: optional(gpu, &a.o.bias)?,
        q_norm: optional(gpu, &a.q_norm)?,
        k_norm: optional(gpu, &a.k_norm)?,
        post_norm: optional(gpu, &a.post_norm)?,
    })
}

fn upload_ffn(gpu: &Gpu, f: &Ffn, hidden: usize) -> Result<GpuFfn> {
    let (width, padded) = (f.width(), padded_width(f.width()));
    // gate rows, zero rows up to `padded`, up rows, zero rows.
    let mut gate_up = vec![0f32; 2 * padded * hidden];
    gate_up[..width * hidden].copy_from_slice(&f.gate_up.weight[..width * hidden]);
    gate_up[padded * hidden..(padded + width) * hidden].copy_from_slice(&f.gate_up.weight[width * hidden..]);
    let gate_up_bias = f.gate_up.bias.as_ref().map(|b| {
        let mut padded_bias = vec![0f32; 2 * padded];
        padded_bias[..width].copy_from_slice(&b[..width]);
        padded_bias[padded..padded + width].copy_from_slice(&b[width..]);
        padded_bias
    });
    let mut down = vec![0f32; hidden * padded];
    for (dst, src) in down.chunks_exact_mut(padded).zip(f.down.weight.chunks_exact(width)) {
        dst[..width].copy_from_slice(src);
    }
    Ok(GpuFfn {
        norm: gpu.upload(&f.norm)?,
        gate_up: matrix(gpu, &gate_up, 2 * padded, hidden)?,
        gate_up_bias: optional(gpu, &gate_up_bias)?,
        down: matrix(gpu, &down, hidden, padded)?,
        down_bias: optional(gpu, &f.down.bias)?,
        post_norm: optional(gpu, &f.post_norm)?,
        width,
        padded,
    })
}
