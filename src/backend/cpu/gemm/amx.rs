//! bf16 products on Intel AMX tiles (`TDPBF16PS`: bf16 operands, f32 accumulation).
//!
//! The activations are the tiles' A operand: rounded to bf16 (nearest even) into rows of `kp`
//! (`k` padded to 32) on 64-byte boundaries, so a tile is 16 rows of 32 consecutive `k`. The
//! weights are the B operand in the pair-interleaved layout `TDPBF16PS` reads (a tile is 16
//! k-pairs x 16 outputs): a block of at most [`W_BLOCK_BYTES`] of them is repacked per product,
//! shared by all threads, and stays in L2 while every activation row meets it. Each C tile holds
//! 16 activation rows x 16 outputs, already in `c`'s orientation, and is written with the bias.
//!
//! Register blocking: 2 x 2 C tiles (tmm0-3) from two activation tiles (tmm4-5) and two weight tiles
//! (tmm6-7), i.e. 32 activation rows x 32 outputs. A task keeps its 32 activation rows in L1 and
//! runs them against every weight strip of the block, which stream from L2. Every tile row lies on
//! a whole cache line: a row straddling two lines loads about three times slower.

use super::{for_each_task, split_range, Product};
use crate::backend::cpu::amx::{store_accumulators, zero_accumulators, TileSession, TILE, TK};
use crate::backend::cpu::bf16::{round_to_bf16, transpose16, with_scratch};
use crate::backend::cpu::out_ptr::OutPtr;
use half::bf16;
use rayon::prelude::*;
use std::arch::asm;
use std::cell::RefCell;

/// Outputs per register block (two B tiles).
const STRIP: usize = 2 * TILE;
/// Activation rows per register block (two A tiles).
const MPAIR: usize = 2 * TILE;
/// Bytes of repacked weights per block (shared by the threads, kept in L2).
const W_BLOCK_BYTES: usize = 512 << 10;

