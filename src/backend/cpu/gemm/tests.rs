//! Tests of the GEMM against an f64 reference, for every kernel variant the CPU offers.

use super::*;
use crate::backend::cpu::test_util::fill;

/// Reference product in f64; also returns, per element, the magnitude scale
/// `sum_p |a||b| + |bias| + |c_old|` that rounding errors are relative to.
pub(super) fn naive(prod: Product, c: &mut [f32]) -> Vec<f32> {
    let mut scale = vec![0.0f32; c.len()];
    for i in 0..prod.m {
        for j in 0..prod.n {
            let (mut s, mut mag) = (0.0f64, 0.0f64);
            for p in 0..prod.k {
                let t = prod.a[i * prod.lda + p] as f64 * prod.b[j * prod.ldb + p] as f64;
                s += t;
                mag += t.abs();
            }
            if let Some(bias) = prod.bias {
                s += bias[j] as f64;
                mag += (bias[j] as f64).abs();
            }
            let dst = &mut c[i * prod.ldc + j];
            if prod.accumulate {
                mag += (*dst as f64).abs();
                s += *dst as f64;
            }
            *dst = s as f32;
            scale[i * prod.ldc + j] = mag as f32;
        }
    }
    scale
}

/// `|got - want| <= 1e-5 * scale` element-wise (relative to the magnitudes summed).
pub(super) fn assert_close(got: &[f32], want: &[f32], scale: &[f32], what: &str) {
    assert_eq!(got.len(), want.len());
    for (idx, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        let err = (g - w).abs();
        assert!(
            err <= 1e-5 * s.max(1e-30) || err == 0.0,
            "{what}: element {idx}: got {g}, want {w} (abs err {err:e}, scale {s:e})"
        );
    }
}

/// The elements between the `m` rows of `c` (its padding, `n..ldc`) still hold `c0`'s values.
pub(super) fn assert_padding_untouched(
    got: &[f32],
    c0: &[f32],
    m: usize,
    n: usize,
    ldc: usize,
    what: &str,
) {
    for i in 0..m.saturating_sub(1) {
        let pad = i * ldc + n..(i + 1) * ldc;
        assert_eq!(&got[pad.clone()], &c0[pad], "{what}: padding");
    }
}

pub(super) const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (7, 13, 5),
    (37, 65, 129),
    (200, 17, 300),
    (1, 300, 77),
    (1, 1000, 576),
    (1, 1100, 1000),
    (3, 1100, 1000),
    (8, 300, 77),
    (9, 40, 33),
    (2, 33, 9),
    (3, 50, 64),
    (4, 17, 1),
    (5, 16, 8),
    (6, 16, 16),
    (12, 32, 384),
    (13, 1, 40),
    (64, 3, 1),
    (97, 211, 400),
    (150, 4100, 20),
    (300, 40, 800),
    // Wide enough for independent column strips in parallel.
    (20, 16400, 3),
];

fn check_isa(isa: Isa) {
    for (si, &(m, n, k)) in SHAPES.iter().enumerate() {
        for &(pad, accumulate, with_bias) in &[
            (0, false, false),
            (3, true, false),
            (0, false, true),
            (5, true, true),
        ] {
            let (lda, ldb, ldc) = (k + pad, k + 2 * pad, n + pad);
            let seed = si as u64 * 16 + pad as u64;
            let a = fill((m - 1) * lda + k, seed);
            let b = fill((n - 1) * ldb + k, seed + 1);
            let bias = fill(n, seed + 2);
            let c0 = fill((m - 1) * ldc + n, seed + 3);
            let bias = with_bias.then_some(bias.as_slice());
            let p = Product {
                a: &a,
                lda,
                b: &b,
                ldb,
                ldc,
                m,
                n,
                k,
                accumulate,
                bias,
            };
            let mut want = c0.clone();
            let scale = naive(p, &mut want);
            let mut got = c0.clone();
            gemm_nt(isa, p, &mut got);
            let what =
                format!("{isa:?} m={m} n={n} k={k} pad={pad} acc={accumulate} bias={with_bias}");
            assert_close(&got, &want, &scale, &what);
            assert_padding_untouched(&got, &c0, m, n, ldc, &what);
        }
    }
}

#[test]
fn matches_naive_detected_isa() {
    check_isa(detected_isa());
}

#[test]
fn matches_naive_portable() {
    check_isa(Isa::Portable);
}

#[test]
fn matches_naive_avx2_when_available() {
    if matches!(detected_isa(), Isa::Avx512 | Isa::Avx2Fma) {
        check_isa(Isa::Avx2Fma);
    }
}

#[test]
fn linear_with_bias_and_public_matmul() {
    let (m, n, k) = (37, 65, 129);
    let x = fill(m * k, 1);
    let w = fill(n * k, 2);
    let bias = fill(n, 3);
    let mut want = vec![0.0; m * n];
    let scale = naive(Product::dense(&x, &w, Some(&bias), m, n, k), &mut want);
    let mut y = vec![f32::NAN; m * n];
    linear(&x, &w, Some(&bias), &mut y, m, n, k);
    assert_close(&y, &want, &scale, "linear");
    // matmul_nt accumulating on top of the bias-only result gives the same.
    let mut y2: Vec<f32> = (0..m * n).map(|i| bias[i % n]).collect();
    matmul_nt(&x, k, &w, k, &mut y2, n, m, n, k, true);
    assert_close(&y2, &want, &scale, "matmul_nt accumulate");
}

#[test]
fn k_zero_and_empty() {
    let mut c = vec![1.0f32; 6];
    let p: Product = Product {
        a: &[],
        lda: 0,
        b: &[],
        ldb: 0,
        ldc: 3,
        m: 2,
        n: 3,
        k: 0,
        accumulate: false,
        bias: Some(&[1.0, 2.0, 3.0]),
    };
    gemm_nt(detected_isa(), p, &mut c);
    assert_eq!(c, [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
    matmul_nt(&[], 0, &[], 0, &mut c, 3, 2, 3, 0, true);
    assert_eq!(c, [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
    matmul_nt(&[], 0, &[], 0, &mut [], 0, 0, 0, 0, false);
}

#[test]
fn large_prefill_shape_is_parallel_and_correct() {
    // Spans several depth blocks and row tasks; checked on a sample of rows against f64.
    let (m, n, k) = (300, 700, 1000);
    let x = fill(m * k, 7);
    let w = fill(n * k, 8);
    let mut y = vec![0.0; m * n];
    linear(&x, &w, None, &mut y, m, n, k);
    for i in [0, 5, 6, 143, 144, 299] {
        let mut want = vec![0.0; n];
        let scale = naive(Product::dense(&x[i * k..], &w, None, 1, n, k), &mut want);
        assert_close(&y[i * n..(i + 1) * n], &want, &scale, &format!("row {i}"));
    }
}
