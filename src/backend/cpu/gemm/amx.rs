//! bf16 products on Intel AMX tiles (`TDPBF16PS`: bf16 operands, f32 accumulation).
//!
//! The weights are the tiles' A operand and are read where they lie: a tile is 16 weight rows of
//! 32 consecutive `k` (64 bytes each), loaded with the row length as stride, so bf16 weights are
//! never copied or repacked (only a strip past `n`'s last multiple of 32, or a `k` tail, is copied
//! into a zero-padded buffer). The activations, rounded to bf16 (nearest even), are packed once per
//! product into the B operand's pair-interleaved layout (a tile is 16 k-pairs x 16 rows). Each C
//! tile accumulates 16 outputs x 16 activation rows over all of `k` and is then written into `c`
//! transposed, with the bias. Register blocking: 2 x 2 C tiles (tmm0-3) from two weight tiles
//! (tmm4-5) and two activation tiles (tmm6-7), i.e. 32 weight rows x 32 activation rows.

use super::{for_each_task, split_range, Product};
use crate::backend::cpu::amx::{store_accumulators, zero_accumulators, TileSession, TILE, TK};
use crate::backend::cpu::bf16::{pack_pairs16, transpose16, with_zeroed};
use crate::backend::cpu::out_ptr::OutPtr;
use half::bf16;
use rayon::prelude::*;
use std::arch::asm;
use std::cell::RefCell;

/// Weight rows per register block (two A tiles).
const STRIP: usize = 2 * TILE;
/// Activation rows per register block (two B tiles).
const MPAIR: usize = 2 * TILE;
/// Bytes of packed activations a task's m-block may span (kept in L2 while the strips stream).
const M_BLOCK_BYTES: usize = 1 << 20;

