//! Causal attention with bf16 products on AMX tiles: `Q · Kᵀ` and `P · V` take bf16 operands and
//! accumulate in f32; the mask, the online softmax, its rescaling and the output stay f32.
//!
//! The same flash-style plan as the f32 path (one task = one kv head x a tile of queries, its rows
//! the (query, head) pairs of the group; key tiles above the diagonal or before the window are
//! skipped), with tiles of 64 keys. Per call, the keys of each kv head are packed as B tiles of
//! 16 keys x 16 pairs of `head_dim` (`[key group][pair][key]`) and the values as B tiles of 16
//! pairs of keys x 16 columns (`[key block of 32][column group][pair][column]`). Per task, the
//! queries (scaled) are rounded to bf16 row-major, so an A tile is 16 rows x 32 of `head_dim`; per
//! key tile and 16-row group, tmm0-3 accumulate the 16 x 64 scores, the softmax turns them into
//! bf16 probabilities (an A tile is 16 rows x 32 keys), and tmm0-3 accumulate `P · V` 64 columns
//! at a time, added to the f32 accumulator after its rescaling.

use super::softmax::exp512_nonpositive;
use super::{first_key, AttentionShape};
use crate::backend::cpu::amx::{store_accumulators, zero_accumulators, TileSession, TILE, TK};
use crate::backend::cpu::bf16::{bf16_bits, with_zeroed};
use crate::backend::cpu::out_ptr::OutPtr;
use rayon::prelude::*;
use std::arch::asm;

/// Keys per score tile (four C tiles of 16 keys).
const BK: usize = 4 * TILE;
/// Rows (query x head pairs) per task, before rounding to whole queries: a key tile is reused
/// from L1 by all of them (64 -> 256: SmolLM2's bf16 attention about 10 % faster).
const ROWS_TARGET: usize = 256;
/// Row groups of 16 that each stage (scores, softmax, P·V, rescale) runs over before the next.
const BATCH: usize = 4;

/// True when the AMX attention covers this shape: head widths that are multiples of 64 (whole
/// groups of four 16-column tiles), and enough query rows to fill a tile.
pub(super) fn supports(s: &AttentionShape) -> bool {
    s.head_dim.is_multiple_of(BK) && s.n_queries * (s.n_heads / s.n_kv_heads) >= TILE
}

/// Causal attention on AMX tiles; the caller checked the shapes, [`supports`] and that the tiles
/// are available.
pub(super) fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    s: &AttentionShape,
    parallel: bool,
) {
    let d = s.head_dim;
    let group = s.n_heads / s.n_kv_heads;
    let keys = s.n_keys.next_multiple_of(BK);
    let (kg_len, vb_len) = (keys * d / 2, keys * d / 2);
    with_zeroed(&K_BUF, s.n_kv_heads * kg_len, |kpack| {
        with_zeroed(&V_BUF, s.n_kv_heads * vb_len, |vpack| {
            pack_keys_values(k, v, s, kpack, vpack, parallel);
            let threads = if parallel {
                rayon::current_num_threads()
            } else {
                1
            };
            let mut bq = (ROWS_TARGET / group).max(1);
            while bq > 1 && s.n_kv_heads * s.n_queries.div_ceil(bq) < 4 * threads {
                bq = bq.div_ceil(2);
            }
            let q_tiles = s.n_queries.div_ceil(bq);
            let out = OutPtr(out.as_mut_ptr());
            let task = |t: usize| {
                // Later query tiles see more keys: hand them out first.
                let (g, qt) = (t % s.n_kv_heads, q_tiles - 1 - t / s.n_kv_heads);
                let i0 = qt * bq;
                let task = Task {
                    q,
                    kpack: &kpack[g * kg_len..(g + 1) * kg_len],
                    vpack: &vpack[g * vb_len..(g + 1) * vb_len],
                    out,
                    s,
                    g,
                    i0,
                    i1: (i0 + bq).min(s.n_queries),
                };
                task.run();
            };
            let tasks = s.n_kv_heads * q_tiles;
            if parallel && tasks > 1 {
                (0..tasks).into_par_iter().with_max_len(1).for_each(task);
            } else {
                (0..tasks).for_each(task);
            }
        })
    });
}

