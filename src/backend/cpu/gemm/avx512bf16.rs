//! bf16 products with `VDPBF16PS` (AVX512-BF16: AMD Zen 4/5, Intel Cooper Lake and later): bf16
//! operands, f32 accumulation, for CPUs without AMX tiles.
//!
//! `VDPBF16PS` adds to each of 16 f32 lanes the dot product of a pair of bf16 from each operand.
//! The activations, rounded to bf16 (nearest even), are packed once per product as 12-row panels
//! of k-pairs (`[pair][row]`, one 32-bit broadcast per row and pair); the weights are packed per
//! 32-column panel and activation block into a per-thread buffer (`[pair][column]`, two zmm per
//! pair), so the 12 x 32 micro-kernel keeps 24 zmm accumulators and reads two weight vectors and
//! twelve broadcasts per pair of `k`. Tasks are (block of activation rows, range of weight panels).

use super::{for_each_task, split_range, Product};
use crate::backend::cpu::bf16::{bf16_bits, with_zeroed};
use crate::backend::cpu::out_ptr::OutPtr;
use half::bf16;
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Activation rows per micro-panel.
const MR: usize = 12;
/// Weight rows (output columns) per panel: two zmm of 16 f32.
const NR: usize = 32;
/// Bytes of packed activations a task's row block may span (kept in L2 while the panels stream).
const M_BLOCK_BYTES: usize = 512 << 10;

thread_local! {
    /// The packed activations of the product this thread is running.
    static A_PAIRS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// One packed weight panel.
    static B_PAIRS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// True when the CPU has AVX512-BF16 (and AVX-512F).
pub(crate) fn available() -> bool {
    std::is_x86_feature_detected!("avx512bf16") && std::is_x86_feature_detected!("avx512f")
}

/// True when `VDPBF16PS` does clearly more arithmetic per second than f32 FMAs on this CPU, so the
/// kernel beats widening the weights to f32. Measured, not assumed: on AMD Zen 4/5 a `VDPBF16PS`
/// costs about what an FMA does (twice its flops), while on the Intel Xeons measured here it issues
/// once per two cycles against two FMAs per cycle (half the flops). About a millisecond, measured on
/// the first call and cached; the 1.25x margin keeps the choice stable on a given CPU.
pub(crate) fn outruns_fma() -> bool {
    static OUTRUNS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OUTRUNS.get_or_init(measure_outruns_fma)
}

/// [`outruns_fma`], measured.
fn measure_outruns_fma() -> bool {
    const ITERS: usize = 20_000;
    let best_of = |run: unsafe fn(usize) -> f32| {
        (0..5)
            .map(|_| {
                let start = std::time::Instant::now();
                // SAFETY: `available()` was checked by the caller (both loops need AVX-512F and
                // the first AVX512-BF16).
                std::hint::black_box(unsafe { run(std::hint::black_box(ITERS)) });
                start.elapsed()
            })
            .min()
            .unwrap_or_default()
            .as_secs_f64()
    };
    // Each loop issues 12 independent instructions per iteration: VDPBF16PS does 64 flops, an
    // FMA 32, so the dot products win when they take less than 2 / 1.25 times the FMAs' time.
    let (dot, fma) = (best_of(dot_loop), best_of(fma_loop));
    dot * 1.25 < 2.0 * fma
}

/// `iters` x 12 independent `VDPBF16PS` (the AVX512-BF16 peak loop: 64 flops each).
///
/// # Safety
/// The CPU has AVX512-BF16 ([`available`]).
#[target_feature(enable = "avx512f,avx512bf16")]
pub(crate) unsafe fn dot_loop(iters: usize) -> f32 {
    let mut acc = [_mm512_setzero_ps(); 12];
    let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80));
    let b: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3380_3380));
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_dpbf16_ps(*x, a, b);
        }
    }
    acc.iter().map(|&x| _mm512_reduce_add_ps(x)).sum()
}

/// `iters` x 12 independent 16-lane FMAs.
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop(iters: usize) -> f32 {
    let mut acc = [_mm512_setzero_ps(); 12];
    let (a, b) = (_mm512_set1_ps(1e-7), _mm512_set1_ps(1.0));
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_fmadd_ps(a, b, *x);
        }
    }
    acc.iter().map(|&x| _mm512_reduce_add_ps(x)).sum()
}

