//! Stage 2: greedy removal of attention submodules by calibration perplexity, on the width-pruned model.
//!
//! The hidden state entering every block is cached, so a candidate `i` only recomputes blocks `i..L`
//! (the reference recomputes all `L` blocks per candidate); the decisions are the same.

use super::cache::{Stage2Journal, Stage2Progress};
use crate::engine::{Engine, SubModule};
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

/// The stage-2 evaluator of every backend: the residual stream entering each block of each window
/// is kept (L + 1 entries per window, the last the output), so a candidate is scored by running only
/// the blocks from it on, and a removal recomputes only the suffix after it.
pub struct Suffix<'a, E: Engine> {
    model: &'a mut E,
    ws: E::Workspace,
    windows: &'a [&'a [u32]],
    inputs: Vec<Vec<E::Hidden>>,
}

impl<'a, E: Engine> Suffix<'a, E> {
    /// Runs every window through the model once, keeping each block's input.
    pub fn new(model: &'a mut E, windows: &'a [&'a [u32]]) -> Result<Self> {
        if windows.is_empty() {
            bail!("stage 2 needs at least one calibration window");
        }
        let longest = windows.iter().map(|w| w.len()).max().unwrap_or(1);
        let mut ws = model.workspace(longest, longest)?;
        let n_blocks = model.n_blocks();
        let mut inputs = Vec::with_capacity(windows.len());
        for w in windows {
            model.embed(&mut ws, w)?;
            let mut per_block = Vec::with_capacity(n_blocks + 1);
            for i in 0..=n_blocks {
                per_block.push(model.save_hidden(&ws, w.len())?);
                if i < n_blocks {
                    model.run_blocks(&mut ws, w.len(), i..i + 1)?;
                }
            }
            inputs.push(per_block);
        }
        Ok(Self {
            model,
            ws,
            windows,
            inputs,
        })
    }
}

impl<E: Engine> SuffixEvaluator for Suffix<'_, E> {
    fn n_blocks(&self) -> usize {
        self.model.n_blocks()
    }

    fn n_windows(&self) -> usize {
        self.windows.len()
    }

    fn has_attention(&self, i: usize) -> bool {
        self.model.has_attention(i)
    }

    fn ppl_without(&mut self, skip: Option<usize>) -> Result<f64> {
        self.ppl_without_part(skip.map(|i| (SubModule::Attention, i)))
    }

    fn remove(&mut self, chosen: usize) -> Result<()> {
        self.remove_part(SubModule::Attention, chosen)
    }
}

impl<E: Engine> Suffix<'_, E> {
    /// Whether block `i` still has `part`.
    pub fn has_part(&self, part: SubModule, i: usize) -> bool {
        match part {
            SubModule::Attention => self.model.has_attention(i),
            SubModule::Mlp => self.model.has_ffn(i),
        }
    }

    /// Calibration perplexity with one block's `part` bypassed (None: the model as it is).
    pub fn ppl_without_part(&mut self, skip: Option<(SubModule, usize)>) -> Result<f64> {
        let n_blocks = self.model.n_blocks();
        let first = skip.map_or(n_blocks, |(_, i)| i);
        let (attention, ffn) = match skip {
            Some((SubModule::Attention, i)) => (self.model.take_attention(i), None),
            Some((SubModule::Mlp, i)) => (None, self.model.take_ffn(i)),
            None => (None, None),
        };
        let result = (|| {
            let (mut nll, mut count) = (0f64, 0usize);
            for (cached, w) in self.inputs.iter().zip(self.windows) {
                self.model
                    .load_hidden(&mut self.ws, &cached[first], w.len())?;
                self.model
                    .run_blocks(&mut self.ws, w.len(), first..n_blocks)?;
                nll += self.model.nll_from_hidden(&mut self.ws, w)?;
                count += w.len() - 1;
            }
            Ok((nll / count as f64).exp())
        })();
        match skip {
            Some((SubModule::Attention, i)) => self.model.restore_attention(i, attention),
            Some((SubModule::Mlp, i)) => self.model.restore_ffn(i, ffn),
            None => {}
        }
        result
    }

    /// Removes block `chosen`'s `part` for good and refreshes the cached inputs after it.
    pub fn remove_part(&mut self, part: SubModule, chosen: usize) -> Result<()> {
        match part {
            SubModule::Attention => self.model.remove_attention(chosen),
            SubModule::Mlp => self.model.remove_ffn(chosen),
        }
        let n_blocks = self.model.n_blocks();
        for (per_block, w) in self.inputs.iter_mut().zip(self.windows) {
            self.model
                .load_hidden(&mut self.ws, &per_block[chosen], w.len())?;
            for j in chosen..n_blocks {
                self.model.run_blocks(&mut self.ws, w.len(), j..j + 1)?;
                self.model
                    .store_hidden(&self.ws, &mut per_block[j + 1], w.len())?;
            }
        }
        Ok(())
    }
}
