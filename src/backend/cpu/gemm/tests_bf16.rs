//! Tests of products with 16-bit weights: the widening path is bit-for-bit the f32 product of the
//! widened weights; the AMX and AVX512-BF16 kernels are the f64 product of the bf16-rounded
//! operands (each where the CPU has it; otherwise its test says SKIPPED and why).

use super::tests::{assert_close, assert_padding_untouched, naive, SHAPES};
use super::*;
use crate::backend::cpu::test_util::fill;
use half::{bf16, f16};

/// Shapes beyond [`SHAPES`] that reach the AMX kernel's edges: partial weight strips and
/// activation blocks, `k` tails of every parity, and several activation blocks per product.
const AMX_SHAPES: &[(usize, usize, usize)] = &[
    (9, 1, 1),
    (16, 16, 32),
    (17, 31, 33),
    (32, 32, 64),
    (33, 33, 31),
    (47, 64, 96),
    (70, 45, 37),
    (64, 96, 2),
    (300, 100, 2500),
    (1100, 70, 600),
];

fn rounded(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
}

/// Every shape, with and without padding, accumulation and bias, through `bk`; `a_bf16` says
/// whether the kernel rounds the activations to bf16 (the reference does the same; decode-sized
/// products, at most `GEMV_M_MAX` rows, always widen the weights instead).
fn check_bf16(isa: Isa, bk: Bf16Kernel, a_bf16: bool, exact: bool) {
    for (si, &(m, n, k)) in SHAPES.iter().chain(AMX_SHAPES).enumerate() {
        for &(pad, accumulate, with_bias) in &[(0, false, false), (3, true, false), (5, true, true)]
        {
            let (lda, ldb, ldc) = (k + pad, k + 2 * pad, n + pad);
            let seed = 1000 + si as u64 * 16 + pad as u64;
            let a = fill((m - 1) * lda + k, seed);
            let b16: Vec<bf16> = fill((n - 1) * ldb + k, seed + 1)
                .into_iter()
                .map(bf16::from_f32)
                .collect();
            let b32: Vec<f32> = b16.iter().map(|v| v.to_f32()).collect();
            let bias = fill(n, seed + 2);
            let c0 = fill((m - 1) * ldc + n, seed + 3);
            let bias = with_bias.then_some(bias.as_slice());
            let ref_a = if a_bf16 && m > GEMV_M_MAX {
                rounded(&a)
            } else {
                a.clone()
            };
            let p32 = Product {
                a: &ref_a,
                lda,
                b: &b32,
                ldb,
                ldc,
                m,
                n,
                k,
                accumulate,
                bias,
            };
            let p16 = Product {
                a: &a,
                lda,
                b: &b16[..],
                ldb,
                ldc,
                m,
                n,
                k,
                accumulate,
                bias,
            };
            let mut got = c0.clone();
            gemm_with(isa, bk, p16, &mut got);
            let what =
                format!("{bk:?} m={m} n={n} k={k} pad={pad} acc={accumulate} bias={with_bias}");
            if exact {
                let mut want = c0.clone();
                gemm_with(isa, bk, p32, &mut want);
                assert_eq!(got, want, "{what}: not bit-for-bit the f32 product");
            } else {
                let mut want = c0.clone();
                let scale = naive(p32, &mut want);
                assert_close(&got, &want, &scale, &what);
            }
            assert_padding_untouched(&got, &c0, m, n, ldc, &what);
        }
    }
}

#[test]
fn bf16_widen_is_the_f32_product_of_the_widened_weights() {
    check_bf16(detected_isa(), Bf16Kernel::Widen, false, true);
}

#[test]
fn bf16_amx_matches_f64_of_rounded_operands() {
    if !Bf16Kernel::Amx.available() {
        eprintln!("SKIPPED bf16_amx: this CPU or OS offers no AMX-BF16 tiles");
        return;
    }
    check_bf16(detected_isa(), Bf16Kernel::Amx, true, false);
}

#[test]
fn bf16_avx512bf16_matches_f64_of_rounded_operands() {
    if !Bf16Kernel::Avx512Bf16.available() {
        eprintln!("SKIPPED bf16_avx512bf16: this CPU has no AVX512-BF16");
        return;
    }
    check_bf16(detected_isa(), Bf16Kernel::Avx512Bf16, true, false);
}

#[test]
fn f16_weights_are_widened_exactly() {
    let (m, n, k) = (37, 65, 129);
    let x = fill(m * k, 11);
    let w16: Vec<f16> = fill(n * k, 12).into_iter().map(f16::from_f32).collect();
    let w32: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
    let (mut got, mut want) = (vec![0.0; m * n], vec![0.0; m * n]);
    linear(&x, &w16, None, &mut got, m, n, k);
    linear(&x, &w32, None, &mut want, m, n, k);
    assert_eq!(got, want);
}