thread_local! {
    /// The activations of the product this thread is running, as bf16 rows of `kp`.
    static X_BUF: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
    /// A block of weights in the B tiles' pair-interleaved layout.
    static W_BUF: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// `c (+)= a · bᵀ (+ bias)` on AMX tiles, `a` rounded to bf16. The caller checked the shapes and
/// that [`available`](crate::backend::cpu::amx::available) is true.
pub(super) fn gemm(p: Product<bf16>, c: &mut [f32], parallel: bool) {
    let kp = p.k.next_multiple_of(TK);
    let m_padded = p.m.next_multiple_of(MPAIR);
    // Blocks of whole strips, of nearly equal width.
    let strips = p.n.div_ceil(STRIP);
    let strips_per_block = (W_BLOCK_BYTES / (STRIP * 2 * kp)).clamp(1, strips);
    let blocks = strips.div_ceil(strips_per_block);
    let c_ptr = OutPtr(c.as_mut_ptr());
    with_scratch(&X_BUF, m_padded * kp, |xa| {
        round_activations(&p, xa, kp, parallel);
        let xa: &[u16] = xa;
        for b in 0..blocks {
            let (s0, s1) = split_range(strips, blocks, b);
            with_scratch(&W_BUF, (s1 - s0) * STRIP * kp / 2, |wb| {
                pack_weights(&p, s0, wb, kp, parallel);
                // SAFETY: c's size was checked by gemm_nt; the tasks write disjoint blocks of
                // rows x outputs.
                unsafe { compute(&p, xa, wb, s0..s1, c_ptr, parallel) };
            });
        }
    });
}

/// Rounds the rows of `a` to bf16 into `xa`, rows `kp` apart; rows past `m` and columns past `k`
/// are set to 0.
fn round_activations(p: &Product<bf16>, xa: &mut [u16], kp: usize, parallel: bool) {
    let round_row = |(i, dst): (usize, &mut [u16])| {
        if i < p.m {
            // SAFETY: AMX CPUs have AVX-512F/BW/VL and AVX512-BF16 (checked by `available`);
            // `dst` holds kp >= k elements.
            unsafe { round_to_bf16(&p.a[i * p.lda..i * p.lda + p.k], dst) };
            dst[p.k..].fill(0);
        } else {
            dst.fill(0);
        }
    };
    if parallel {
        xa.par_chunks_mut(kp).enumerate().for_each(round_row);
    } else {
        xa.chunks_mut(kp).enumerate().for_each(round_row);
    }
}

/// Packs the weight strips `s0..` (32 outputs each) into `wb` (every element written): strip by strip, k-block by k-block,
/// two B tiles each; tile `t` holds `[pair q][output o]` = the pair `(2q, 2q + 1)` of k-block `kb`
/// of weight row `32 s + 16 t + o`. Rows past `n` and pairs past `k` are zero.
fn pack_weights(p: &Product<bf16>, s0: usize, wb: &mut [u32], kp: usize, parallel: bool) {
    let strip_len = STRIP * kp / 2;
    let pack_strip = |(i, dst): (usize, &mut [u32])| {
        let j0 = (s0 + i) * STRIP;
        for t in 0..2 {
            let rows: [Option<&[bf16]>; TILE] = std::array::from_fn(|o| {
                let row = j0 + t * TILE + o;
                (row < p.n).then(|| &p.b[row * p.ldb..row * p.ldb + p.k])
            });
            for kb in 0..kp / TK {
                let tile = &mut dst[(2 * kb + t) * TILE * TILE..][..TILE * TILE];
                // SAFETY: AMX CPUs have AVX-512F/BW (checked by `available`); the tile holds 256 pairs.
                unsafe { pack_pairs_transposed(&rows, p.k, kb * TK, tile) };
            }
        }
    };
    if parallel {
        wb.par_chunks_mut(strip_len)
            .enumerate()
            .for_each(pack_strip);
    } else {
        wb.chunks_mut(strip_len).enumerate().for_each(pack_strip);
    }
}

/// `tile[q * 16 + o]` = the bf16 pair `(k0 + 2q, k0 + 2q + 1)` of `rows[o]` (zero past `k` or for
/// a missing row).
///
/// # Safety
/// The CPU has AVX-512F/BW; every present row holds `k` values; `tile` holds 256 elements.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_pairs_transposed(
    rows: &[Option<&[bf16]>; TILE],
    k: usize,
    k0: usize,
    tile: &mut [u32],
) {
    use std::arch::x86_64::*;
    let len = k.saturating_sub(k0).min(TK);
    let mask: __mmask32 = (1u64 << len).wrapping_sub(1) as u32;
    let mut block: [__m512i; TILE] = std::array::from_fn(|o| match rows[o] {
        Some(row) if len > 0 => _mm512_maskz_loadu_epi16(mask, row.as_ptr().add(k0) as *const _),
        _ => _mm512_setzero_si512(),
    });
    transpose16(&mut block);
    for (q, v) in block.iter().enumerate() {
        _mm512_storeu_si512(tile.as_mut_ptr().add(q * TILE) as *mut _, *v);
    }
}

/// Runs every 32-row pair of activations against the weight strips `strips` (packed in `wb`).
///
/// # Safety
/// `c` holds the product's outputs (checked by gemm_nt); nothing else writes them meanwhile.
unsafe fn compute(
    p: &Product<bf16>,
    xa: &[u16],
    wb: &[u32],
    strips: std::ops::Range<usize>,
    c: OutPtr,
    parallel: bool,
) {
    let pairs = p.m.div_ceil(MPAIR);
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    // Enough tasks to balance the threads; split the strips only when the rows run short.
    let row_tasks = (4 * threads).min(pairs);
    let strip_tasks = (4 * threads).div_ceil(row_tasks).min(strips.len());
    for_each_task(parallel, row_tasks * strip_tasks, |t| {
        let (r0, r1) = split_range(pairs, row_tasks, t / strip_tasks);
        let (i0, i1) = split_range(strips.len(), strip_tasks, t % strip_tasks);
        let _tiles = TileSession::start();
        for pair in r0..r1 {
            for i in i0..i1 {
                // SAFETY: tiles configured (the session); this task alone writes these rows x
                // outputs of `c`.
                unsafe { register_block(p, xa, wb, c, pair * MPAIR, strips.start + i, i) };
            }
        }
    });
}