thread_local! {
    /// The packed activations of the product this thread is running.
    static X_BUF: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// A zero-padded copy of a weight strip (the `n` tail) or of its `k` tail.
    static W_PAD: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// `c (+)= a · bᵀ (+ bias)` on AMX tiles, `a` rounded to bf16. The caller checked the shapes and
/// that [`available`](crate::backend::cpu::amx::available) is true.
pub(super) fn gemm(p: Product<bf16>, c: &mut [f32], parallel: bool) {
    let kp = p.k.next_multiple_of(TK);
    let pairs = kp / 2;
    let groups = p.m.next_multiple_of(MPAIR) / TILE;
    with_zeroed(&X_BUF, groups * TILE * pairs, |xp| {
        pack_activations(&p, xp, pairs, parallel);
        compute(&p, xp, c, parallel);
    });
}

/// Packs `a` as bf16 k-pairs: group `g` of 16 rows is `[pair q][row]`, so the 16 x 16 block of
/// pairs `16 kb..16 kb + 16` is the B tile of k-block `kb`. Rows past `m` and pairs past `k` stay 0.
fn pack_activations(p: &Product<bf16>, xp: &mut [u32], pairs: usize, parallel: bool) {
    let pack_group = |(g, dst): (usize, &mut [u32])| {
        let rows: [Option<&[f32]>; TILE] = std::array::from_fn(|r| {
            let row = g * TILE + r;
            (row < p.m).then(|| &p.a[row * p.lda..row * p.lda + p.k])
        });
        // SAFETY: AMX CPUs have AVX-512F and AVX512-BF16 (checked by `available`); each row holds
        // k values and `dst` 16 x pairs, pairs a multiple of 16 covering k.
        unsafe { pack_pairs16(&rows, p.k, pairs, dst) };
    };
    if parallel {
        xp.par_chunks_mut(pairs * TILE)
            .enumerate()
            .for_each(pack_group);
    } else {
        xp.chunks_mut(pairs * TILE).enumerate().for_each(pack_group);
    }
}

/// Runs the register blocks over all strips of weights and blocks of activation rows.
fn compute(p: &Product<bf16>, xp: &[u32], c: &mut [f32], parallel: bool) {
    let kp = p.k.next_multiple_of(TK);
    let strips = p.n.div_ceil(STRIP);
    let m_padded = p.m.next_multiple_of(MPAIR);
    let m_block = (M_BLOCK_BYTES / (2 * kp))
        .next_multiple_of(MPAIR)
        .min(m_padded);
    let m_blocks = m_padded.div_ceil(m_block);
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let strip_chunks = (4 * threads).div_ceil(m_blocks).clamp(1, strips);
    let c_ptr = OutPtr(c.as_mut_ptr());
    for_each_task(parallel, m_blocks * strip_chunks, |t| {
        let (mb, chunk) = (t / strip_chunks, t % strip_chunks);
        let rows = mb * m_block..((mb + 1) * m_block).min(m_padded);
        let (s0, s1) = split_range(strips, strip_chunks, chunk);
        let _tiles = TileSession::start();
        for s in s0..s1 {
            // SAFETY: tiles configured (the session); every task writes only its own rows x
            // strips of `c` (checked by gemm_nt).
            unsafe { run_strip(p, xp, c_ptr, s, rows.clone()) };
        }
    });
}

/// Weight rows `32 s..32 s + 32` against the activation rows `rows`.
///
/// # Safety
/// Tiles configured by a [`TileSession`]; no other task writes these rows and columns of `c`.
unsafe fn run_strip(
    p: &Product<bf16>,
    xp: &[u32],
    c: OutPtr,
    s: usize,
    rows: std::ops::Range<usize>,
) {
    let kp = p.k.next_multiple_of(TK);
    let j0 = s * STRIP;
    let w_bits = p.b.as_ptr() as *const u16;
    if j0 + STRIP <= p.n {
        // Full k-blocks straight from the weights; a k tail from a zero-padded 32 x 32 copy.
        let k_full = p.k / TK;
        let ldb = p.ldb;
        let tail_len = if !p.k.is_multiple_of(TK) {
            STRIP * TK
        } else {
            0
        };
        with_zeroed(&W_PAD, tail_len, |tail| {
            for r in 0..tail_len / TK {
                let src = std::slice::from_raw_parts(w_bits.add((j0 + r) * ldb), p.k);
                tail[r * TK..r * TK + p.k % TK].copy_from_slice(&src[k_full * TK..]);
            }
            let w = w_bits.add(j0 * ldb);
            for m0 in rows.clone().step_by(MPAIR) {
                register_block(p, xp, c, j0, m0, w, 2 * ldb, k_full, tail);
            }
        });
    } else {
        // The last, partial strip: all of it, zero-padded to 32 rows x kp.
        with_zeroed(&W_PAD, STRIP * kp, |pad| {
            for r in 0..p.n - j0 {
                let src = std::slice::from_raw_parts(w_bits.add((j0 + r) * p.ldb), p.k);
                pad[r * kp..r * kp + p.k].copy_from_slice(src);
            }
            for m0 in rows.clone().step_by(MPAIR) {
                register_block(p, xp, c, j0, m0, pad.as_ptr(), 2 * kp, kp / TK, &[]);
            }
        });
    }
}

/// One 32 x 32 block of outputs: weight rows `j0..j0 + 32` (at `w`, `w_stride` bytes apart, with
/// `k_full` full k-blocks, then `tail` as a 32 x 32 block if non-empty) times activation rows
/// `m0..m0 + 32`, accumulated in tmm0-3 and written into `c`.
///
/// # Safety
/// Tiles configured by a [`TileSession`]; `w` spans 32 rows of `k_full` blocks at that stride; no other
/// task writes these outputs.
#[allow(clippy::too_many_arguments)]
unsafe fn register_block(
    p: &Product<bf16>,
    xp: &[u32],
    c: OutPtr,
    j0: usize,
    m0: usize,
    w: *const u16,
    w_stride: usize,
    k_full: usize,
    tail: &[u16],
) {
    let pairs = p.k.next_multiple_of(TK) / 2;
    let x0 = xp.as_ptr().add(m0 * pairs);
    // Every activation tile read lies inside this group pair's packed rows.
    let k_blocks = k_full + usize::from(!tail.is_empty());
    assert!(k_blocks * TK / 2 <= pairs && (m0 + MPAIR) * pairs <= xp.len());
    let x1 = x0.add(TILE * pairs);
    let w1 = w.add(TILE * w_stride / 2);
    zero_accumulators();
    for kb in 0..k_full {
        dot_step(
            w.add(kb * TK),
            w1.add(kb * TK),
            w_stride,
            x0.add(kb * TK * 8),
            x1.add(kb * TK * 8),
        );
    }
    if !tail.is_empty() {
        let t = tail.as_ptr();
        dot_step(
            t,
            t.add(TILE * TK),
            2 * TK,
            x0.add(k_full * TK * 8),
            x1.add(k_full * TK * 8),
        );
    }
    let mut out = [[0f32; TILE * TILE]; 4];
    store_accumulators(out.each_mut().map(|t| t.as_mut_ptr()), 4 * TILE);
    write_block(p, c, j0, m0, &out);
}

/// Adds the four C tiles of a register block (tile `2 wi + xi`: outputs `j0 + 16 wi + r` of the
/// activation rows `m0 + 16 xi + col` at `[r][col]`) into `c`, transposed, with the bias.
///
/// # Safety
/// AVX-512F present; no other task writes these outputs.
#[target_feature(enable = "avx512f")]
unsafe fn write_block(
    p: &Product<bf16>,
    c: OutPtr,
    j0: usize,
    m0: usize,
    out: &[[f32; TILE * TILE]; 4],
) {
    use std::arch::x86_64::*;
    for (t, tile) in out.iter().enumerate() {
        let (wi, xi) = (t / 2, t % 2);
        let j = j0 + wi * TILE;
        if j >= p.n {
            continue;
        }
        let n_here = (p.n - j).min(TILE);
        let mask: __mmask16 = if n_here == TILE {
            !0
        } else {
            (1u16 << n_here) - 1
        };
        let mut rows: [__m512i; TILE] =
            std::array::from_fn(|r| _mm512_loadu_si512(tile.as_ptr().add(r * TILE) as *const _));
        transpose16(&mut rows);
        let bias = p
            .bias
            .map(|b| _mm512_maskz_loadu_ps(mask, b.as_ptr().add(j)));
        for (col, row) in rows.iter().enumerate() {
            let m = m0 + xi * TILE + col;
            if m >= p.m {
                break;
            }
            let mut v = _mm512_castsi512_ps(*row);
            if let Some(b) = bias {
                v = _mm512_add_ps(v, b);
            }
            let dst = c.get().add(m * p.ldc + j);
            if p.accumulate {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, dst));
            }
            _mm512_mask_storeu_ps(dst, mask, v);
        }
    }
}

/// One k-block of a register block: loads two weight tiles and two activation tiles, and adds
/// their four products into tmm0-3.
///
/// # Safety
/// Tiles configured by a [`TileSession`]; each pointer spans a full tile at its stride.
#[inline(always)]
unsafe fn dot_step(
    w0: *const u16,
    w1: *const u16,
    w_stride: usize,
    x0: *const u32,
    x1: *const u32,
) {
    asm!(
        "tileloadd tmm4, [{w0} + {ws}*1]",
        "tileloadd tmm6, [{x0} + {xs}*1]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tileloadd tmm7, [{x1} + {xs}*1]",
        "tdpbf16ps tmm1, tmm4, tmm7",
        "tileloadd tmm5, [{w1} + {ws}*1]",
        "tdpbf16ps tmm2, tmm5, tmm6",
        "tdpbf16ps tmm3, tmm5, tmm7",
        w0 = in(reg) w0,
        w1 = in(reg) w1,
        x0 = in(reg) x0,
        x1 = in(reg) x1,
        ws = in(reg) w_stride,
        xs = in(reg) 4 * TILE,
        options(nostack, readonly)
    );
}
