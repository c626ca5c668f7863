//! Element-wise and row-wise CPU ops: RMSNorm, RoPE, gated activations, residual add, log-softmax NLL.

use crate::config::Activation;
use rayon::prelude::*;

/// Rows per rayon task for cheap row-wise ops.
const ROWS_PER_TASK: usize = 16;

/// In-place RMSNorm of each `width`-wide row: `x * rsqrt(mean(x^2) + eps) * (offset + w)`.
pub fn rms_norm_rows(x: &mut [f32], weight: &[f32], offset: f32, eps: f32) {
    let width = weight.len();
    x.par_chunks_mut(width * ROWS_PER_TASK).for_each(|rows| {
        for row in rows.chunks_exact_mut(width) {
            rms_norm_row(row, weight, offset, eps);
        }
    });
}

/// RMSNorm of one row in place.
pub fn rms_norm_row(row: &mut [f32], weight: &[f32], offset: f32, eps: f32) {
    let sum_sq: f32 = row.iter().map(|v| v * v).sum();
    let inv = 1.0 / (sum_sq / row.len() as f32 + eps).sqrt();
    for (v, w) in row.iter_mut().zip(weight) {
        *v = (*v * inv) * (offset + w);
    }
}

/// Writes `out = rmsnorm(x)` row by row without touching `x`.
pub fn rms_norm_into(x: &[f32], out: &mut [f32], weight: &[f32], offset: f32, eps: f32) {
    out.copy_from_slice(x);
    rms_norm_rows(out, weight, offset, eps);
}

/// SliceGPT's weightless RMSN: `out[r] = x[r][..width] / rms`, the mean of squares taken over
/// `mean_dim` (the model's original width) as its RMSN takes it, for `stride`-wide rows of `x`.
pub fn sliced_rms_norm_into(
    x: &[f32],
    stride: usize,
    out: &mut [f32],
    width: usize,
    mean_dim: usize,
    eps: f32,
) {
    out.par_chunks_mut(width)
        .zip(x.par_chunks(stride))
        .for_each(|(o, row)| {
            let row = &row[..width];
            let sum_sq: f32 = row.iter().map(|v| v * v).sum();
            let inv = 1.0 / (sum_sq / mean_dim as f32 + eps).sqrt();
            o.iter_mut().zip(row).for_each(|(o, v)| *o = v * inv);
        });
}

/// Cos/sin of every (position, frequency) pair: `[n_positions, n_freq]` each.
pub struct RopeTable {
    /// cos(pos * inv_freq).
    pub cos: Vec<f32>,
    /// sin(pos * inv_freq).
    pub sin: Vec<f32>,
    /// Frequencies per position (rotary_dim / 2).
    pub n_freq: usize,
}

impl RopeTable {
    /// Builds the table for positions `0..n` in f32, as HF transformers computes it.
    pub fn new(inv_freq: &[f32], n: usize) -> Self {
        let n_freq = inv_freq.len();
        let mut cos = vec![0f32; n * n_freq];
        let mut sin = vec![0f32; n * n_freq];
        for p in 0..n {
            let pos = p as f32;
            for (f, &inv) in inv_freq.iter().enumerate() {
                let angle = pos * inv;
                cos[p * n_freq + f] = angle.cos();
                sin[p * n_freq + f] = angle.sin();
            }
        }
        Self { cos, sin, n_freq }
    }
}

/// Rotates the leading `2 * n_freq` dims of every head in `x` (`[n, n_heads * head_dim]`, rows at positions
/// `first..first + n`), half-split layout.
pub fn apply_rope(x: &mut [f32], table: &RopeTable, first: usize, n_heads: usize, head_dim: usize) {
    let width = n_heads * head_dim;
    let half = table.n_freq;
    x.par_chunks_mut(width).enumerate().for_each(|(i, row)| {
        let p = first + i;
        let cos = &table.cos[p * half..(p + 1) * half];
        let sin = &table.sin[p * half..(p + 1) * half];
        for head in row.chunks_exact_mut(head_dim) {
            let (lo, rest) = head.split_at_mut(half);
            let hi = &mut rest[..half];
            for i in 0..half {
                let (a, b) = (lo[i], hi[i]);
                lo[i] = a * cos[i] - b * sin[i];
                hi[i] = b * cos[i] + a * sin[i];
            }
        }
    });
}

