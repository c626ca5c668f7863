//! EvoPress's fitness: the KL divergence of a candidate's next-token distributions from the dense
//! model's on calibration tokens (the authors' `compute_kl_div`). The dense model's logits of every
//! calibration token would not fit in memory (131072 tokens x the vocabulary), so its final residual
//! stream is kept instead; the dense distributions of one selection's minibatch are computed from it
//! once and kept while they fit a memory budget (beyond it, again for each candidate).

use crate::backend::cpu::attention::softmax::softmax_update;
use crate::backend::cpu::isa::detected_isa;
use crate::engine::Engine;
use anyhow::{bail, Result};
use rayon::prelude::*;

/// Rows of logits per LM-head call while comparing distributions.
const KL_ROWS: usize = 128;

/// Bytes of dense distributions a selection keeps for all its candidates.
pub const DENSE_CACHE_BYTES: usize = 1 << 30;

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

/// The dense distributions of up to [`KL_ROWS`] rows: probabilities and `sum p log p` per row.
struct DenseRows {
    probs: Vec<f32>,
    neg_entropy: Vec<f64>,
}

/// One selection's minibatch — (window index, leading tokens used) — with the dense distributions
/// of its rows, kept per chunk of rows while they fit the budget.
pub struct Minibatch {
    parts: Vec<(usize, usize)>,
    kept: Vec<Vec<Option<DenseRows>>>,
    budget_left: usize,
}

impl Minibatch {
    /// A minibatch whose dense distributions may take `budget` bytes.
    pub fn new(parts: Vec<(usize, usize)>, budget: usize) -> Self {
        let kept = parts
            .iter()
            .map(|&(_, len)| {
                (0..len.saturating_sub(1).div_ceil(KL_ROWS))
                    .map(|_| None)
                    .collect()
            })
            .collect();
        Self {
            parts,
            kept,
            budget_left: budget,
        }
    }

    /// (window index, leading tokens used) of each part.
    pub fn parts(&self) -> &[(usize, usize)] {
        &self.parts
    }
}

/// Sum in f64 (the vectorised softmax sums in f32, whose error would shift `lse` and, through
/// `sum p != 1`, the entropy term by `lse` times that error).
fn exact_sum(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64).sum()
}

/// Probabilities and `sum p log p` of each row of `logits`.
fn dense_rows(logits: &[f32], vocab: usize) -> DenseRows {
    let isa = detected_isa();
    let mut probs = logits.to_vec();
    let neg_entropy = probs
        .par_chunks_mut(vocab)
        .zip(logits.par_chunks(vocab))
        .map(|(row, x)| {
            let (max, _) = softmax_update(isa, row, 0, vocab, f32::NEG_INFINITY);
            let sum = exact_sum(row);
            let lse = max as f64 + sum.ln();
            let inv = (1.0 / sum) as f32;
            row.iter_mut()
                .zip(x)
                .map(|(p, &x)| {
                    *p *= inv;
                    *p as f64 * (x as f64 - lse)
                })
                .sum()
        })
        .collect();
    DenseRows { probs, neg_entropy }
}

/// `KL(p || q) = sum p log p - sum p q + lse(q)` of each row, `q` the logits of the rows.
fn row_kls(dense: &DenseRows, logits: &[f32], vocab: usize) -> Vec<f64> {
    let isa = detected_isa();
    logits
        .par_chunks(vocab)
        .zip(dense.probs.par_chunks(vocab))
        .zip(&dense.neg_entropy)
        .map_init(Vec::new, |scratch, ((q, p), &neg_entropy)| {
            scratch.clear();
            scratch.extend_from_slice(q);
            let (max, _) = softmax_update(isa, scratch, 0, vocab, f32::NEG_INFINITY);
            let cross: f64 = p.iter().zip(q).map(|(&p, &q)| p as f64 * q as f64).sum();
            neg_entropy - cross + max as f64 + exact_sum(scratch).ln()
        })
        .collect()
}

/// Mean over predicted tokens of KL(dense || model) on `minibatch`, the last token of each part
/// not predicted, as the authors' running token-weighted mean.
pub fn minibatch_kl<E: Engine>(
    model: &E,
    workspaces: &mut [E::Workspace; 2],
    windows: &[&[u32]],
    dense: &DenseTargets<E>,
    minibatch: &mut Minibatch,
) -> Result<f64> {
    let vocab = model.config().vocab;
    let [ws, dense_ws] = workspaces;
    let (mut sum, mut predicted) = (0f64, 0usize);
    for (part, &(w, len)) in minibatch.parts.iter().enumerate() {
        let ids = &windows[w][..len];
        model.embed(ws, ids)?;
        model.run_blocks(ws, len, 0..model.n_blocks())?;
        let rows = len.saturating_sub(1);
        let mut dense_loaded = false;
        for (chunk, start) in (0..rows).step_by(KL_ROWS).enumerate() {
            let n = KL_ROWS.min(rows - start);
            let computed;
            let rows_of_dense = match &minibatch.kept[part][chunk] {
                Some(kept) => kept,
                None => {
                    if !dense_loaded {
                        model.load_hidden(dense_ws, &dense.hidden[w], len)?;
                        dense_loaded = true;
                    }
                    let logits = model.logits_from_hidden(dense_ws, start, n)?;
                    computed = dense_rows(&logits, vocab);
                    let bytes = 4 * computed.probs.len() + 8 * computed.neg_entropy.len();
                    if bytes <= minibatch.budget_left {
                        minibatch.budget_left -= bytes;
                        minibatch.kept[part][chunk] = Some(computed);
                        minibatch.kept[part][chunk].as_ref().expect("just kept")
                    } else {
                        &computed
                    }
                }
            };
            let q = model.logits_from_hidden(ws, start, n)?;
            sum += row_kls(rows_of_dense, &q, vocab).iter().sum::<f64>();
        }
        predicted += rows;
    }
    if predicted == 0 {
        bail!("EvoPress: a selection minibatch has no token to predict");
    }
    Ok(sum / predicted as f64)
}

#[cfg(test)]
mod tests {
    use super::{dense_rows, row_kls};

    /// KL of two logit rows computed plainly in f64.
    fn kl_f64(p: &[f32], q: &[f32]) -> f64 {
        let lse = |x: &[f32]| {
            let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
        };
        let (lp, lq) = (lse(p), lse(q));
        p.iter()
            .zip(q)
            .map(|(&a, &b)| (a as f64 - lp).exp() * ((a as f64 - lp) - (b as f64 - lq)))
            .sum()
    }

    #[test]
    fn row_kl_matches_f64_at_vector_and_tail_lengths() {
        let mut state = 12345u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 16.0
        };
        for vocab in [1usize, 7, 16, 33, 1000, 49157] {
            let rows = 3;
            let p: Vec<f32> = (0..rows * vocab).map(|_| next()).collect();
            let q: Vec<f32> = p.iter().map(|&v| v + next() * 0.2).collect();
            let dense = dense_rows(&p, vocab);
            let (got, same) = (row_kls(&dense, &q, vocab), row_kls(&dense, &p, vocab));
            for r in 0..rows {
                let span = r * vocab..(r + 1) * vocab;
                let want = kl_f64(&p[span.clone()], &q[span]);
                assert!(
                    (got[r] - want).abs() <= 1e-5 * want.abs() + 1e-6,
                    "vocab {vocab} row {r}: {} vs {want}",
                    got[r]
                );
                assert!(
                    same[r].abs() < 1e-5,
                    "KL(p||p) = {} at vocab {vocab}",
                    same[r]
                );
            }
        }
    }
}
