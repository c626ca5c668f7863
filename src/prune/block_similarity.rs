//! Whole-block baselines that remove the blocks which change the residual stream least at the last
//! token, computed as the 2SSP authors' code computes them (FabrizioSandri/2SSP `src/pruning.py`):
//! - ShortGPT (Men et al., 2024, "ShortGPT: Layers in Large Language Models are More Redundant
//!   Than You Expect"): block influence = 1 − mean over windows of cos(input, output) of the block
//!   at the last token; the `n` least influential blocks go (block 0 is never scored: influence 1).
//! - Window (Gromov et al., 2024, "The Unreasonable Ineffectiveness of the Deeper Layers"): the
//!   contiguous `n` blocks whose input and output are most similar (mean cosine at the last token,
//!   as the authors' code takes it; ties to the later window); block 0 is never in a window.
//!
//! Both remove ceil(s × L) whole blocks (exactly s × L when that is an integer), as `main.py`.

use crate::engine::Engine;
use crate::progress;
use anyhow::{bail, Result};

/// Whole blocks to remove for a sparsity `s` of `n_layers` blocks: s × L, rounded up when it is
/// not an integer; refuses a budget the model cannot meet.
pub fn blocks_to_remove(sparsity: f64, n_layers: usize) -> Result<usize> {
    if !(sparsity > 0.0 && sparsity < 1.0) {
        bail!("--sparsity must be in (0, 1), got {sparsity}");
    }
    let exact = sparsity * n_layers as f64;
    let n = if (exact - exact.round()).abs() < 1e-9 {
        exact.round()
    } else {
        exact.ceil()
    } as usize;
    if n == 0 || n >= n_layers {
        bail!("sparsity {sparsity} removes {n} of the model's {n_layers} blocks: a whole-block method needs 1 to {}", n_layers.saturating_sub(1));
    }
    Ok(n)
}

/// The output of every block at the last token of each window: `[window][block][hidden]`.
pub fn last_token_outputs<E: Engine>(model: &E, windows: &[&[u32]]) -> Result<Vec<Vec<Vec<f32>>>> {
    let longest = windows.iter().map(|w| w.len()).max().unwrap_or(1);
    let mut ws = model.workspace(longest, longest)?;
    let bar = progress::bar(windows.len() as u64, "block outputs");
    let mut out = Vec::with_capacity(windows.len());
    for window in windows {
        let n = window.len();
        model.embed(&mut ws, window)?;
        let mut per_block = Vec::with_capacity(model.n_blocks());
        for block in 0..model.n_blocks() {
            model.run_blocks(&mut ws, n, block..block + 1)?;
            per_block.push(model.hidden_row(&ws, n - 1)?);
        }
        out.push(per_block);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Cosine similarity in f64 (torch's `cosine_similarity` with eps 1e-8).
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    dot / (na.sqrt() * nb.sqrt()).max(1e-8)
}

/// A whole-block method's choice and the scores it came from.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BlockChoice {
    /// Blocks removed, ascending.
    pub removed_blocks: Vec<usize>,
    /// The same in the method's order (ShortGPT: by influence; SLEB: as removed).
    pub removal_order: Vec<usize>,
    /// ShortGPT: each block's influence; Window: each window start's mean cosine; SLEB: the
    /// calibration perplexity after each removal.
    pub scores: Vec<f64>,
}

impl BlockChoice {
    /// A choice from blocks in removal order and the scores behind it.
    pub fn from_order(removal_order: Vec<usize>, scores: Vec<f64>) -> Self {
        let mut removed_blocks = removal_order.clone();
        removed_blocks.sort_unstable();
        Self {
            removed_blocks,
            removal_order,
            scores,
        }
    }
}

/// ShortGPT: the `n` blocks of least influence (ties: lower index).
pub fn shortgpt(outputs: &[Vec<Vec<f32>>], n: usize) -> BlockChoice {
    let n_layers = outputs.first().map_or(0, Vec::len);
    let windows = outputs.len() as f64;
    let mut influence = vec![1.0; n_layers];
    for (l, score) in influence.iter_mut().enumerate().skip(1) {
        let similarity: f64 = outputs.iter().map(|o| cosine(&o[l - 1], &o[l])).sum();
        *score = 1.0 - similarity / windows;
    }
    let mut order: Vec<usize> = (0..n_layers).collect();
    order.sort_by(|&a, &b| influence[a].total_cmp(&influence[b]));
    BlockChoice::from_order(order[..n].to_vec(), influence)
}

/// Window: blocks `l+1 ..= l+n` for the start `l` whose output is most similar to block `l+n`'s
/// (mean cosine over windows; ties: the later start).
pub fn window(outputs: &[Vec<Vec<f32>>], n: usize) -> BlockChoice {
    let n_layers = outputs.first().map_or(0, Vec::len);
    let windows = outputs.len() as f64;
    let scores: Vec<f64> = (0..n_layers - n)
        .map(|l| {
            outputs
                .iter()
                .map(|o| cosine(&o[l], &o[l + n]))
                .sum::<f64>()
                / windows
        })
        .collect();
    let start = (0..scores.len()).fold(
        0,
        |best, l| if scores[l] >= scores[best] { l } else { best },
    );
    BlockChoice::from_order((start + 1..=start + n).collect(), scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_round_up_as_the_authors_and_refuse_what_cannot_be_met() {
        assert_eq!(blocks_to_remove(0.375, 32).unwrap(), 12);
        assert_eq!(blocks_to_remove(0.375, 30).unwrap(), 12); // 11.25 -> 12
        assert_eq!(blocks_to_remove(0.25, 30).unwrap(), 8); // 7.5 -> 8
        assert!(blocks_to_remove(0.99, 2).is_err());
        assert!(blocks_to_remove(0.0, 30).is_err());
    }

    #[test]
    fn ties_follow_the_authors_rules() {
        // Four blocks whose outputs are equal to their inputs except block 2: ShortGPT keeps the
        // lower indices on ties; Window prefers the later of equally good windows.
        // Vectors whose cosines are exactly 1 or 0 in floating point.
        let (a, b) = (vec![1.0f32, 0.0], vec![0.0f32, 5.0]);
        let one = vec![a.clone(), a, b.clone(), b.clone(), b];
        let choice = shortgpt(std::slice::from_ref(&one), 2);
        assert_eq!(choice.removed_blocks, [1, 3]);
        let choice = window(std::slice::from_ref(&one), 1);
        assert_eq!(choice.removed_blocks, [4]);
    }
}