/// From `gate_up` rows `[gate | up]` (each `width` wide) writes `act(gate) * up` into `out` rows.
/// `vector_exp` (bf16 models) computes SiLU's exponential 16 lanes at a time (relative error about
/// 2e-7) where the CPU has AVX-512; otherwise, and for the f32 reference, with `f32::exp`.
pub fn gated_activation(
    gate_up: &[f32],
    out: &mut [f32],
    width: usize,
    act: Activation,
    vector_exp: bool,
) {
    #[cfg(target_arch = "x86_64")]
    let avx512 = super::isa::detected_isa() == super::isa::Isa::Avx512;
    #[cfg(target_arch = "x86_64")]
    let vector_exp = vector_exp && avx512;
    out.par_chunks_mut(width)
        .zip(gate_up.par_chunks(2 * width))
        .for_each(|(o, gu)| {
            let (gate, up) = gu.split_at(width);
            match act {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX-512 was detected.
                Activation::Silu if vector_exp => unsafe { silu_mul_avx512::<false>(gate, up, o) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX-512 was detected.
                Activation::Silu if avx512 => unsafe { silu_mul_avx512::<true>(gate, up, o) },
                Activation::Silu => {
                    for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
                        *o = g / (1.0 + (-g).exp()) * u;
                    }
                }
                Activation::GeluTanh => {
                    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
                    for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
                        let inner = SQRT_2_OVER_PI * (g + 0.044715 * g * g * g);
                        *o = 0.5 * g * (1.0 + inner.tanh()) * u;
                    }
                }
            }
        });
}

/// `o = silu(g) * u` element-wise, 16 lanes at a time: with libm's `expf` bit for bit (`EXACT`,
/// the f32 path) or with the faster approximate exponential (the bf16 path).
///
/// # Safety
/// AVX-512F present; `up` and `o` are as long as `gate`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn silu_mul_avx512<const EXACT: bool>(gate: &[f32], up: &[f32], o: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(up.len() >= gate.len() && o.len() >= gate.len());
    let one = _mm512_set1_ps(1.0);
    // Only the exact form reads the table.
    let table = if EXACT {
        Some(super::exact_exp::ExpTable::load())
    } else {
        None
    };
    for start in (0..gate.len()).step_by(16) {
        let n = (gate.len() - start).min(16);
        let mask: __mmask16 = (1u32 << n).wrapping_sub(1) as u16;
        let g = _mm512_maskz_loadu_ps(mask, gate.as_ptr().add(start));
        let u = _mm512_maskz_loadu_ps(mask, up.as_ptr().add(start));
        let minus_g = _mm512_sub_ps(_mm512_setzero_ps(), g);
        let e = match table {
            Some(table) => super::exact_exp::exp16(table, minus_g),
            None => super::attention::exp512(minus_g),
        };
        // The scalar form's operations in its order: g / (1 + e) * u.
        let silu = _mm512_div_ps(g, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(o.as_mut_ptr().add(start), mask, _mm512_mul_ps(silu, u));
    }
}

/// `x += y` element-wise.
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    x.par_chunks_mut(1 << 14)
        .zip(y.par_chunks(1 << 14))
        .for_each(|(a, b)| {
            for (a, b) in a.iter_mut().zip(b) {
                *a += b;
            }
        });
}

/// Negative log-likelihood of `target` under softmax(`logits`): f32 exponentials with max subtraction,
/// summed in f64. A sequential f32 sum over a large vocabulary drops the many terms smaller than half
/// an ulp of the running sum and so under-estimates it (SmolLM2: perplexity 1.2e-4 too low).
pub fn nll(logits: &[f32], target: usize) -> f32 {
    nll_from_log_sum_exp(log_sum_exp(logits), logits, target)
}

/// The NLL of `target` given the row's log-sum-exp: the one rounding every NLL form shares.
fn nll_from_log_sum_exp(lse: f64, logits: &[f32], target: usize) -> f32 {
    (lse - logits[target] as f64) as f32
}

/// [`nll`] with 16-lane exponentials (relative error about 1.3e-7 each, summed in f64) where the CPU
/// has AVX-512: the bf16 path's NLL, whose scalar `exp` took 5 % of a bf16 forward. The f32 path
/// keeps [`nll`], whose results are pinned bit for bit.
pub fn nll_vectorised(logits: &[f32], target: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::backend::cpu::isa::detected_isa() == crate::backend::cpu::isa::Isa::Avx512 {
        // SAFETY: the Avx512 ISA is only detected on CPUs with AVX-512F, AVX2 and FMA.
        let lse = unsafe { log_sum_exp_avx512(logits) };
        return nll_from_log_sum_exp(lse, logits, target);
    }
    nll(logits, target)
}

