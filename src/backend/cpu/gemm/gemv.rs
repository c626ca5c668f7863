//! The GEMV-style path for small `m` (decode): streams `b` once, no packing.

use super::pack::{with_buf, W_BUF};
use super::{for_each_task, split_range, Elem, Product, GEMV_M_MAX};
use crate::backend::cpu::isa::Isa;
use crate::backend::cpu::out_ptr::OutPtr;

/// Rows of `b` per parallel task in the GEMV path.
const GEMV_ROWS_PER_TASK: usize = 256;
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
/// Prefetch distance of the GEMV path, in floats.
const GEMV_PREFETCH: usize = 1024;

/// Dispatches the GEMV path to the `gemv_rows` instance for the `m` (<= 8) rows of `a`.
pub(super) fn gemv_path<B: Elem>(isa: Isa, p: Product<B>, c: &mut [f32], parallel: bool) {
    match p.m {
        1 => gemv_rows::<1, B>(isa, p, c, parallel),
        2 => gemv_rows::<2, B>(isa, p, c, parallel),
        3 => gemv_rows::<3, B>(isa, p, c, parallel),
        4 => gemv_rows::<4, B>(isa, p, c, parallel),
        5 => gemv_rows::<5, B>(isa, p, c, parallel),
        6 => gemv_rows::<6, B>(isa, p, c, parallel),
        7 => gemv_rows::<7, B>(isa, p, c, parallel),
        8 => gemv_rows::<8, B>(isa, p, c, parallel),
        _ => unreachable!("the GEMV path takes at most {GEMV_M_MAX} rows"),
    }
}

/// `c[M x n] (+)= a[M x k] · bᵀ (+ bias)` (`M` = `p.m`): each row of `b` is read once, front to
/// back (the rows of `b` follow each other, so the whole of `b` is one sequential stream for the
/// prefetchers), and multiplied by the `M` rows of `a`, which stay in L1. A 16-bit row of `b` is
/// widened in registers (bf16 with AVX-512) or into an L1-resident f32 buffer first: half the bytes
/// from memory, the same arithmetic.
fn gemv_rows<const M: usize, B: Elem>(isa: Isa, p: Product<B>, c: &mut [f32], parallel: bool) {
    let c_ptr = OutPtr(c.as_mut_ptr());
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let tasks = p.n.div_ceil(GEMV_ROWS_PER_TASK).max((4 * threads).min(p.n));
    let xs: [&[f32]; M] = std::array::from_fn(|i| &p.a[i * p.lda..i * p.lda + p.k]);
    // Isa::Avx512 includes BW/VL (see isa.rs).
    #[cfg(target_arch = "x86_64")]
    let direct_bf16 = isa == Isa::Avx512;
    for_each_task(parallel, tasks, |t| {
        with_buf(&W_BUF, p.k, |wide| {
            let (j0, j1) = split_range(p.n, tasks, t);
            for j in j0..j1 {
                let row = &p.b[j * p.ldb..j * p.ldb + p.k];
                let dots = match (Elem::as_f32(row), B::as_bf16(row)) {
                    (Some(w), _) => dot_rows::<M>(isa, &xs, w),
                    // bf16 read as it is and widened in registers: half the bytes of f32, the
                    // same arithmetic.
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: AVX-512F/BW/VL detected; every row of xs has k elements.
                    (None, Some(w)) if direct_bf16 => unsafe { dot_rows_avx512::<M, _>(&xs, w) },
                    _ => {
                        Elem::widen_into(row, wide);
                        dot_rows::<M>(isa, &xs, wide)
                    }
                };
                let add = p.bias.map_or(0.0, |bb| bb[j]);
                for (i, &dot) in dots.iter().enumerate() {
                    // SAFETY: i < m and j < n, inside c (checked in gemm_nt); column j belongs to this
                    // task only.
                    unsafe {
                        let dst = c_ptr.get().add(i * p.ldc + j);
                        *dst = if p.accumulate {
                            *dst + dot + add
                        } else {
                            dot + add
                        };
                    }
                }
            }
        })
    });
}

/// Dot products of one row `w` with each of the `M` rows `xs` (all of `w`'s length).
#[inline]
fn dot_rows<const M: usize>(isa: Isa, xs: &[&[f32]; M], w: &[f32]) -> [f32; M] {
    for x in xs {
        assert!(x.len() == w.len());
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the rows have w's length (checked above); the ISA was detected.
        Isa::Avx512 => unsafe { dot_rows_avx512::<M, f32>(xs, w) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2Fma => unsafe { dot_rows_avx2::<M>(xs, w) },
        _ => dot_rows_portable::<M>(xs, w),
    }
}

fn dot_rows_portable<const M: usize>(xs: &[&[f32]; M], w: &[f32]) -> [f32; M] {
    const L: usize = 16;
    let k = w.len();
    let kv = k - k % L;
    let mut acc = [[0.0f32; L]; M];
    for p in (0..kv).step_by(L) {
        let wv: &[f32; L] = w[p..p + L].try_into().unwrap();
        for (i, x) in xs.iter().enumerate() {
            let xv: &[f32; L] = x[p..p + L].try_into().unwrap();
            for l in 0..L {
                acc[i][l] += xv[l] * wv[l];
            }
        }
    }
    std::array::from_fn(|i| {
        let mut s: f32 = acc[i].iter().sum();
        for p in kv..k {
            s += xs[i][p] * w[p];
        }
        s
    })
}

/// Weight elements the AVX-512 dot product reads 16 at a time, as f32 (bf16 widened exactly, so the
/// result is bit-for-bit that of the widened weights).
#[cfg(target_arch = "x86_64")]
trait Lanes16: Copy {
    /// 16 elements at `p` as f32.
    ///
    /// # Safety
    /// AVX-512F/BW/VL present; `p` points to 16 readable elements.
    unsafe fn load(p: *const Self) -> std::arch::x86_64::__m512;
    /// The elements of `mask` at `p` as f32, zero elsewhere.
    ///
    /// # Safety
    /// AVX-512F/BW/VL present; the masked elements at `p` are readable.
    unsafe fn load_masked(mask: u16, p: *const Self) -> std::arch::x86_64::__m512;
}

#[cfg(target_arch = "x86_64")]
impl Lanes16 for f32 {
    #[inline(always)]
    unsafe fn load(p: *const f32) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load_masked(mask: u16, p: *const f32) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_maskz_loadu_ps(mask, p)
    }
}