/// One 32 x 32 block of outputs: activation rows `m0..m0 + 32` times weight strip `s` (the `i`-th
/// of the packed block), over all of `k`, accumulated in tmm0-3 and written into `c`.
///
/// # Safety
/// Tiles configured by a [`TileSession`]; no other task writes these outputs.
unsafe fn register_block(
    p: &Product<bf16>,
    xa: &[u16],
    wb: &[u32],
    c: OutPtr,
    m0: usize,
    s: usize,
    i: usize,
) {
    let kp = p.k.next_multiple_of(TK);
    let strip_len = STRIP * kp / 2;
    // Every tile read lies inside the buffers.
    assert!((m0 + MPAIR) * kp <= xa.len() && (i + 1) * strip_len <= wb.len());
    let x0 = xa.as_ptr().add(m0 * kp);
    let x1 = x0.add(TILE * kp);
    let w = wb.as_ptr().add(i * strip_len);
    zero_accumulators();
    for kb in 0..kp / TK {
        let wk = w.add(2 * kb * TILE * TILE);
        dot_step(
            x0.add(kb * TK),
            x1.add(kb * TK),
            2 * kp,
            wk,
            wk.add(TILE * TILE),
        );
    }
    let j0 = s * STRIP;
    if p.bias.is_none() && !p.accumulate && m0 + MPAIR <= p.m && j0 + STRIP <= p.n {
        // A whole block with nothing to add: the tiles go straight into `c`.
        let at = |t: usize| c.get().add((m0 + t / 2 * TILE) * p.ldc + j0 + t % 2 * TILE);
        store_accumulators(std::array::from_fn(at), 4 * p.ldc);
        return;
    }
    let mut out = CTiles([[0f32; TILE * TILE]; 4]);
    store_accumulators(out.0.each_mut().map(|t| t.as_mut_ptr()), 4 * TILE);
    write_block(p, c, m0, j0, &out.0);
}

/// The four C tiles of a register block, on 64-byte boundaries (tile rows on whole cache lines).
#[repr(C, align(64))]
struct CTiles([[f32; TILE * TILE]; 4]);

/// Adds the four C tiles of a register block (tile `2 xi + wi`: activation row `m0 + 16 xi + r`,
/// output `j0 + 16 wi + col` at `[r][col]`) into `c`, with the bias.
///
/// # Safety
/// AVX-512F present; no other task writes these outputs.
#[target_feature(enable = "avx512f")]
unsafe fn write_block(
    p: &Product<bf16>,
    c: OutPtr,
    m0: usize,
    j0: usize,
    out: &[[f32; TILE * TILE]; 4],
) {
    use std::arch::x86_64::*;
    for (t, tile) in out.iter().enumerate() {
        let (xi, wi) = (t / 2, t % 2);
        let j = j0 + wi * TILE;
        if j >= p.n {
            continue;
        }
        let n_here = (p.n - j).min(TILE);
        let mask: __mmask16 = (1u32 << n_here).wrapping_sub(1) as u16;
        let bias = p
            .bias
            .map(|b| _mm512_maskz_loadu_ps(mask, b.as_ptr().add(j)));
        for r in 0..TILE {
            let m = m0 + xi * TILE + r;
            if m >= p.m {
                break;
            }
            let mut v = _mm512_load_ps(tile.as_ptr().add(r * TILE));
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

/// One k-block of a register block: loads two activation tiles and two weight tiles, and adds their
/// four products into tmm0-3 (tmm0/1: activation tile 0 with weight tiles 0/1; tmm2/3: tile 1).
///
/// # Safety
/// Tiles configured by a [`TileSession`]; each activation pointer spans 16 rows at `x_stride`
/// bytes, each weight pointer a 1 KiB tile.
#[inline(always)]
unsafe fn dot_step(
    x0: *const u16,
    x1: *const u16,
    x_stride: usize,
    w0: *const u32,
    w1: *const u32,
) {
    asm!(
        "tileloadd tmm4, [{x0} + {xs}*1]",
        "tileloadd tmm6, [{w0} + {ws}*1]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tileloadd tmm7, [{w1} + {ws}*1]",
        "tdpbf16ps tmm1, tmm4, tmm7",
        "tileloadd tmm5, [{x1} + {xs}*1]",
        "tdpbf16ps tmm2, tmm5, tmm6",
        "tdpbf16ps tmm3, tmm5, tmm7",
        x0 = in(reg) x0,
        x1 = in(reg) x1,
        w0 = in(reg) w0,
        w1 = in(reg) w1,
        xs = in(reg) x_stride,
        ws = in(reg) 4 * TILE,
        options(nostack, readonly)
    );
}