std::thread_local! {
    static K_BUF: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    static V_BUF: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    static Q_BUF: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
    static F_BUF: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Packs every kv head's keys (`[key group of 16][pair of head_dim][key]`) and values (`[key block
/// of 32][column group of 16][pair of keys][column]`) as bf16 pairs; keys past `n_keys` stay zero.
fn pack_keys_values(
    k: &[f32],
    v: &[f32],
    s: &AttentionShape,
    kpack: &mut [u32],
    vpack: &mut [u32],
    parallel: bool,
) {
    let d = s.head_dim;
    let stride = s.n_kv_heads * d;
    let key_groups = s.n_keys.div_ceil(BK) * (BK / TILE);
    let pack_k = |(idx, dst): (usize, &mut [u32])| {
        let (g, kgroup) = (idx / key_groups, idx % key_groups);
        for key in 0..TILE.min(s.n_keys.saturating_sub(kgroup * TILE)) {
            let src = &k[(kgroup * TILE + key) * stride + g * d..][..d];
            for (pair, two) in src.chunks_exact(2).enumerate() {
                dst[pair * TILE + key] = bf16_bits(two[0]) | bf16_bits(two[1]) << 16;
            }
        }
    };
    // Value block of 32 keys: (d / 16) column groups of 16 pairs x 16 columns.
    let value_blocks = key_groups / 2;
    let pack_v = |(idx, dst): (usize, &mut [u32])| {
        let (g, kb) = (idx / value_blocks, idx % value_blocks);
        for pair in 0..TILE {
            let key = kb * TK + 2 * pair;
            let row = |j: usize| (j < s.n_keys).then(|| &v[j * stride + g * d..][..d]);
            let (Some(lo), hi) = (row(key), row(key + 1)) else {
                break;
            };
            for col in 0..d {
                let high = hi.map_or(0, |h| bf16_bits(h[col]));
                dst[(col / TILE * TILE + pair) * TILE + col % TILE] =
                    bf16_bits(lo[col]) | high << 16;
            }
        }
    };
    let (k_chunk, v_chunk) = (TILE * d / 2, TK * d / 2);
    if parallel {
        kpack.par_chunks_mut(k_chunk).enumerate().for_each(pack_k);
        vpack.par_chunks_mut(v_chunk).enumerate().for_each(pack_v);
    } else {
        kpack.chunks_mut(k_chunk).enumerate().for_each(pack_k);
        vpack.chunks_mut(v_chunk).enumerate().for_each(pack_v);
    }
}

/// One task: queries `i0..i1` of every head of kv head `g`'s group.
struct Task<'a> {
    q: &'a [f32],
    kpack: &'a [u32],
    vpack: &'a [u32],
    out: OutPtr,
    s: &'a AttentionShape,
    g: usize,
    i0: usize,
    i1: usize,
}

