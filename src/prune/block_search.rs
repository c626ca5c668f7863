//! SLEB (Song et al., 2024, "SLEB: Streamlining LLMs through Redundancy Verification and
//! Elimination of Transformer Blocks") as its authors' `sleb()` computes it (jiwonsong-dev/SLEB
//! `sleb.py`): `n` rounds; in each, every remaining block except the first and the last remaining
//! one is tried out, and the one whose removal gives the lowest calibration NLL goes for good
//! (ties: the lower index). Each round walks the prefix once per window and reuses it for every
//! candidate's suffix, as 2SSP's stage 2 does.
//!
//! BlockPruner (Zhong et al., 2024, "BlockPruner: Fine-grained Pruning for Large Language Models")
//! as the 2SSP authors' `blockpruner()` computes it (FabrizioSandri/2SSP `src/pruning.py`): `n`
//! rounds; in each, the attention submodule whose removal gives the lowest calibration perplexity
//! goes, then the MLP chosen the same way (ties: the lower index). Candidates are scored with
//! stage 2's suffix evaluator, so a candidate in block `i` recomputes only blocks `i..L`.

use super::stage2::{lowest, Suffix};
use crate::engine::{Engine, SubModule};
use crate::progress;
use anyhow::Result;
use serde::Serialize;

/// SLEB's choices.
#[derive(Clone, Debug)]
pub struct SlebRun {
    /// Blocks in the order they were removed.
    pub removal_order: Vec<usize>,
    /// Calibration perplexity after each removal.
    pub ppl: Vec<f64>,
}

/// Summed next-token NLL over `windows` of the model without block `c`, for every candidate `c`
/// (ascending), each window's prefix computed once.
fn candidate_nlls<E: Engine>(
    model: &E,
    ws: &mut E::Workspace,
    windows: &[&[u32]],
    candidates: &[usize],
) -> Result<Vec<f64>> {
    let mut totals = vec![0.0; candidates.len()];
    for window in windows {
        let len = window.len();
        model.embed(ws, window)?;
        let mut prefix = model.save_hidden(ws, len)?;
        let mut at = 0; // `prefix` is the input of block `at`
        for (total, &c) in totals.iter_mut().zip(candidates) {
            model.load_hidden(ws, &prefix, len)?;
            if c > at {
                model.run_blocks(ws, len, at..c)?;
                model.store_hidden(ws, &mut prefix, len)?;
                at = c;
            }
            model.run_blocks(ws, len, c + 1..model.n_blocks())?;
            *total += model.nll_from_hidden(ws, window)?;
        }
    }
    Ok(totals)
}

/// Removes `n` whole blocks from `model` by SLEB's search on `windows`.
pub fn sleb<E: Engine>(model: &mut E, windows: &[&[u32]], n: usize) -> Result<SlebRun> {
    let longest = windows.iter().map(|w| w.len()).max().unwrap_or(1);
    let predicted: usize = windows.iter().map(|w| w.len().saturating_sub(1)).sum();
    let mut ws = model.workspace(longest, longest)?;
    let mut alive: Vec<usize> = (0..model.n_blocks()).collect();
    let mut run = SlebRun {
        removal_order: Vec::new(),
        ppl: Vec::new(),
    };
    let bar = progress::bar(n as u64, "SLEB");
    for _ in 0..n {
        let candidates = &alive[1..alive.len().saturating_sub(1)];
        let nlls = candidate_nlls(model, &mut ws, windows, candidates)?;
        let best = (0..nlls.len()).fold(0, |b, k| if nlls[k] < nlls[b] { k } else { b });
        let block = candidates[best];
        model.remove_attention(block);
        model.remove_ffn(block);
        alive.retain(|&b| b != block);
        run.removal_order.push(block);
        run.ppl.push((nlls[best] / predicted as f64).exp());
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(run)
}

/// One removal of BlockPruner's search.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SubBlockStep {
    /// What was removed.
    pub part: SubModule,
    /// From which block.
    pub block: usize,
    /// Calibration perplexity after the removal.
    pub ppl: f64,
}

/// Removes `n` attention and `n` MLP submodules from `model` by BlockPruner's search on `windows`,
/// returning the removals in order.
pub fn blockpruner<E: Engine>(
    model: &mut E,
    windows: &[&[u32]],
    n: usize,
) -> Result<Vec<SubBlockStep>> {
    let n_blocks = model.n_blocks();
    let mut suffix = Suffix::new(model, windows)?;
    let candidates: usize = (0..n).map(|r| 2 * n_blocks.saturating_sub(r)).sum();
    let bar = progress::bar(candidates as u64, "BlockPruner");
    let mut steps = Vec::with_capacity(2 * n);
    for _ in 0..n {
        for part in [SubModule::Attention, SubModule::Mlp] {
            let present: Vec<usize> = (0..n_blocks)
                .filter(|&i| suffix.has_part(part, i))
                .collect();
            let skips: Vec<_> = present.iter().map(|&i| Some((part, i))).collect();
            let ppls = suffix.ppl_without_each_part(&skips, &bar)?;
            let Some((block, ppl)) = lowest(&present, &ppls) else {
                anyhow::bail!("BlockPruner: no {part:?} submodule is left to remove");
            };
            suffix.remove_part(part, block)?;
            steps.push(SubBlockStep { part, block, ppl });
        }
    }
    bar.finish_and_clear();
    Ok(steps)
}
