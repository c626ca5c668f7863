//! SliceGPT (Ashkboos et al., "SliceGPT: Compress Large Language Models by Deleting Rows and
//! Columns", ICLR 2024), as the 2SSP authors run it (their `src/slicegpt.py` over Microsoft's
//! TransformerCompression `rotate_and_slice_sequential`): fold every RMSNorm scale into the next
//! linear layers (the norms become the weightless RMSN, mean over the original width) and centre
//! the embeddings; then, site by site along the residual stream, rotate into the PCA basis of the
//! calibration signal and keep its first `d` directions. Each submodule gains a shortcut matrix
//! on its residual path (`Q_inᵀ·Q_out`, `d × d`); the last block's output and the LM head keep the
//! full width.
//!
//! The engine keeps the residual stream `hidden` wide with zeros past the sliced width, so every
//! interface above the forward pass (perplexity, tasks, generation) runs a sliced model unchanged.

pub mod pca;
pub mod pipeline;
pub mod rotate;

use crate::config::slicing::Slicing;
use crate::config::ModelConfig;
use crate::model::{Linear, Model, Workspace};
use anyhow::{bail, Result};
use pca::{Covariance, ExplainedVariance};
use rotate::{center_rows, fold_scale, product, rotate_input, rotate_output, shortcut};

/// Epsilon of SliceGPT's RMSN (its `modules.RMSN` fixes it, whatever the model's config says).
pub const RMS_EPS: f32 = 1e-5;

/// The sliced width at `sparsity`, as the authors' `slicegpt()`: `int((1 - s) · hidden)` rounded
/// down to a multiple of 8.
pub fn sliced_width(sparsity: f64, hidden: usize) -> Result<usize> {
    if !(sparsity > 0.0 && sparsity < 1.0) {
        bail!("--sparsity must be in (0, 1), got {sparsity}");
    }
    let d = ((1.0 - sparsity) * hidden as f64) as usize;
    let d = d - d % 8;
    if d == 0 {
        bail!("--sparsity {sparsity} leaves SliceGPT no width of {hidden} (it slices to multiples of 8)");
    }
    Ok(d)
}

/// Refuses a model SliceGPT cannot slice, naming why.
pub fn check_sliceable(config: &ModelConfig) -> Result<()> {
    let arch = &config.arch;
    if arch.sandwich_norms || arch.embed_scaled || arch.norm_offset != 0.0 {
        bail!(
            "SliceGPT folds each RMSNorm into the next linear layer, which {}'s post-norms, scaled embeddings and (1 + w) norms do not allow (the authors run it on Llama, Mistral, Qwen2 and Phi-3)",
            config.model_type
        );
    }
    if config.slicing.is_some() {
        bail!("the model is already sliced by SliceGPT");
    }
    if let Some(i) = config
        .blocks
        .iter()
        .position(|b| b.attention.is_none() || b.ffn_width == 0)
    {
        bail!("SliceGPT slices dense models, but block {i} has lost its attention or MLP");
    }
    Ok(())
}

/// What a SliceGPT run did.
pub struct SliceRun {
    /// The sliced width.
    pub width: usize,
    /// Explained variance at every PCA site, in order.
    pub sites: Vec<ExplainedVariance>,
}