impl Task<'_> {
    fn run(&self) {
        let s = self.s;
        let d = s.head_dim;
        let group = s.n_heads / s.n_kv_heads;
        let rows = (self.i1 - self.i0) * group;
        let rpad = rows.next_multiple_of(TILE);
        // f32 scratch: accumulator [rpad x d], then per batch of row groups the scores
        // [16 x BK] and P·V [16 x d] of each group; each row's max and sum.
        let f_len = rpad * d + BATCH * TILE * (BK + d) + 2 * rpad;
        // bf16 scratch: scaled queries [rpad x d], probabilities [16 x BK] per group of a batch.
        with_zeroed(&Q_BUF, rpad * d + BATCH * TILE * BK, |bf| {
            with_zeroed(&F_BUF, f_len, |f| {
                let (qb, pb) = bf.split_at_mut(rpad * d);
                let (acc, rest) = f.split_at_mut(rpad * d);
                let (scores, rest) = rest.split_at_mut(BATCH * TILE * BK);
                let (pv, rest) = rest.split_at_mut(BATCH * TILE * d);
                let (row_max, row_sum) = rest.split_at_mut(rpad);
                row_max.fill(f32::NEG_INFINITY);
                for r in 0..rows {
                    let src = &self.q[self.q_offset(r)..][..d];
                    for (dst, &x) in qb[r * d..(r + 1) * d].iter_mut().zip(src) {
                        *dst = bf16_bits(x * s.scale) as u16;
                    }
                }
                let _tiles = TileSession::start();
                let offset = s.n_keys - s.n_queries;
                let j_lo = first_key(offset + self.i0, s.window) / BK * BK;
                let j_hi = offset + self.i1;
                let groups = rpad / TILE;
                for j0 in (j_lo..j_hi).step_by(BK) {
                    // Each stage runs over a batch of row groups, so that the tile products of
                    // one group need not wait for the softmax of the previous one.
                    for g0 in (0..groups).step_by(BATCH) {
                        let batch = (groups - g0).min(BATCH);
                        for i in 0..batch {
                            let r0 = (g0 + i) * TILE;
                            // SAFETY: tiles configured; qb holds rpad x d, kpack the keys of
                            // j0..j0+BK; scores holds BATCH x 16 x BK.
                            unsafe { self.scores(&qb[r0 * d..], j0, &mut scores[i * TILE * BK..]) };
                        }
                        let mut alpha = [[1.0f32; TILE]; BATCH];
                        let mut live = [false; BATCH];
                        for i in 0..batch {
                            let r0 = (g0 + i) * TILE;
                            let tile = i * TILE * BK..(i + 1) * TILE * BK;
                            live[i] = self.softmax(
                                r0,
                                rows,
                                j0,
                                &scores[tile.clone()],
                                &mut pb[tile],
                                &mut row_max[r0..],
                                &mut row_sum[r0..],
                                &mut alpha[i],
                            );
                        }
                        for i in (0..batch).filter(|&i| live[i]) {
                            // SAFETY: tiles configured; pb holds BATCH x 16 x BK, pv BATCH x 16 x d,
                            // vpack the values of j0..j0+BK.
                            unsafe {
                                self.values(&pb[i * TILE * BK..], j0, &mut pv[i * TILE * d..])
                            };
                        }
                        for i in (0..batch).filter(|&i| live[i]) {
                            let r0 = (g0 + i) * TILE;
                            // SAFETY: AMX CPUs have AVX-512F (checked by `available`).
                            unsafe {
                                rescale_add(
                                    &mut acc[r0 * d..(r0 + TILE) * d],
                                    &pv[i * TILE * d..(i + 1) * TILE * d],
                                    &alpha[i],
                                )
                            };
                        }
                    }
                }
                for r in 0..rows {
                    let inv = 1.0 / row_sum[r];
                    let base = self.q_offset(r);
                    for (c, &x) in acc[r * d..(r + 1) * d].iter().enumerate() {
                        // SAFETY: base + c < n_queries * n_heads * d <= out.len() (checked by the
                        // caller); the row belongs to this task only.
                        unsafe { *self.out.get().add(base + c) = x * inv };
                    }
                }
            })
        });
    }

    /// Offset of row `r` = (query, head of the group) in `q` and `out`.
    fn q_offset(&self, r: usize) -> usize {
        let s = self.s;
        let group = s.n_heads / s.n_kv_heads;
        (self.i0 + r / group) * s.n_heads * s.head_dim + (self.g * group + r % group) * s.head_dim
    }

    /// `scores[16 x BK]` = the 16 query rows at `qb` times the keys `j0..j0 + BK`.
    ///
    /// # Safety
    /// Tiles configured; `qb` spans 16 rows of `head_dim`; the keys lie inside `kpack`.
    unsafe fn scores(&self, qb: &[u16], j0: usize, scores: &mut [f32]) {
        let d = self.s.head_dim;
        let pairs = d / 2;
        assert!(qb.len() >= TILE * d && scores.len() >= TILE * BK);
        assert!((j0 / TILE + 4) * TILE * pairs <= self.kpack.len());
        let k = |kgroup: usize, block: usize| {
            self.kpack
                .as_ptr()
                .add((j0 / TILE + kgroup) * TILE * pairs + block * TILE * TILE)
        };
        zero_accumulators();
        for block in 0..d / TK {
            asm!(
                "tileloadd tmm4, [{q} + {qs}*1]",
                "tileloadd tmm5, [{k0} + {ks}*1]",
                "tdpbf16ps tmm0, tmm4, tmm5",
                "tileloadd tmm6, [{k1} + {ks}*1]",
                "tdpbf16ps tmm1, tmm4, tmm6",
                "tileloadd tmm7, [{k2} + {ks}*1]",
                "tdpbf16ps tmm2, tmm4, tmm7",
                "tileloadd tmm5, [{k3} + {ks}*1]",
                "tdpbf16ps tmm3, tmm4, tmm5",
                q = in(reg) qb.as_ptr().add(block * TK),
                qs = in(reg) 2 * d,
                k0 = in(reg) k(0, block),
                k1 = in(reg) k(1, block),
                k2 = in(reg) k(2, block),
                k3 = in(reg) k(3, block),
                ks = in(reg) 4 * TILE,
                options(nostack, readonly)
            );
        }
        let base = scores.as_mut_ptr();
        store_accumulators(std::array::from_fn(|t| base.add(t * TILE)), 4 * BK);
    }

    /// Masks and soft-maxes the scores of rows `r0..r0 + 16` (of `rows` real ones) for the keys
    /// `j0..`, setting each row's accumulator rescale factor in `alpha`; writes the probabilities
    /// to `pb` as bf16 (zero where masked). Returns false when no row sees any of these keys.
    #[allow(clippy::too_many_arguments)]
    fn softmax(
        &self,
        r0: usize,
        rows: usize,
        j0: usize,
        scores: &[f32],
        pb: &mut [u16],
        row_max: &mut [f32],
        row_sum: &mut [f32],
        alpha: &mut [f32; TILE],
    ) -> bool {
        let s = self.s;
        let group = s.n_heads / s.n_kv_heads;
        let offset = s.n_keys - s.n_queries;
        let mut live = false;
        for rr in 0..TILE {
            let r = r0 + rr;
            let prow = &mut pb[rr * BK..(rr + 1) * BK];
            let range = (r < rows).then(|| {
                let pos = offset + self.i0 + r / group;
                let a = first_key(pos, s.window).max(j0);
                let b = (pos + 1).min(j0 + BK).min(s.n_keys);
                (a, b)
            });
            let Some((a, b)) = range.filter(|(a, b)| a < b) else {
                prow.fill(0);
                continue;
            };
            live = true;
            let srow = &scores[rr * BK..(rr + 1) * BK];
            let m_old = row_max[rr];
            // SAFETY: AMX CPUs have AVX-512F/BW/VL and AVX512-BF16 (checked by `available`).
            let (m_new, sum) = unsafe { softmax_row_bf16(srow, a - j0, b - j0, m_old, prow) };
            alpha[rr] = if m_new == m_old {
                1.0
            } else {
                (m_old - m_new).exp()
            };
            row_max[rr] = m_new;
            row_sum[rr] = row_sum[rr] * alpha[rr] + sum;
        }
        live
    }

    /// `pv[16 x d]` = the probabilities `pb[16 x BK]` times the values of keys `j0..j0 + BK`.
    ///
    /// # Safety
    /// Tiles configured; the values lie inside `vpack`.
    unsafe fn values(&self, pb: &[u16], j0: usize, pv: &mut [f32]) {
        let d = self.s.head_dim;
        let block_len = TK * d / 2;
        assert!(pb.len() >= TILE * BK && pv.len() >= TILE * d);
        assert!((j0 / TK + 2) * block_len <= self.vpack.len());
        for cols in (0..d).step_by(BK) {
            let v = |kb: usize, cg: usize| {
                self.vpack
                    .as_ptr()
                    .add((j0 / TK + kb) * block_len + ((cols / TILE) + cg) * TILE * TILE)
            };
            zero_accumulators();
            for kb in 0..BK / TK {
                asm!(
                    "tileloadd tmm4, [{p} + {ps}*1]",
                    "tileloadd tmm5, [{v0} + {vs}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm5",
                    "tileloadd tmm6, [{v1} + {vs}*1]",
                    "tdpbf16ps tmm1, tmm4, tmm6",
                    "tileloadd tmm7, [{v2} + {vs}*1]",
                    "tdpbf16ps tmm2, tmm4, tmm7",
                    "tileloadd tmm5, [{v3} + {vs}*1]",
                    "tdpbf16ps tmm3, tmm4, tmm5",
                    p = in(reg) pb.as_ptr().add(kb * TK),
                    ps = in(reg) 2 * BK,
                    v0 = in(reg) v(kb, 0),
                    v1 = in(reg) v(kb, 1),
                    v2 = in(reg) v(kb, 2),
                    v3 = in(reg) v(kb, 3),
                    vs = in(reg) 4 * TILE,
                    options(nostack, readonly)
                );
            }
            let base = pv.as_mut_ptr().add(cols);
            store_accumulators(std::array::from_fn(|t| base.add(t * TILE)), 4 * d);
        }
    }
}

