//! EvoPress's fitness: the KL divergence of a candidate's next-token distributions from the dense
//! model's on calibration tokens (the authors' `compute_kl_div`). The dense model's logits of every
//! calibration token would not fit in memory (131072 tokens x the vocabulary), so its final residual
//! stream is kept instead and the dense logits are recomputed by the LM head when compared.

use crate::backend::cpu::ops::kl_divergence;
use crate::engine::Engine;
use anyhow::{bail, Result};
use rayon::prelude::*;

/// Rows of logits per LM-head call while comparing distributions.
const KL_ROWS: usize = 128;

/// The dense model's final residual stream of each calibration window.
pub struct DenseTargets<E: Engine> {
    hidden: Vec<E::Hidden>,
}

impl<E: Engine> DenseTargets<E> {
    /// Runs every window through `model` (dense) once.
    pub fn new(model: &E, ws: &mut E::Workspace, windows: &[&[u32]]) -> Result<Self> {
        let hidden = windows
            .iter()
            .map(|w| {
                model.embed(ws, w)?;
                model.run_blocks(ws, w.len(), 0..model.n_blocks())?;
                model.save_hidden(ws, w.len())
            })
            .collect::<Result<_>>()?;
        Ok(Self { hidden })
    }
}

/// Mean over predicted tokens of KL(dense || model) on `minibatch` (window index, leading tokens
/// used), the last token of each part not predicted, as the authors' running token-weighted mean.
pub fn minibatch_kl<E: Engine>(
    model: &E,
    workspaces: &mut [E::Workspace; 2],
    windows: &[&[u32]],
    dense: &DenseTargets<E>,
    minibatch: &[(usize, usize)],
) -> Result<f64> {
    let vocab = model.config().vocab;
    let [ws, dense_ws] = workspaces;
    let (mut sum, mut predicted) = (0f64, 0usize);
    for &(w, len) in minibatch {
        let ids = &windows[w][..len];
        model.embed(ws, ids)?;
        model.run_blocks(ws, len, 0..model.n_blocks())?;
        model.load_hidden(dense_ws, &dense.hidden[w], len)?;
        let rows = len.saturating_sub(1);
        for start in (0..rows).step_by(KL_ROWS) {
            let chunk = KL_ROWS.min(rows - start);
            let q = model.logits_from_hidden(ws, start, chunk)?;
            let p = model.logits_from_hidden(dense_ws, start, chunk)?;
            let per_row: Vec<f64> = p
                .par_chunks(vocab)
                .zip(q.par_chunks(vocab))
                .map_init(Vec::new, |scratch, (p, q)| kl_divergence(p, q, scratch))
                .collect();
            sum += per_row.iter().sum::<f64>();
        }
        predicted += rows;
    }
    if predicted == 0 {
        bail!("EvoPress: a selection minibatch has no token to predict");
    }
    Ok(sum / predicted as f64)
}