/// Slices `model` in place to `width` with the PCA of the residual stream over `windows`.
pub fn slicegpt(model: &mut Model, windows: &[&[u32]], width: usize) -> Result<SliceRun> {
    check_sliceable(&model.config)?;
    let (hidden, n_layers) = (model.config.hidden, model.blocks.len());
    if width > hidden {
        bail!("cannot slice {hidden} dimensions to {width}");
    }
    fuse_norms(model);
    model.config.slicing = Some(Slicing {
        widths: vec![hidden; 2 * n_layers + 1],
        rms_eps: RMS_EPS,
    });
    let precision = model.precision();
    let mut sites = Vec::with_capacity(2 * n_layers + 1);
    let mut streams = windows
        .iter()
        .map(|w| model.embed_tokens(w))
        .collect::<Result<Vec<_>>>()?;
    let mut cov = Covariance::new(hidden);
    streams.iter().for_each(|x| cov.add(x));
    let pca = cov.pca()?;
    sites.push(pca.explained("embeddings".into(), width));
    let mut q = pca.basis;
    model.embed = rotate_input(&model.embed, q.subcols(0, width));
    set_width(model, 0, width);
    streams
        .iter_mut()
        .for_each(|x| rotate_rows(x, hidden, q.subcols(0, width)));

    let bar = crate::progress::bar(n_layers as u64, "slicegpt");
    let mut ws = Workspace::default();
    for i in 0..n_layers {
        let q_in = q.subcols(0, width);
        // Attention: inputs rotated and sliced; outputs still in the original basis.
        let att = model.blocks[i].attention.as_mut().expect("checked dense");
        att.qkv.weight = rotate_input(&att.qkv.weight, q_in);
        att.qkv.in_dim = width;
        att.norm = Vec::new();
        att.shortcut = Some(shortcut(q_in.transpose(), precision));
        set_width(model, 2 * i, width);
        set_width(model, 2 * i + 1, hidden);
        let ffn = model.blocks[i].ffn.take();
        let mut cov = Covariance::new(hidden);
        for x in &streams {
            let mut mid = x.clone();
            model.run_blocks(&mut mid, i..i + 1, &mut ws, None);
            cov.add(&mid);
        }
        model.blocks[i].ffn = ffn;
        let pca = cov.pca()?;
        sites.push(pca.explained(format!("layer{i}.attn_out_residual"), width));
        let q_mid = pca.basis;
        let q_attn = q_mid.subcols(0, width);
        let att = model.blocks[i].attention.as_mut().expect("checked dense");
        att.shortcut = Some(shortcut(
            product(q_in.transpose(), q_attn).as_ref(),
            precision,
        ));
        rotate_output(&mut att.o, q_attn);
        set_width(model, 2 * i + 1, width);

        // MLP: inputs rotated and sliced; outputs still in the original basis.
        let ffn = model.blocks[i].ffn.as_mut().expect("checked dense");
        ffn.gate_up.weight = rotate_input(&ffn.gate_up.weight, q_attn);
        ffn.gate_up.in_dim = width;
        ffn.norm = Vec::new();
        ffn.shortcut = Some(shortcut(q_attn.transpose(), precision));
        set_width(model, 2 * i + 2, hidden);
        let mut cov = Covariance::new(hidden);
        for x in &mut streams {
            model.run_blocks(x, i..i + 1, &mut ws, None);
            cov.add(x);
        }
        let pca = cov.pca()?;
        let last = i + 1 == n_layers;
        let out_width = if last { hidden } else { width };
        sites.push(pca.explained(format!("layer{i}.layer_out"), out_width));
        q = pca.basis;
        let q_out = q.subcols(0, out_width);
        let ffn = model.blocks[i].ffn.as_mut().expect("checked dense");
        ffn.shortcut = Some(shortcut(
            product(q_attn.transpose(), q_out).as_ref(),
            precision,
        ));
        rotate_output(&mut ffn.down, q_out);
        set_width(model, 2 * i + 2, out_width);
        if !last {
            streams
                .iter_mut()
                .for_each(|x| rotate_rows(x, hidden, q_out));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let head = model.lm_head.as_mut().expect("fuse_norms unties the head");
    head.weight = rotate_input(&head.weight, q.as_ref());
    Ok(SliceRun { width, sites })
}

/// Folds every RMSNorm scale into the linear layers it feeds (q/k/v, gate/up, the LM head, which
/// is untied first), centres the embedding rows, and drops the folded scales.
fn fuse_norms(model: &mut Model) {
    let hidden = model.config.hidden;
    if model.lm_head.is_none() {
        model.lm_head = Some(Linear {
            weight: model.embed.clone(),
            bias: None,
            out_dim: model.config.vocab,
            in_dim: hidden,
        });
        model.config.tie_embeddings = false;
    }
    model.embed = center_rows(&model.embed, hidden);
    for block in &mut model.blocks {
        if let Some(att) = &mut block.attention {
            att.qkv.weight = fold_scale(&att.qkv.weight, &att.norm);
        }
        if let Some(ffn) = &mut block.ffn {
            ffn.gate_up.weight = fold_scale(&ffn.gate_up.weight, &ffn.norm);
        }
    }
    let head = model.lm_head.as_mut().expect("untied above");
    head.weight = fold_scale(&head.weight, &model.final_norm);
    model.final_norm = Vec::new();
}

/// Sets the residual width at `site` in the model's slicing.
fn set_width(model: &mut Model, site: usize, width: usize) {
    if let Some(s) = &mut model.config.slicing {
        s.widths[site] = width;
    }
}

/// Each `hidden`-wide row of `x` becomes `row·Q` (`q` is `[hidden, k]`), zero past `k`.
fn rotate_rows(x: &mut [f32], hidden: usize, q: faer::MatRef<'_, f64>) {
    let rows = x.len() / hidden;
    let rotated = rotate_input(&crate::weights::Weights::F32(x.to_vec()), q)
        .to_f32()
        .into_owned();
    let k = q.ncols();
    for r in 0..rows {
        let row = &mut x[r * hidden..(r + 1) * hidden];
        row[..k].copy_from_slice(&rotated[r * k..(r + 1) * k]);
        row[k..].fill(0.0);
    }
}
