//! Tests of the causal attention against a materialised-scores f64 reference.

use super::*;
use crate::backend::cpu::test_util::fill;

/// Materialised-scores reference in f64; returns (output, magnitude scale per element).
fn naive(q: &[f32], k: &[f32], v: &[f32], s: &AttentionShape) -> (Vec<f32>, Vec<f32>) {
    let d = s.head_dim;
    let group = s.n_heads / s.n_kv_heads;
    let mut out = vec![0.0f32; s.n_queries * s.n_heads * d];
    let mut mag = vec![0.0f32; out.len()];
    for h in 0..s.n_heads {
        let g = h / group;
        for i in 0..s.n_queries {
            let pos = s.n_keys - s.n_queries + i;
            let qrow = &q[(i * s.n_heads + h) * d..][..d];
            let mut scores = vec![f64::NEG_INFINITY; s.n_keys];
            for (j, sc) in scores.iter_mut().enumerate() {
                let visible = j <= pos && s.window.is_none_or(|w| pos - j < w);
                if visible {
                    let krow = &k[(j * s.n_kv_heads + g) * d..][..d];
                    let dot: f64 = qrow
                        .iter()
                        .zip(krow)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum();
                    *sc = dot * s.scale as f64;
                }
            }
            let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = scores.iter().map(|&x| (x - mx).exp()).collect();
            let total: f64 = w.iter().sum();
            for c in 0..d {
                let (mut acc, mut m) = (0.0f64, 0.0f64);
                for (j, &wj) in w.iter().enumerate() {
                    let x = v[(j * s.n_kv_heads + g) * d + c] as f64;
                    acc += wj * x;
                    m += wj * x.abs();
                }
                out[(i * s.n_heads + h) * d + c] = (acc / total) as f32;
                mag[(i * s.n_heads + h) * d + c] = (m / total) as f32;
            }
        }
    }
    (out, mag)
}

fn check(isa: Isa, s: AttentionShape, seed: u64) {
    let d = s.head_dim;
    let q = fill(s.n_queries * s.n_heads * d, seed);
    let k = fill(s.n_keys * s.n_kv_heads * d, seed + 1);
    let v = fill(s.n_keys * s.n_kv_heads * d, seed + 2);
    let (want, mag) = naive(&q, &k, &v, &s);
    let mut got = vec![f32::NAN; want.len()];
    causal_attention_isa(isa, &q, &k, &v, &mut got, &s);
    for (idx, ((&g, &w), &m)) in got.iter().zip(&want).zip(&mag).enumerate() {
        let err = (g - w).abs();
        assert!(
            err <= 1e-5 * (m + w.abs()),
            "{isa:?} {s:?}: element {idx}: got {g}, want {w} (err {err:e})"
        );
    }
}

/// Every combination of (heads, kv heads), head width, window and (queries, keys), scaled by
/// `1 / sqrt(head_dim)`.
fn grid(
    heads: &[(usize, usize)],
    dims: &[usize],
    windows: &[Option<usize>],
    lens: &[(usize, usize)],
) -> Vec<AttentionShape> {
    let mut out = Vec::new();
    for &(n_heads, n_kv_heads) in heads {
        for &head_dim in dims {
            for &window in windows {
                for &(n_queries, n_keys) in lens {
                    out.push(AttentionShape {
                        n_queries,
                        n_keys,
                        n_heads,
                        n_kv_heads,
                        head_dim,
                        scale: 1.0 / (head_dim as f32).sqrt(),
                        window,
                    });
                }
            }
        }
    }
    out
}

fn shapes() -> Vec<AttentionShape> {
    grid(
        &[(2, 2), (6, 2), (3, 1)],
        &[8, 64],
        &[None, Some(5)],
        &[(37, 37), (1, 37), (1, 1), (5, 200), (300, 300)],
    )
}

#[test]
fn matches_naive_detected_isa() {
    for (i, s) in shapes().into_iter().enumerate() {
        check(detected_isa(), s, i as u64);
    }
}

