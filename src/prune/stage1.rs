//! Stage 1: FFN neuron scores on the dense model (mean over samples of the per-sample L2 norm over tokens).

use crate::engine::Engine;
use crate::model::{Model, Workspace};
use crate::{parallel, progress};
use rayon::prelude::*;

/// Per-block neuron scores, `scores[block][neuron]`.
pub type NeuronScores = Vec<Vec<f32>>;

/// Scores every FFN neuron of every block on `samples` (one forward pass each, no LM head). Samples
/// run side by side where that gains ([`Engine::concurrent_passes`]); their norms are summed in
/// sample order, so the scores are what one pass after another gives, bit for bit.
pub fn score_neurons(model: &Model, samples: &[&[u32]]) -> anyhow::Result<NeuronScores> {
    let widths: Vec<usize> = model
        .blocks
        .iter()
        .map(|b| b.ffn.as_ref().map_or(0, |f| f.width()))
        .collect();
    let mut sums: Vec<Vec<f64>> = widths.iter().map(|&w| vec![0f64; w]).collect();
    let bar = progress::bar(samples.len() as u64, "stage 1");
    let longest = samples.iter().map(|s| s.len()).max().unwrap_or(1);
    let passes = model.concurrent_passes(samples.len(), longest);
    let mut workspaces: Vec<Workspace> = (0..passes).map(|_| Workspace::default()).collect();
    // A batch of samples at a time: only `passes` samples' norms are held at once.
    for batch in samples.chunks(passes) {
        let norms = parallel::map_tasks(&mut workspaces, batch.len(), |ws, s| {
            let mut x = model.embed_tokens(batch[s])?;
            let mut norms = vec![Vec::new(); widths.len()];
            let mut observe = |block: usize, act: &[f32]| {
                norms[block] = column_l2_norms(act, widths[block]);
            };
            model.run_blocks(&mut x, 0..model.blocks.len(), ws, Some(&mut observe));
            bar.inc(1);
            Ok(norms)
        })?;
        for sample in norms {
            for (sum, block) in sums.iter_mut().zip(sample) {
                for (s, n) in sum.iter_mut().zip(block) {
                    *s += n as f64;
                }
            }
        }
    }
    bar.finish_and_clear();
    let n = samples.len().max(1) as f64;
    Ok(sums
        .into_iter()
        .map(|s| s.into_iter().map(|v| (v / n) as f32).collect())
        .collect())
}

/// `sqrt(sum_t act[t, j]^2)` for every column j of a row-major `[T, width]` matrix.
pub fn column_l2_norms(act: &[f32], width: usize) -> Vec<f32> {
    const COLS: usize = 256;
    let rows = act.len() / width.max(1);
    let mut out = vec![0f32; width];
    out.par_chunks_mut(COLS).enumerate().for_each(|(c, dst)| {
        let start = c * COLS;
        let mut acc = vec![0f64; dst.len()];
        for t in 0..rows {
            add_squares(
                &mut acc,
                &act[t * width + start..t * width + start + dst.len()],
            );
        }
        for (d, a) in dst.iter_mut().zip(acc) {
            *d = a.sqrt() as f32;
        }
    });
    out
}

/// `acc[j] += row[j]²` in f64. The square of an f32 is exact in f64, so the 8-lane fused multiply-add
/// (where the CPU kernels dispatch to AVX-512) gives the scalar loop's results bit for bit, 4x wider
/// than SSE2.
fn add_squares(acc: &mut [f64], row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::backend::cpu::isa::detected_isa() == crate::backend::cpu::isa::Isa::Avx512 {
        // SAFETY: the Avx512 ISA is only detected on CPUs with AVX-512F/BW/VL.
        return unsafe { add_squares_avx512(acc, row) };
    }
    for (a, &v) in acc.iter_mut().zip(row) {
        *a += (v as f64) * (v as f64);
    }
}

/// [`add_squares`] 8 columns at a time.
///
/// # Safety
/// The CPU has AVX-512F/VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn add_squares_avx512(acc: &mut [f64], row: &[f32]) {
    use std::arch::x86_64::*;
    let n = acc.len().min(row.len());
    for j in (0..n).step_by(8) {
        let mask: __mmask8 = (1u32 << (n - j).min(8)).wrapping_sub(1) as u8;
        let v = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(mask, row.as_ptr().add(j)));
        let a = _mm512_maskz_loadu_pd(mask, acc.as_ptr().add(j));
        _mm512_mask_storeu_pd(acc.as_mut_ptr().add(j), mask, _mm512_fmadd_pd(v, v, a));
    }
}

/// Per block, the `keep` best-scoring neurons (ascending indices): stage 1's decision.
pub fn kept_neurons(scores: &NeuronScores, keep: usize) -> Vec<Vec<usize>> {
    scores.iter().map(|s| top_k_sorted(s, keep)).collect()
}

/// Indices of the `keep` highest scores, ascending (ties keep the lower index).
pub fn top_k_sorted(scores: &[f32], keep: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut kept: Vec<usize> = order.into_iter().take(keep).collect();
    kept.sort_unstable();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_norms_are_l2_over_rows() {
        let act = [3.0, 1.0, 4.0, -2.0]; // 2 rows x 2 cols
        assert_eq!(column_l2_norms(&act, 2), vec![5.0, (5.0f32).sqrt()]);
    }

    #[test]
    fn add_squares_is_the_scalar_sum_bit_for_bit() {
        // 37 columns: whole 8-lane groups and a tail; values over many magnitudes.
        let rows: Vec<Vec<f32>> = (0..50)
            .map(|t| {
                (0..37i32)
                    .map(|j| ((t * 37 + j as usize) as f32 * 0.618).sin() * 10f32.powi(j % 7 - 3))
                    .collect()
            })
            .collect();
        let (mut fast, mut scalar) = (vec![0f64; 37], vec![0f64; 37]);
        for row in &rows {
            add_squares(&mut fast, row);
            for (a, &v) in scalar.iter_mut().zip(row) {
                *a += (v as f64) * (v as f64);
            }
        }
        assert_eq!(fast, scalar);
    }

    #[test]
    fn top_k_prefers_high_scores_then_low_index() {
        assert_eq!(top_k_sorted(&[0.5, 2.0, 1.0, 2.0, 0.1], 3), vec![1, 2, 3]);
        assert_eq!(top_k_sorted(&[1.0, 1.0, 1.0], 2), vec![0, 1]);
    }
}
