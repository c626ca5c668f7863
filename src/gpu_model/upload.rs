//! Building a [`GpuModel`]: streamed from a checkpoint folder one block at a time (the host never
//! holds the whole model), or copied from a host [`Model`]. Matrices are rounded to bf16 on the way.

use super::{GpuAttention, GpuBlock, GpuFfn, GpuMatrix, GpuModel};
use crate::backend::cuda::{Gpu, GpuBuffer};
use crate::config::ModelConfig;
use crate::model::{load_block, load_lm_head, Attention, Block, Ffn, Model, Precision, Weights};
use crate::weights::TensorStore;
use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Arc;

impl GpuModel {
    /// Loads config.json and the safetensors of `dir` straight to the GPU, block by block.
    pub fn load(gpu: Arc<Gpu>, dir: &Path) -> Result<Self> {
        let config = ModelConfig::from_dir(dir)?;
        super::check_supported(&config)?;
        let store = TensorStore::open(dir)?;
        crate::model::check_config_against_tensors(&config, &store)?;
        let (hidden, vocab) = (config.hidden, config.vocab);
        let context = || format!("cannot load model from {}", dir.display());
        let bar = crate::progress::bar(config.n_layers() as u64, "load to GPU");
        let mut blocks = Vec::with_capacity(config.n_layers());
        for i in 0..config.n_layers() {
            let block = load_block(&config, &store, i, Precision::F32).with_context(context)?;
            blocks.push(upload_block(&gpu, &block, hidden)?);
            bar.inc(1);
        }
        bar.finish_and_clear();
        let embed = store
            .weights(
                "model.embed_tokens.weight",
                &[vocab, hidden],
                Precision::F32,
            )
            .with_context(context)?;
        let lm_head = load_lm_head(&config, &store, Precision::F32).with_context(context)?;
        Ok(Self {
            embed: matrix(&gpu, &embed, vocab, hidden)?,
            final_norm: gpu.upload(
                &store
                    .f32("model.norm.weight", &[hidden])
                    .with_context(context)?,
            )?,
            lm_head: lm_head
                .map(|h| matrix(&gpu, &h.weight, h.out_dim, h.in_dim))
                .transpose()?,
            blocks,
            config,
            gpu,
        })
    }

    /// Copies `model` to the GPU (bf16 matrices, f32 norms and biases).
    pub fn upload(gpu: Arc<Gpu>, model: &Model) -> Result<Self> {
        super::check_supported(&model.config)?;
        let cfg = &model.config;
        let blocks = model
            .blocks
            .iter()
            .map(|b| upload_block(&gpu, b, cfg.hidden))
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

fn upload_block(gpu: &Gpu, b: &Block, hidden: usize) -> Result<GpuBlock> {
    Ok(GpuBlock {
        attention: b
            .attention
            .as_ref()
            .map(|a| upload_attention(gpu, a))
            .transpose()?,
        ffn: b
            .ffn
            .as_ref()
            .map(|f| upload_ffn(gpu, f, hidden))
            .transpose()?,
    })
}

fn matrix(gpu: &Gpu, weight: &Weights, rows: usize, cols: usize) -> Result<GpuMatrix> {
    Ok(GpuMatrix {
        data: gpu.upload_bf16(&weight.to_f32())?,
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
    let width = f.width();
    let mut ffn = GpuFfn {
        norm: gpu.upload(&f.norm)?,
        gate_up: matrix(gpu, &f.gate_up.weight, 2 * width, hidden)?,
        gate_up_bias: optional(gpu, &f.gate_up.bias)?,
        down: matrix(gpu, &f.down.weight, hidden, width)?,
        down_bias: optional(gpu, &f.down.bias)?,
        post_norm: optional(gpu, &f.post_norm)?,
        width,
        padded: width,
    };
    ffn.pad(gpu)?;
    Ok(ffn)
}