#[cfg(target_arch = "x86_64")]
impl Lanes16 for half::bf16 {
    #[inline(always)]
    unsafe fn load(p: *const half::bf16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let halves = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(halves)))
    }
    #[inline(always)]
    unsafe fn load_masked(mask: u16, p: *const half::bf16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let halves = _mm256_maskz_loadu_epi16(mask, p as *const _);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(halves)))
    }
}

/// # Safety
/// The CPU supports AVX-512F (and BW/VL for bf16 weights); every row of `xs` has `w.len()` elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
#[allow(clippy::needless_range_loop)]
unsafe fn dot_rows_avx512<const M: usize, W: Lanes16>(xs: &[&[f32]; M], w: &[W]) -> [f32; M] {
    use std::arch::x86_64::*;
    // Four independent accumulators per row of a cover the FMA latency even for M = 1; two per
    // row above four rows (at most 16 of the 32 zmm registers).
    const U_MAX: usize = 4;
    let u_n = if M <= 4 { 4 } else { 2 };
    let k = w.len();
    let wp = w.as_ptr();
    let xp: [*const f32; M] = std::array::from_fn(|i| xs[i].as_ptr());
    let mut acc = [[_mm512_setzero_ps(); U_MAX]; M];
    let mut p = 0;
    while p + 16 * u_n <= k {
        for u in 0..u_n {
            // Software prefetch well ahead in the stream of b (into the next rows when they follow
            // this one): decode products gain 10-20%. A hint only: never dereferenced.
            _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(p + 16 * u + GEMV_PREFETCH) as *const i8);
            let wv = W::load(wp.add(p + 16 * u));
            for i in 0..M {
                acc[i][u] = _mm512_fmadd_ps(_mm512_loadu_ps(xp[i].add(p + 16 * u)), wv, acc[i][u]);
            }
        }
        p += 16 * u_n;
    }
    while p + 16 <= k {
        let wv = W::load(wp.add(p));
        for i in 0..M {
            acc[i][0] = _mm512_fmadd_ps(_mm512_loadu_ps(xp[i].add(p)), wv, acc[i][0]);
        }
        p += 16;
    }
    if p < k {
        let mask: __mmask16 = ((1u32 << (k - p)) - 1) as __mmask16;
        let wv = W::load_masked(mask, wp.add(p));
        for i in 0..M {
            acc[i][1] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, xp[i].add(p)), wv, acc[i][1]);
        }
    }
    std::array::from_fn(|i| {
        // Unused accumulators (u_n = 2) are still zero.
        let s01 = _mm512_add_ps(acc[i][0], acc[i][1]);
        let s23 = _mm512_add_ps(acc[i][2], acc[i][3]);
        _mm512_reduce_add_ps(_mm512_add_ps(s01, s23))
    })
}

/// # Safety
/// The CPU supports AVX2 and FMA; every row of `xs` has `w.len()` elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)]
unsafe fn dot_rows_avx2<const M: usize>(xs: &[&[f32]; M], w: &[f32]) -> [f32; M] {
    use std::arch::x86_64::*;
    // Two accumulators per row of a up to four rows, one above (at most 8 of the 16 ymm registers).
    const U: usize = 2;
    let one = M > 4;
    let k = w.len();
    let wp = w.as_ptr();
    let xp: [*const f32; M] = std::array::from_fn(|i| xs[i].as_ptr());
    let mut acc = [[_mm256_setzero_ps(); U]; M];
    let mut p = 0;
    while one && p + 8 <= k {
        _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(p + GEMV_PREFETCH) as *const i8);
        let wv = _mm256_loadu_ps(wp.add(p));
        for i in 0..M {
            acc[i][0] = _mm256_fmadd_ps(_mm256_loadu_ps(xp[i].add(p)), wv, acc[i][0]);
        }
        p += 8;
    }
    while p + 8 * U <= k {
        // One line of b per iteration; prefetched as in the AVX-512 kernel.
        _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(p + GEMV_PREFETCH) as *const i8);
        for u in 0..U {
            let wv = _mm256_loadu_ps(wp.add(p + 8 * u));
            for i in 0..M {
                acc[i][u] = _mm256_fmadd_ps(_mm256_loadu_ps(xp[i].add(p + 8 * u)), wv, acc[i][u]);
            }
        }
        p += 8 * U;
    }
    let mut out: [f32; M] = std::array::from_fn(|i| {
        let s = _mm256_add_ps(acc[i][0], acc[i][1]);
        let lo = _mm256_castps256_ps128(s);
        let hi = _mm256_extractf128_ps::<1>(s);
        let q = _mm_add_ps(lo, hi);
        let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        let q = _mm_add_ss(q, _mm_movehdup_ps(q));
        _mm_cvtss_f32(q)
    });
    while p < k {
        let wv = *wp.add(p);
        for i in 0..M {
            out[i] += *xp[i].add(p) * wv;
        }
        p += 1;
    }
    out
}