/// `c (+)= a · bᵀ (+ bias)` with `VDPBF16PS`, `a` rounded to bf16. The caller checked the shapes
/// and [`available`].
pub(super) fn gemm(p: Product<bf16>, c: &mut [f32], parallel: bool) {
    let pairs = p.k.div_ceil(2);
    let panels_a = p.m.div_ceil(MR);
    with_zeroed(&A_PAIRS, panels_a * MR * pairs, |ap| {
        pack_activations(&p, ap, pairs, parallel);
        let panels_b = p.n.div_ceil(NR);
        let block = (M_BLOCK_BYTES / (4 * MR * pairs)).clamp(1, panels_a);
        let blocks = panels_a.div_ceil(block);
        let threads = if parallel {
            rayon::current_num_threads()
        } else {
            1
        };
        let chunks = (4 * threads).div_ceil(blocks).clamp(1, panels_b);
        let c_ptr = OutPtr(c.as_mut_ptr());
        for_each_task(parallel, blocks * chunks, |t| {
            let (mb, chunk) = (t / chunks, t % chunks);
            let a_panels = mb * block..((mb + 1) * block).min(panels_a);
            let (b0, b1) = split_range(panels_b, chunks, chunk);
            with_zeroed(&B_PAIRS, NR * pairs, |bp| {
                for jp in b0..b1 {
                    pack_weights(&p, jp * NR, bp);
                    for ip in a_panels.clone() {
                        let apanel = &ap[ip * MR * pairs..(ip + 1) * MR * pairs];
                        // SAFETY: the CPU has AVX512-BF16 (checked by the caller); the panels
                        // hold `pairs` rows; this task alone writes these rows x columns of c.
                        unsafe { micro_kernel(&p, apanel, bp, pairs, ip * MR, jp * NR, c_ptr) };
                    }
                }
            });
        });
    });
}

/// Packs `a` as bf16 pairs in 12-row panels `[pair][row]`; rows past `m`, and the pad of an odd
/// `k`, stay zero.
fn pack_activations(p: &Product<bf16>, ap: &mut [u32], pairs: usize, parallel: bool) {
    let pack = |(ip, dst): (usize, &mut [u32])| {
        for r in 0..MR.min(p.m.saturating_sub(ip * MR)) {
            let row = &p.a[(ip * MR + r) * p.lda..][..p.k];
            for (q, two) in row.chunks(2).enumerate() {
                let high = two.get(1).map_or(0, |&x| bf16_bits(x));
                dst[q * MR + r] = bf16_bits(two[0]) | high << 16;
            }
        }
    };
    if parallel {
        ap.par_chunks_mut(MR * pairs).enumerate().for_each(pack);
    } else {
        ap.chunks_mut(MR * pairs).enumerate().for_each(pack);
    }
}

/// Packs weight rows `j0..j0 + 32` as `[pair][column]` u32 pairs; columns past `n` are zero.
fn pack_weights(p: &Product<bf16>, j0: usize, bp: &mut [u32]) {
    let cols = NR.min(p.n - j0);
    if cols < NR {
        bp.fill(0);
    }
    for j in 0..cols {
        let row = &p.b[(j0 + j) * p.ldb..][..p.k];
        for (q, two) in row.chunks(2).enumerate() {
            let high = two.get(1).map_or(0, |h| h.to_bits() as u32);
            bp[q * NR + j] = two[0].to_bits() as u32 | high << 16;
        }
    }
}

/// The 12 x 32 block of `c` at rows `i0..`, columns `j0..` (clipped to `m x n`).
///
/// # Safety
/// AVX512-BF16 present; `ap` holds `pairs x 12` and `bp` `pairs x 32` pairs; no other task writes
/// this block of `c`.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn micro_kernel(
    p: &Product<bf16>,
    ap: &[u32],
    bp: &[u32],
    pairs: usize,
    i0: usize,
    j0: usize,
    c: OutPtr,
) {
    assert!(ap.len() >= pairs * MR && bp.len() >= pairs * NR);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let (a, b) = (ap.as_ptr(), bp.as_ptr());
    for q in 0..pairs {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(q * NR) as *const _));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(q * NR + 16) as *const _));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(q * MR + r) as i32));
            acc_r[0] = _mm512_dpbf16_ps(acc_r[0], x, b0);
            acc_r[1] = _mm512_dpbf16_ps(acc_r[1], x, b1);
        }
    }
    let (rows, cols) = (MR.min(p.m - i0), NR.min(p.n - j0));
    for (r, acc_r) in acc.iter().enumerate().take(rows) {
        let mut line = [0f32; NR];
        _mm512_storeu_ps(line.as_mut_ptr(), acc_r[0]);
        _mm512_storeu_ps(line.as_mut_ptr().add(16), acc_r[1]);
        let dst = c.get().add((i0 + r) * p.ldc + j0);
        for (j, &v) in line.iter().enumerate().take(cols) {
            let v = v + p.bias.map_or(0.0, |bias| bias[j0 + j]);
            *dst.add(j) = if p.accumulate { *dst.add(j) + v } else { v };
        }
    }
}