/// `ln(sum(exp(logits)))`, 16 lanes at a time (the maximum too), the sum in f64.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn log_sum_exp_avx512(logits: &[f32]) -> f64 {
    use crate::backend::cpu::attention::softmax::exp512_nonpositive;
    use std::arch::x86_64::*;
    let max = max_avx512(logits);
    let vm = _mm512_set1_ps(max);
    let (mut lo, mut hi) = (_mm512_setzero_pd(), _mm512_setzero_pd());
    for chunk in logits.chunks(16) {
        let mask: __mmask16 = (1u32 << chunk.len()).wrapping_sub(1) as u16;
        let x = _mm512_mask_loadu_ps(vm, mask, chunk.as_ptr());
        let e = _mm512_maskz_mov_ps(mask, exp512_nonpositive(_mm512_sub_ps(x, vm)));
        lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        hi = _mm512_add_pd(
            hi,
            _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                _mm512_castps_pd(e),
            ))),
        );
    }
    max as f64 + _mm512_reduce_add_pd(_mm512_add_pd(lo, hi)).ln()
}

/// The largest of `logits` (negative infinity when empty), 16 lanes at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max_avx512(logits: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
    for chunk in logits.chunks(16) {
        let mask: __mmask16 = (1u32 << chunk.len()).wrapping_sub(1) as u16;
        vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(vmax, mask, chunk.as_ptr()));
    }
    _mm512_reduce_max_ps(vmax)
}

/// [`log_sum_exp`] of `R` rows at once, bit for bit: the maxima and exponentials 16 lanes at a
/// time (libm's exponentials, see `exact_exp`), each row's f64 sum in the same sequential order;
/// the `R` sums are independent chains, so their additions overlap instead of waiting on each other.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn log_sum_exp_exact_avx512<const R: usize>(rows: [&[f32]; R]) -> [f64; R] {
    use super::exact_exp::{exp16, ExpTable};
    use std::arch::x86_64::*;
    let len = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == len));
    let max = rows.map(|r| max_avx512(r));
    let table = ExpTable::load();
    let mut sums = [0f64; R];
    let mut e = [[0f32; 16]; R];
    for start in (0..len).step_by(16) {
        let n = (len - start).min(16);
        let mask: __mmask16 = (1u32 << n).wrapping_sub(1) as u16;
        for r in 0..R {
            let vm = _mm512_set1_ps(max[r]);
            let x = _mm512_mask_loadu_ps(vm, mask, rows[r].as_ptr().add(start));
            _mm512_storeu_ps(e[r].as_mut_ptr(), exp16(table, _mm512_sub_ps(x, vm)));
        }
        // Element by element, the rows side by side: each row's sum stays in order.
        for i in 0..n {
            for (sum, e) in sums.iter_mut().zip(&e) {
                *sum += e[i] as f64;
            }
        }
    }
    std::array::from_fn(|r| max[r] as f64 + sums[r].ln())
}

/// Rows interleaved by the exact vectorised log-sum-exp (enough independent sums to fill the adders).
const NLL_ROWS_AT_ONCE: usize = 8;

/// NLL of `targets[r]` under each `vocab`-wide row `r` of `logits`, into `out[r]`, rows in
/// parallel: bit for bit [`nll`] of each row, or [`nll_vectorised`] with `approx_exp`.
pub fn nll_rows(logits: &[f32], vocab: usize, targets: &[u32], out: &mut [f32], approx_exp: bool) {
    assert!(logits.len() == out.len() * vocab && targets.len() == out.len());
    let group = NLL_ROWS_AT_ONCE;
    out.par_chunks_mut(group)
        .zip(logits.par_chunks(group * vocab))
        .zip(targets.par_chunks(group))
        .for_each(|((out, logits), targets)| {
            #[cfg(target_arch = "x86_64")]
            if !approx_exp
                && out.len() == group
                && super::isa::detected_isa() == super::isa::Isa::Avx512
            {
                let rows: [&[f32]; NLL_ROWS_AT_ONCE] =
                    std::array::from_fn(|r| &logits[r * vocab..(r + 1) * vocab]);
                // SAFETY: the Avx512 ISA is only detected on CPUs with AVX-512F.
                let lse = unsafe { log_sum_exp_exact_avx512(rows) };
                for (r, o) in out.iter_mut().enumerate() {
                    *o = nll_from_log_sum_exp(lse[r], rows[r], targets[r] as usize);
                }
                return;
            }
            let nll = if approx_exp { nll_vectorised } else { nll };
            for ((o, row), &t) in out.iter_mut().zip(logits.chunks(vocab)).zip(targets) {
                *o = nll(row, t as usize);
            }
        });
}