/// `acc = acc * alpha + pv`, row by row (the online-softmax rescale of 16 rows of `d` columns).
///
/// # Safety
/// The CPU has AVX-512F; `d` (the row length, `acc.len() / 16`) is a multiple of 16.
#[target_feature(enable = "avx512f")]
unsafe fn rescale_add(acc: &mut [f32], pv: &[f32], alpha: &[f32; TILE]) {
    use std::arch::x86_64::*;
    let d = acc.len() / TILE;
    assert!(d.is_multiple_of(16) && pv.len() == acc.len());
    for (r, &al) in alpha.iter().enumerate() {
        let a = _mm512_set1_ps(al);
        for c in (r * d..(r + 1) * d).step_by(16) {
            let v = _mm512_loadu_ps(acc.as_ptr().add(c));
            let x = _mm512_loadu_ps(pv.as_ptr().add(c));
            _mm512_storeu_ps(acc.as_mut_ptr().add(c), _mm512_fmadd_ps(v, a, x));
        }
    }
}

/// One row's online-softmax step, fused with the rounding of its probabilities: over the visible
/// scores `srow[a..b]` (of [`BK`]), `m_new = max(m_old, max)`, `prow` = bf16 of `exp(score -
/// m_new)` there and 0 elsewhere; returns `(m_new, Σ exp)` (the f32 values, before rounding).
/// The exponential is [`exp512_nonpositive`].
///
/// # Safety
/// The CPU has AVX-512F/BW/VL and AVX512-BF16; `a < b <= BK`; `srow` and `prow` hold [`BK`] values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn softmax_row_bf16(
    srow: &[f32],
    a: usize,
    b: usize,
    m_old: f32,
    prow: &mut [u16],
) -> (f32, f32) {
    use std::arch::x86_64::*;
    assert!(a < b && b <= BK && srow.len() >= BK && prow.len() >= BK);
    let visible = |c0: usize| -> __mmask16 {
        let (lo, hi) = (a.saturating_sub(c0).min(16), b.saturating_sub(c0).min(16));
        ((1u32 << hi) - (1u32 << lo)) as u16
    };
    let mut vmax = _mm512_set1_ps(m_old);
    for c0 in (0..BK).step_by(16) {
        let x = _mm512_loadu_ps(srow.as_ptr().add(c0));
        vmax = _mm512_mask_max_ps(vmax, visible(c0), vmax, x);
    }
    let m_new = _mm512_reduce_max_ps(vmax);
    let vm = _mm512_set1_ps(m_new);
    let mut vsum = _mm512_setzero_ps();
    for c0 in (0..BK).step_by(16) {
        let x = _mm512_sub_ps(_mm512_loadu_ps(srow.as_ptr().add(c0)), vm);
        let e = _mm512_maskz_mov_ps(visible(c0), exp512_nonpositive(x));
        vsum = _mm512_add_ps(vsum, e);
        let bits = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(e));
        _mm256_storeu_si256(prow.as_mut_ptr().add(c0) as *mut _, bits);
    }
    (m_new, _mm512_reduce_add_ps(vsum))
}
