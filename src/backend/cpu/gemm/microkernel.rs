//! The register-tiled GEMM micro-kernels (portable 6 x 16, AVX2 6 x 16, AVX-512 12 x 32) and their tile shapes.

use crate::backend::cpu::isa::Isa;

/// Rows of the 6 x 16 micro-tile (rows of `a` and `c` per micro-kernel call) of the AVX2 and
/// portable kernels.
pub(crate) const MR: usize = 6;
/// Columns of the 6 x 16 micro-tile (rows of `b`, columns of `c` per micro-kernel call).
pub(crate) const NR: usize = 16;
/// Rows of the AVX-512 micro-tile.
pub(crate) const MR512: usize = 12;
/// Columns of the AVX-512 micro-tile.
pub(crate) const NR512: usize = 32;

/// Micro-kernel: `c[MR x NR] (+)= a_panel · b_panel (+ bias)`; see [`ukr_portable`] for the contract.
pub(crate) type MicroKernel =
    unsafe fn(usize, *const f32, *const f32, usize, *mut f32, usize, bool, *const f32);

/// The 6 x 16 micro-kernel for `isa` (AVX2 also on AVX-512 machines).
pub(crate) fn micro_kernel(isa: Isa) -> MicroKernel {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma | Isa::Avx512 => ukr_avx2,
        _ => ukr_portable,
    }
}

/// Portable 6 x 16 micro-kernel: `c[i][j] (+)= sum_p a[p*MR + i] * b[p*ldb + j] (+ bias[j])`.
///
/// # Safety
/// `a` holds `kc*MR` readable floats; `b` has `NR` readable floats at each of `p*ldb`, `p < kc`;
/// `c` rows `0..MR` (stride `ldc`), columns `0..NR` are writable; `bias` is null or holds `NR` floats.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn ukr_portable(
    kc: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    acc: bool,
    bias: *const f32,
) {
    let a = std::slice::from_raw_parts(a, kc * MR);
    let mut t = [[0.0f32; NR]; MR];
    for (p, ap) in a.chunks_exact(MR).enumerate() {
        let bp = std::slice::from_raw_parts(b.add(p * ldb), NR);
        for i in 0..MR {
            let av = ap[i];
            for j in 0..NR {
                t[i][j] += av * bp[j];
            }
        }
    }
    for (i, ti) in t.iter().enumerate() {
        let row = std::slice::from_raw_parts_mut(c.add(i * ldc), NR);
        for j in 0..NR {
            let mut v = ti[j];
            if !bias.is_null() {
                v += *bias.add(j);
            }
            row[j] = if acc { row[j] + v } else { v };
        }
    }
}