#[test]
fn matches_naive_avx2_when_available() {
    if matches!(detected_isa(), Isa::Avx512 | Isa::Avx2Fma) {
        for (i, s) in shapes().into_iter().enumerate() {
            check(Isa::Avx2Fma, s, i as u64);
        }
    }
}

#[test]
fn matches_naive_portable() {
    for (i, s) in shapes().into_iter().enumerate() {
        check(Isa::Portable, s, i as u64);
    }
}

#[test]
fn wide_heads_and_windows() {
    // Gemma-3-like head widths; windows larger than a key tile and wider than the sequence.
    for (i, &(head_dim, window, n_queries, n_keys)) in [
        (128, Some(150), 260, 260),
        (256, Some(130), 40, 333),
        (256, None, 1, 300),
        (24, Some(1), 17, 17),
        (40, Some(1000), 70, 70),
        // Decode and short chunks on a long cache with a window: only the window is packed.
        (64, Some(100), 1, 1000),
        (64, Some(64), 3, 500),
    ]
    .iter()
    .enumerate()
    {
        let s = AttentionShape {
            n_queries,
            n_keys,
            n_heads: 4,
            n_kv_heads: 1,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
            window,
        };
        check(detected_isa(), s, 100 + i as u64);
    }
}

#[test]
fn large_scores_stay_finite() {
    // Scores above 88 (exp overflow range): the online max subtraction keeps exp in range.
    let s = AttentionShape {
        n_queries: 50,
        n_keys: 50,
        n_heads: 1,
        n_kv_heads: 1,
        head_dim: 16,
        scale: 8.0,
        window: None,
    };
    check(detected_isa(), s, 7);
}

/// The AMX attention against the f64 reference of its bf16-rounded operands (queries scaled, then
/// rounded, as the kernel does): the remaining error is the rounding of the probabilities to bf16
/// before `P · V`, at most 2⁻⁹ of each weight, hence the bound 2⁻⁸ of the magnitudes (8e-3 with
/// margin for the f32 accumulation).
#[cfg(target_arch = "x86_64")]
#[test]
fn bf16_amx_matches_naive_of_rounded_operands() {
    use crate::backend::cpu::{bf16_kernel, Bf16Kernel};
    if bf16_kernel() != Bf16Kernel::Amx {
        eprintln!("SKIPPED bf16 AMX attention: this CPU or OS offers no AMX-BF16 tiles");
        return;
    }
    let round = |v: &[f32], f: f32| -> Vec<f32> {
        v.iter()
            .map(|&x| half::bf16::from_f32(x * f).to_f32())
            .collect()
    };
    let mut cases = grid(
        &[(9, 3), (4, 1), (2, 2)],
        &[64, 128, 256],
        &[None, Some(5), Some(100)],
        &[(37, 37), (16, 16), (300, 300), (70, 200), (129, 130)],
    );
    // Large scores (exp overflow range without the running max).
    cases.push(AttentionShape {
        n_queries: 50,
        n_keys: 50,
        n_heads: 4,
        n_kv_heads: 1,
        head_dim: 64,
        scale: 8.0,
        window: None,
    });
    for (i, s) in cases.into_iter().enumerate() {
        assert!(amx::supports(&s), "{s:?}");
        let d = s.head_dim;
        let q = fill(s.n_queries * s.n_heads * d, 500 + i as u64);
        let k = fill(s.n_keys * s.n_kv_heads * d, 600 + i as u64);
        let v = fill(s.n_keys * s.n_kv_heads * d, 700 + i as u64);
        let unit = AttentionShape { scale: 1.0, ..s };
        let (want, mag) = naive(&round(&q, s.scale), &round(&k, 1.0), &round(&v, 1.0), &unit);
        let mut got = vec![f32::NAN; want.len()];
        causal_attention_bf16(&q, &k, &v, &mut got, &s);
        for (idx, ((&g, &w), &m)) in got.iter().zip(&want).zip(&mag).enumerate() {
            let err = (g - w).abs();
            assert!(
                err <= 8e-3 * (m + w.abs()),
                "AMX {s:?}: element {idx}: got {g}, want {w} (err {err:e})"
            );
        }
    }
}