/// `ln(sum(exp(logits)))`, accumulated in f64 (in order).
fn log_sum_exp(logits: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if crate::backend::cpu::isa::detected_isa() == crate::backend::cpu::isa::Isa::Avx512 {
        // SAFETY: the Avx512 ISA is only detected on CPUs with AVX-512F.
        return unsafe { log_sum_exp_exact_avx512([logits]) }[0];
    }
    log_sum_exp_scalar(logits)
}

/// [`log_sum_exp`] one element at a time: the reference the vectorised form must equal.
fn log_sum_exp_scalar(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    max as f64 + sum.ln()
}

/// Gemma-style soft cap: `tanh(x / cap) * cap`.
pub fn soft_cap(x: &mut [f32], cap: f32) {
    for v in x.iter_mut() {
        *v = (*v / cap).tanh() * cap;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::isa::{detected_isa, Isa};
    use crate::backend::cpu::test_util::fill;

    #[test]
    fn vectorised_nll_matches_scalar() {
        // A vocabulary whose length is not a multiple of 16, with a wide range of logits.
        let logits: Vec<f32> = fill(49_157, 11).into_iter().map(|x| 40.0 * x).collect();
        for target in [0, 7, 49_156] {
            let (want, got) = (nll(&logits, target), nll_vectorised(&logits, target));
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "target {target}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn f32_nll_and_silu_are_bit_for_bit_the_scalar_forms() {
        if detected_isa() != Isa::Avx512 {
            eprintln!("SKIPPED exact 16-lane expf in NLL and SiLU: this CPU has no AVX-512 (the scalar forms ran)");
            return;
        }
        // Logits over a wide range, some rows with a tail that is not a multiple of 16.
        for (len, seed, scale) in [
            (49_157, 11, 40.0),
            (1_000, 3, 3.0),
            (17, 5, 100.0),
            (1, 2, 1.0),
        ] {
            let logits: Vec<f32> = fill(len, seed).into_iter().map(|x| scale * x).collect();
            let (got, want) = (log_sum_exp(&logits), log_sum_exp_scalar(&logits));
            assert_eq!(got.to_bits(), want.to_bits(), "len {len}: {got} vs {want}");
        }
        // Rows eight at a time and the rest one at a time: each row's scalar NLL, bit for bit.
        let (rows, vocab) = (19, 1_003);
        let logits: Vec<f32> = fill(rows * vocab, 9)
            .into_iter()
            .map(|x| 30.0 * x)
            .collect();
        let targets: Vec<u32> = (0..rows as u32).map(|r| r * 51 % vocab as u32).collect();
        let mut got = vec![0f32; rows];
        nll_rows(&logits, vocab, &targets, &mut got, false);
        for (r, row) in logits.chunks(vocab).enumerate() {
            let want = (log_sum_exp_scalar(row) - row[targets[r] as usize] as f64) as f32;
            assert_eq!(got[r].to_bits(), want.to_bits(), "row {r}");
        }
        // Gates from -120 to 120 (exp(-g) overflows and underflows at the ends), a ragged width.
        let width = 1_003;
        let gate: Vec<f32> = fill(2 * width, 7).into_iter().map(|x| 120.0 * x).collect();
        let gate_up: Vec<f32> = gate.iter().flat_map(|&g| [g, 0.5 * g + 1.0]).collect();
        let mut got = vec![0f32; 2 * width];
        gated_activation(&gate_up, &mut got, width, Activation::Silu, false);
        for (row, gu) in got.chunks(width).zip(gate_up.chunks(2 * width)) {
            let (g, u) = gu.split_at(width);
            for ((o, &g), &u) in row.iter().zip(g).zip(u) {
                assert_eq!(
                    o.to_bits(),
                    (g / (1.0 + (-g).exp()) * u).to_bits(),
                    "gate {g}"
                );
            }
        }
    }
}
