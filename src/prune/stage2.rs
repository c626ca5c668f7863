//! Stage 2: greedy removal of attention submodules by calibration perplexity, on the width-pruned model.
//!
//! The hidden state entering every block is cached, so a candidate `i` only recomputes blocks `i..L`
//! (the reference recomputes all `L` blocks per candidate); the decisions are the same.

use super::cache::{Stage2Journal, Stage2Progress};
use crate::engine::{Engine, SubModule};
use crate::parallel;
use crate::progress;
use anyhow::{bail, Result};
use indicatif::ProgressBar;
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
    /// Calibration perplexity with each `skips[c]`'s attention bypassed (None: the model as it
    /// is), one result per entry; `done` advances as each is scored.
    fn ppl_without_each(&mut self, skips: &[Option<usize>], done: &ProgressBar)
        -> Result<Vec<f64>>;
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
                ppl_before: eval.ppl_without_each(&[None], &ProgressBar::hidden())?[0],
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
        let present = candidates(&|i| eval.has_attention(i));
        let skips: Vec<_> = present.iter().map(|&i| Some(i)).collect();
        let ppls = eval.ppl_without_each(&skips, &bar)?;
        for &i in &present {
            outcome.block_evals += ((n_layers - i) * n_windows) as u64;
            outcome.block_evals_reference += (n_layers * n_windows) as u64;
        }
        let (chosen, ppl) = lowest(&present, &ppls).expect("at least one candidate");
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

/// The candidate with the lowest perplexity, ties to the earliest (the reference's strict `<`).
pub(crate) fn lowest(candidates: &[usize], ppls: &[f64]) -> Option<(usize, f64)> {
    let mut best: Option<(usize, f64)> = None;
    for (&i, &ppl) in candidates.iter().zip(ppls) {
        if best.is_none_or(|(_, b)| ppl < b) {
            best = Some((i, ppl));
        }
    }
    best
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
/// the blocks from it on, and a removal recomputes only the suffix after it. Candidates are scored
/// side by side where the backend gains from it ([`Engine::concurrent_passes`]), each with its own
/// workspace, the model shared unchanged (a candidate bypasses its submodule instead of taking it out).
pub struct Suffix<'a, E: Engine> {
    model: &'a mut E,
    /// One workspace per pass that runs at once (the first also serves the sequential work).
    workspaces: Vec<E::Workspace>,
    windows: &'a [&'a [u32]],
    longest: usize,
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
            workspaces: vec![ws],
            windows,
            longest,
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

    fn ppl_without_each(
        &mut self,
        skips: &[Option<usize>],
        done: &ProgressBar,
    ) -> Result<Vec<f64>> {
        let skips: Vec<_> = skips
            .iter()
            .map(|s| s.map(|i| (SubModule::Attention, i)))
            .collect();
        self.ppl_without_each_part(&skips, done)
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

    /// Calibration perplexity with each `skips[c]` (a block's `part`) bypassed (None: the model as
    /// it is), one result per entry, scored side by side where the backend gains from it; `done`
    /// advances as each is scored. Each result is what scoring it alone gives, bit for bit.
    pub fn ppl_without_each_part(
        &mut self,
        skips: &[Option<(SubModule, usize)>],
        done: &ProgressBar,
    ) -> Result<Vec<f64>> {
        let passes = self.model.concurrent_passes(skips.len(), self.longest);
        while self.workspaces.len() < passes {
            let ws = self.model.workspace(self.longest, self.longest)?;
            self.workspaces.push(ws);
        }
        let (model, inputs, windows) = (&*self.model, &self.inputs, self.windows);
        parallel::map_tasks(&mut self.workspaces[..passes], skips.len(), |ws, c| {
            let ppl = ppl_bypassing(model, ws, inputs, windows, skips[c]);
            done.inc(1);
            ppl
        })
    }

    /// Removes block `chosen`'s `part` for good and refreshes the cached inputs after it.
    pub fn remove_part(&mut self, part: SubModule, chosen: usize) -> Result<()> {
        match part {
            SubModule::Attention => self.model.remove_attention(chosen),
            SubModule::Mlp => self.model.remove_ffn(chosen),
        }
        let n_blocks = self.model.n_blocks();
        let ws = &mut self.workspaces[0];
        for (per_block, w) in self.inputs.iter_mut().zip(self.windows) {
            self.model.load_hidden(ws, &per_block[chosen], w.len())?;
            for j in chosen..n_blocks {
                self.model.run_blocks(ws, w.len(), j..j + 1)?;
                self.model
                    .store_hidden(ws, &mut per_block[j + 1], w.len())?;
            }
        }
        Ok(())
    }
}

/// Calibration perplexity of `model` with `skip` bypassed, each window's suffix run from the cached
/// input of the first block it changes (the windows' NLLs summed in order).
fn ppl_bypassing<E: Engine>(
    model: &E,
    ws: &mut E::Workspace,
    inputs: &[Vec<E::Hidden>],
    windows: &[&[u32]],
    skip: Option<(SubModule, usize)>,
) -> Result<f64> {
    let n_blocks = model.n_blocks();
    let first = skip.map_or(n_blocks, |(_, i)| i);
    let (mut nll, mut count) = (0f64, 0usize);
    for (cached, w) in inputs.iter().zip(windows) {
        model.load_hidden(ws, &cached[first], w.len())?;
        model.run_blocks_bypassing(ws, w.len(), first..n_blocks, skip)?;
        nll += model.nll_from_hidden(ws, w)?;
        count += w.len() - 1;
    }
    Ok((nll / count as f64).exp())
}
