//! The online-softmax update of one score row, with vectorised `exp` for AVX2 and AVX-512.

use crate::backend::cpu::isa::Isa;

/// Online-softmax step for one row of a score tile: the visible scores are `row[a..b]`.
///
/// Returns `(m_new, sum)` with `m_new = max(m_old, max(row[a..b]))` and `sum = Σ exp(row - m_new)`
/// over the visible part; `row` is overwritten by `exp(row - m_new)` there and by zero elsewhere.
pub(crate) fn softmax_update(
    isa: Isa,
    row: &mut [f32],
    a: usize,
    b: usize,
    m_old: f32,
) -> (f32, f32) {
    assert!(a < b && b <= row.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2Fma is only selected when the CPU has AVX2 and FMA.
        Isa::Avx2Fma => unsafe { softmax_update_avx2(row, a, b, m_old) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512 is only selected when the CPU has AVX-512F.
        Isa::Avx512 => unsafe { softmax_update_avx512(row, a, b, m_old) },
        _ => softmax_update_portable(row, a, b, m_old),
    }
}

fn softmax_update_portable(row: &mut [f32], a: usize, b: usize, m_old: f32) -> (f32, f32) {
    let m_new = row[a..b].iter().fold(m_old, |m, &x| m.max(x));
    let mut sum = 0.0;
    for x in &mut row[a..b] {
        *x = (*x - m_new).exp();
        sum += *x;
    }
    row[..a].fill(0.0);
    row[b..].fill(0.0);
    (m_new, sum)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_update_avx2(row: &mut [f32], a: usize, b: usize, m_old: f32) -> (f32, f32) {
    use std::arch::x86_64::*;
    let vis = &mut row[a..b];
    let n = vis.len();
    let nv = n - n % 8;
    let ptr = vis.as_mut_ptr();
    let mut vmax = _mm256_set1_ps(m_old);
    let mut i = 0;
    while i < nv {
        vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(ptr.add(i)));
        i += 8;
    }
    let mut lanes = [0.0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), vmax);
    let mut m_new = lanes.iter().fold(m_old, |m, &x| m.max(x));
    for &x in &vis[nv..] {
        m_new = m_new.max(x);
    }
    let vm = _mm256_set1_ps(m_new);
    let mut vsum = _mm256_setzero_ps();
    let mut i = 0;
    while i < nv {
        let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(ptr.add(i)), vm));
        _mm256_storeu_ps(ptr.add(i), e);
        vsum = _mm256_add_ps(vsum, e);
        i += 8;
    }
    _mm256_storeu_ps(lanes.as_mut_ptr(), vsum);
    let mut sum: f32 = lanes.iter().sum();
    for x in &mut vis[nv..] {
        *x = (*x - m_new).exp();
        sum += *x;
    }
    row[..a].fill(0.0);
    row[b..].fill(0.0);
    (m_new, sum)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn softmax_update_avx512(row: &mut [f32], a: usize, b: usize, m_old: f32) -> (f32, f32) {
    use std::arch::x86_64::*;
    let vis = &mut row[a..b];
    let n = vis.len();
    let ptr = vis.as_mut_ptr();
    // Whole vectors, then one masked vector for the rest.
    let tail = (n % 16) as u32;
    let tail_mask: __mmask16 = ((1u32 << tail) - 1) as __mmask16;
    let nv = n - n % 16;
    let mut vmax = _mm512_set1_ps(m_old);
    let mut i = 0;
    while i < nv {
        vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(ptr.add(i)));
        i += 16;
    }
    if tail != 0 {
        vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(vmax, tail_mask, ptr.add(nv)));
    }
    let m_new = _mm512_reduce_max_ps(vmax);
    let vm = _mm512_set1_ps(m_new);
    let mut vsum = _mm512_setzero_ps();
    let mut i = 0;
    while i < nv {
        let e = exp512(_mm512_sub_ps(_mm512_loadu_ps(ptr.add(i)), vm));
        _mm512_storeu_ps(ptr.add(i), e);
        vsum = _mm512_add_ps(vsum, e);
        i += 16;
    }
    if tail != 0 {
        let x = _mm512_mask_loadu_ps(vm, tail_mask, ptr.add(nv));
        let e = _mm512_maskz_mov_ps(tail_mask, exp512(_mm512_sub_ps(x, vm)));
        _mm512_mask_storeu_ps(ptr.add(nv), tail_mask, e);
        vsum = _mm512_add_ps(vsum, e);
    }
    let sum = _mm512_reduce_add_ps(vsum);
    row[..a].fill(0.0);
    row[b..].fill(0.0);
    (m_new, sum)
}

/// `exp(x)` for 16 lanes; the same method and accuracy as [`exp256`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn exp512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(-87.0)),
        _mm512_set1_ps(88.0),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut poly = _mm512_set1_ps(1.0 / 5040.0);
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(c));
    }
    let pow2 = _mm512_slli_epi32::<23>(_mm512_add_epi32(
        _mm512_cvtps_epi32(n),
        _mm512_set1_epi32(127),
    ));
    _mm512_mul_ps(poly, _mm512_castsi512_ps(pow2))
}

/// `exp(x)` for 16 lanes with `x <= 0` (values minus their maximum: softmax scores, logits):
/// cheaper than [`exp512`] (no clamping, no integer exponent arithmetic): `x = n ln2 + r`,
/// `|r| <= ln2 / 2`, the degree-6 Taylor polynomial of `e^r` (truncation error `r^7 / 7!` below
/// 1.3e-7 relative), scaled by `2^n` with `VSCALEFPS` (0 for very negative `x`).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn exp512_nonpositive(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut poly = _mm512_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(poly, n)
}

/// `exp(x)` for 8 lanes, relative error about 2e-7 (inputs below -87 give about 1e-38).
///
/// Splits `x = n ln2 + r` with `|r| <= ln2 / 2`, evaluates the degree-7 Taylor polynomial of `e^r`
/// and multiplies by `2^n` built in the exponent bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp256(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.0)),
        _mm256_set1_ps(88.0),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    // ln 2 = 0.693359375 - 2.12194440e-4, the first part exact in few bits so n * part is exact.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut poly = _mm256_set1_ps(1.0 / 5040.0);
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(c));
    }
    let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(poly, _mm256_castsi256_ps(pow2))
}
