//! Stage 2: greedy removal of attention submodules by calibration perplexity, on the width-pruned model.
//!
//! The hidden state entering every block is cached, so a candidate `i` only recomputes blocks `i..L`
//! (the reference recomputes all `L` blocks per candidate); the decisions are the same.

use crate::model::{Model, Workspace};
use crate::progress;
use anyhow::{bail, Result};
use serde::Serialize;

/// What stage 2 decided and what it cost.
#[derive(Clone, Debug, Serialize)]
pub struct Stage2Outcome {
    /// Blocks whose attention was removed, in removal order.
    pub removed: Vec<usize>,
    /// Calibration perplexity after each removal.
    pub ppl_after: Vec<f64>,
    /// Calibration perplexity of the width-pruned model before any removal.
    pub ppl_before: f64,
    /// Block evaluations performed (with suffix reuse).
    pub block_evals: u64,
    /// Block evaluations the reference's full recomputation would need.
    pub block_evals_reference: u64,
}

/// Removes `n_attn` attention submodules greedily (lowest perplexity first, ties to the lowest index).
pub fn remove_attention_greedy(
    model: &mut Model,
    windows: &[&[u32]],
    n_attn: usize,
    protected: &[usize],
) -> Result<Stage2Outcome> {
    let n_layers = model.blocks.len();
    let candidates = |m: &Model| -> Vec<usize> {
        (0..n_layers)
            .filter(|i| m.blocks[*i].attention.is_some() && !protected.contains(i))
            .collect()
    };
    if candidates(model).len() < n_attn {
        bail!(
            "cannot remove {n_attn} attention submodules: only {} are removable",
            candidates(model).len()
        );
    }
    let mut ws = Workspace::default();
    let mut inputs = windows
        .iter()
        .map(|w| block_inputs(model, w, &mut ws))
        .collect::<Result<Vec<_>>>()?;
    let ppl_before = suffix_ppl(model, &inputs, n_layers, windows, &mut ws);
    let mut outcome = Stage2Outcome {
        removed: Vec::new(),
        ppl_after: Vec::new(),
        ppl_before,
        block_evals: (n_layers * windows.len()) as u64,
        block_evals_reference: 0,
    };
    let total_candidates: usize = (0..n_attn).map(|s| candidates(model).len() - s).sum();
    let bar = progress::bar(total_candidates as u64, "stage 2");
    for _ in 0..n_attn {
        let mut best: Option<(usize, f64)> = None;
        for i in candidates(model) {
            let saved = model.blocks[i].attention.take();
            let ppl = suffix_ppl(model, &inputs, i, windows, &mut ws);
            model.blocks[i].attention = saved;
            outcome.block_evals += ((n_layers - i) * windows.len()) as u64;
            outcome.block_evals_reference += (n_layers * windows.len()) as u64;
            if best.is_none_or(|(_, b)| ppl < b) {
                best = Some((i, ppl));
            }
            bar.inc(1);
        }
        let (chosen, ppl) = best.expect("at least one candidate");
        model.remove_attention(chosen);
        outcome.removed.push(chosen);
        outcome.ppl_after.push(ppl);
        // Refresh the cached inputs of the blocks after the removed attention.
        for per_window in &mut inputs {
            let mut x = per_window[chosen].clone();
            for j in chosen..n_layers {
                model.run_blocks(&mut x, j..j + 1, &mut ws, None);
                per_window[j + 1].copy_from_slice(&x);
            }
        }
        outcome.block_evals += ((n_layers - chosen) * windows.len()) as u64;
    }
    bar.finish_and_clear();
    Ok(outcome)
}

/// The residual stream entering each block for `window`, plus the final block's output (L + 1 entries).
fn block_inputs(model: &Model, window: &[u32], ws: &mut Workspace) -> Result<Vec<Vec<f32>>> {
    let mut x = model.embed_tokens(window)?;
    let mut inputs = Vec::with_capacity(model.blocks.len() + 1);
    for i in 0..model.blocks.len() {
        inputs.push(x.clone());
        model.run_blocks(&mut x, i..i + 1, ws, None);
    }
    inputs.push(x);
    Ok(inputs)
}

/// Perplexity of `windows` when blocks `first..L` are recomputed from the cached inputs of block `first`.
fn suffix_ppl(
    model: &Model,
    inputs: &[Vec<Vec<f32>>],
    first: usize,
    windows: &[&[u32]],
    ws: &mut Workspace,
) -> f64 {
    let (mut nll, mut count) = (0f64, 0usize);
    for (cached, window) in inputs.iter().zip(windows) {
        let mut x = cached[first].clone();
        model.run_blocks(&mut x, first..model.blocks.len(), ws, None);
        model.apply_final_norm(&mut x);
        nll += model.nll_from_hidden(&x, window);
        count += window.len() - 1;
    }
    (nll / count as f64).exp()
}