/// AVX2+FMA 6 x 16 micro-kernel: 12 ymm accumulators, two B loads and six broadcasts per depth step.
///
/// # Safety
/// As [`ukr_portable`], and the CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn ukr_avx2(
    kc: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    acc: bool,
    bias: *const f32,
) {
    use std::arch::x86_64::*;
    let mut c00 = _mm256_setzero_ps();
    let mut c01 = _mm256_setzero_ps();
    let mut c10 = _mm256_setzero_ps();
    let mut c11 = _mm256_setzero_ps();
    let mut c20 = _mm256_setzero_ps();
    let mut c21 = _mm256_setzero_ps();
    let mut c30 = _mm256_setzero_ps();
    let mut c31 = _mm256_setzero_ps();
    let mut c40 = _mm256_setzero_ps();
    let mut c41 = _mm256_setzero_ps();
    let mut c50 = _mm256_setzero_ps();
    let mut c51 = _mm256_setzero_ps();
    let mut ap = a;
    let mut bp = b;
    macro_rules! step {
        () => {{
            let b0 = _mm256_loadu_ps(bp);
            let b1 = _mm256_loadu_ps(bp.add(8));
            let a0 = _mm256_set1_ps(*ap);
            c00 = _mm256_fmadd_ps(a0, b0, c00);
            c01 = _mm256_fmadd_ps(a0, b1, c01);
            let a1 = _mm256_set1_ps(*ap.add(1));
            c10 = _mm256_fmadd_ps(a1, b0, c10);
            c11 = _mm256_fmadd_ps(a1, b1, c11);
            let a2 = _mm256_set1_ps(*ap.add(2));
            c20 = _mm256_fmadd_ps(a2, b0, c20);
            c21 = _mm256_fmadd_ps(a2, b1, c21);
            let a3 = _mm256_set1_ps(*ap.add(3));
            c30 = _mm256_fmadd_ps(a3, b0, c30);
            c31 = _mm256_fmadd_ps(a3, b1, c31);
            let a4 = _mm256_set1_ps(*ap.add(4));
            c40 = _mm256_fmadd_ps(a4, b0, c40);
            c41 = _mm256_fmadd_ps(a4, b1, c41);
            let a5 = _mm256_set1_ps(*ap.add(5));
            c50 = _mm256_fmadd_ps(a5, b0, c50);
            c51 = _mm256_fmadd_ps(a5, b1, c51);
            ap = ap.add(MR);
            bp = bp.add(ldb);
        }};
    }
    let mut p = 0;
    while p + 4 <= kc {
        step!();
        step!();
        step!();
        step!();
        p += 4;
    }
    while p < kc {
        step!();
        p += 1;
    }
    let (bias0, bias1) = if bias.is_null() {
        (_mm256_setzero_ps(), _mm256_setzero_ps())
    } else {
        (_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.add(8)))
    };
    let rows = [
        (c00, c01),
        (c10, c11),
        (c20, c21),
        (c30, c31),
        (c40, c41),
        (c50, c51),
    ];
    for (i, &(r0, r1)) in rows.iter().enumerate() {
        let dst = c.add(i * ldc);
        let mut v0 = _mm256_add_ps(r0, bias0);
        let mut v1 = _mm256_add_ps(r1, bias1);
        if acc {
            v0 = _mm256_add_ps(v0, _mm256_loadu_ps(dst));
            v1 = _mm256_add_ps(v1, _mm256_loadu_ps(dst.add(8)));
        }
        _mm256_storeu_ps(dst, v0);
        _mm256_storeu_ps(dst.add(8), v1);
    }
}

/// AVX-512 12 x 32 micro-kernel: 24 zmm accumulators, two B loads and twelve broadcasts per depth
/// step (same contract as [`ukr_portable`] with MR = 12, NR = 32).
///
/// # Safety
/// As [`ukr_portable`] for a 12 x 32 tile, and the CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn ukr_avx512(
    kc: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    acc: bool,
    bias: *const f32,
) {
    use std::arch::x86_64::*;
    let mut c0 = [_mm512_setzero_ps(); MR512];
    let mut c1 = [_mm512_setzero_ps(); MR512];
    let mut ap = a;
    let mut bp = b;
    for _ in 0..kc {
        let b0 = _mm512_loadu_ps(bp);
        let b1 = _mm512_loadu_ps(bp.add(16));
        for i in 0..MR512 {
            let ai = _mm512_set1_ps(*ap.add(i));
            c0[i] = _mm512_fmadd_ps(ai, b0, c0[i]);
            c1[i] = _mm512_fmadd_ps(ai, b1, c1[i]);
        }
        ap = ap.add(MR512);
        bp = bp.add(ldb);
    }
    let (bias0, bias1) = if bias.is_null() {
        (_mm512_setzero_ps(), _mm512_setzero_ps())
    } else {
        (_mm512_loadu_ps(bias), _mm512_loadu_ps(bias.add(16)))
    };
    for i in 0..MR512 {
        let dst = c.add(i * ldc);
        let mut v0 = _mm512_add_ps(c0[i], bias0);
        let mut v1 = _mm512_add_ps(c1[i], bias1);
        if acc {
            v0 = _mm512_add_ps(v0, _mm512_loadu_ps(dst));
            v1 = _mm512_add_ps(v1, _mm512_loadu_ps(dst.add(16)));
        }
        _mm512_storeu_ps(dst, v0);
        _mm512_storeu_ps(dst.add(16), v1);
    }
}
