//! Stage 2: greedy removal of attention submodules by calibration perplexity, on the width-pruned model.
//!
//! The hidden state entering every block is cached, so a candidate `i` only recomputes blocks `i..L`
//! (the reference recomputes all `L` blocks per candidate); the decisions are the same.

use super::cache::{Stage2Journal, Stage2Progress};
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
    /// Leading removals replayed from a previous run's journal instead of searched.
    pub replayed: usize,
}

/// What the greedy search needs from a model: perplexity with one attention bypassed, and removal.
/// Implementations cache the residual stream entering every block, so candidate `i` recomputes only
/// blocks `i..L`.
pub trait SuffixEvaluator {
    /// Number of blocks.
    fn n_blocks(&self) -> usize;
    /// Number of calibration windows.
    fn n_windows(&self) -> usize;
    /// Whether block `i` still has its attention.
    fn has_attention(&self, i: usize) -> bool;
    /// Calibration perplexity with block `skip`'s attention bypassed (None: the model as it is).
    fn ppl_without(&mut self, skip: Option<usize>) -> Result<f64>;
    /// Removes block `i`'s attention for good and refreshes the cached inputs after it.
    fn remove(&mut self, i: usize) -> Result<()>;
}

/// Removes `n_attn` attention submodules greedily (lowest perplexity first, ties to the lowest index).
/// With a `journal`, the removals a previous run recorded are replayed and each new step is
/// recorded as soon as it is decided.
pub fn greedy_removal(
    eval: &mut impl SuffixEvaluator,
    n_attn: usize,
    protected: &[usize],
    journal: Option<&Stage2Journal>,
) -> Result<Stage2Outcome> {
    let (n_layers, n_windows) = (eval.n_blocks(), eval.n_windows());
    let candidates = |e: &dyn Fn(usize) -> bool| -> Vec<usize> {
        (0..n_layers)
            .filter(|i| e(*i) && !protected.contains(i))
            .collect()
    };
    let available = candidates(&|i| eval.has_attention(i)).len();
    if available < n_attn {
        bail!("cannot remove {n_attn} attention submodules: only {available} are removable");
    }
    let prior = journal
        .and_then(Stage2Journal::load)
        .filter(|p| replayable(p, n_layers, protected, &|i| eval.has_attention(i)));
    let mut outcome = Stage2Outcome {
        removed: Vec::new(),
        ppl_after: Vec::new(),
        ppl_before: 0.0,
        block_evals: 0,
        block_evals_reference: 0,
        replayed: 0,
    };
    let mut progress = match prior {
        Some(p) => p,
        None => {
            outcome.block_evals = (n_layers * n_windows) as u64;
            let p = Stage2Progress {
                ppl_before: eval.ppl_without(None)?,
                ..Default::default()
            };
            if let Some(j) = journal {
                j.record(&p);
            }
            p
        }
    };
    outcome.ppl_before = progress.ppl_before;
    progress.removed.truncate(n_attn);
    progress.ppl_after.truncate(n_attn);
    for (&chosen, &ppl) in progress.removed.iter().zip(&progress.ppl_after) {
        eval.remove(chosen)?;
        outcome.removed.push(chosen);
        outcome.ppl_after.push(ppl);
        outcome.block_evals += ((n_layers - chosen) * n_windows) as u64;
        outcome.replayed += 1;
    }
    let searched = outcome.replayed..n_attn;
    let total_candidates: usize = searched.clone().map(|s| available - s).sum();
    let bar = progress::bar(total_candidates as u64, "stage 2");
    for _ in searched {
        let mut best: Option<(usize, f64)> = None;
        for i in candidates(&|i| eval.has_attention(i)) {
            let ppl = eval.ppl_without(Some(i))?;
            outcome.block_evals += ((n_layers - i) * n_windows) as u64;
            outcome.block_evals_reference += (n_layers * n_windows) as u64;
            if best.is_none_or(|(_, b)| ppl < b) {
                best = Some((i, ppl));
            }
            bar.inc(1);
        }
        let (chosen, ppl) = best.expect("at least one candidate");
        eval.remove(chosen)?;
        outcome.removed.push(chosen);
        outcome.ppl_after.push(ppl);
        outcome.block_evals += ((n_layers - chosen) * n_windows) as u64;
        if let Some(j) = journal {
            progress.removed.push(chosen);
            progress.ppl_after.push(ppl);
            j.record(&progress);
        }
        crate::fsutil::stall_point("stage2-step");
    }
    bar.finish_and_clear();
    Ok(outcome)
}

/// Whether a recorded search can be replayed on this model: distinct, removable blocks, one
/// perplexity each (anything else means the journal is damaged and is ignored).
fn replayable(
    p: &Stage2Progress,
    n_layers: usize,
    protected: &[usize],
    has_attention: &dyn Fn(usize) -> bool,
) -> bool {
    let mut seen = vec![false; n_layers];
    p.removed.len() == p.ppl_after.len()
        && p.ppl_before.is_finite()
        && p.removed.iter().all(|&i| {
            let fresh = i < n_layers && !seen[i] && !protected.contains(&i) && has_attention(i);
            if fresh {
                seen[i] = true;
            }
            fresh
        })
}

/// Removes `n_attn` attention submodules greedily from a model on the CPU.
pub fn remove_attention_greedy(
    model: &mut Model,
    windows: &[&[u32]],
    n_attn: usize,
    protected: &[usize],
    journal: Option<&Stage2Journal>,
) -> Result<Stage2Outcome> {
    let mut ws = Workspace::default();
    let inputs = windows
        .iter()
        .map(|w| block_inputs(model, w, &mut ws))
        .collect::<Result<Vec<_>>>()?;
    let mut eval = CpuEvaluator {
        model,
        windows,
        inputs,
        ws,
    };
    greedy_removal(&mut eval, n_attn, protected, journal)
}

/// The CPU model with the cached residual stream entering each block of each window.
struct CpuEvaluator<'a> {
    model: &'a mut Model,
    windows: &'a [&'a [u32]],
    inputs: Vec<Vec<Vec<f32>>>,
    ws: Workspace,
}

impl SuffixEvaluator for CpuEvaluator<'_> {
    fn n_blocks(&self) -> usize {
        self.model.blocks.len()
    }

    fn n_windows(&self) -> usize {
        self.windows.len()
    }

    fn has_attention(&self, i: usize) -> bool {
        self.model.blocks[i].attention.is_some()
    }

    fn ppl_without(&mut self, skip: Option<usize>) -> Result<f64> {
        let first = skip.unwrap_or(self.model.blocks.len());
        let saved = skip.and_then(|i| self.model.blocks[i].attention.take());
        let ppl = suffix_ppl(self.model, &self.inputs, first, self.windows, &mut self.ws);
        if let Some(i) = skip {
            self.model.blocks[i].attention = saved;
        }
        Ok(ppl)
    }

    fn remove(&mut self, chosen: usize) -> Result<()> {
        self.model.remove_attention(chosen);
        let n_layers = self.model.blocks.len();
        for per_window in &mut self.inputs {
            let mut x = per_window[chosen].clone();
            for j in chosen..n_layers {
                self.model.run_blocks(&mut x, j..j + 1, &mut self.ws, None);
                per_window[j + 1].copy_from_slice(&x);
            }
        }
        Ok(())
    }
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
