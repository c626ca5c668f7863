//! Causal grouped-query attention, flash style, for the CPU backend.
//!
//! The keys are packed once per call into the GEMM micro-kernel's panel layout. Then one task
//! (parallel with rayon) handles one kv head and a tile of consecutive queries; its rows are the
//! (query, query head) pairs of that kv head's group, so every key and value it reads serves all
//! the heads of the group. For each tile of `BK` keys that is not entirely masked (tiles above the
//! diagonal or before the sliding window are skipped) it computes the score tile with the GEMM
//! micro-kernel (`Q · Kᵀ`, the query rows pre-scaled), applies the causal / sliding-window mask,
//! updates a running maximum and sum per row (online softmax, with a vectorised `exp`), rescales
//! the f32 output tile and accumulates `P · V` into it, again with the micro-kernel, reading `V` in
//! place. No `T x T` matrix is ever formed: a task holds one score tile of `rows x BK`.

use super::gemm::{self, Isa, MicroKernel, MR, NR};
use rayon::prelude::*;
use std::cell::RefCell;

/// Shape and masking of one causal attention call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    /// Number of query rows (the newest positions of the sequence).
    pub n_queries: usize,
    /// Number of key/value rows (positions `0..n_keys`); at least `n_queries`.
    pub n_keys: usize,
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads; divides `n_heads`.
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Factor applied to every `q · k` score (usually `1 / sqrt(head_dim)`).
    pub scale: f32,
    /// Sliding window: the query at position `p` sees keys `j` with `p - j < w` only.
    pub window: Option<usize>,
}

/// Keys per score tile (a multiple of the micro-kernel's NR).
const BK: usize = 128;
/// Rows (query x head pairs) per task, before rounding to whole queries.
const ROWS_TARGET: usize = 48;
/// Below this many multiply-adds in total the call runs on the calling thread only.
const PAR_MIN_WORK: usize = 1 << 18;

/// Causal grouped-query attention, flash-style (online softmax over key tiles, never a full T x T matrix).
pub fn causal_attention(q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], shape: &AttentionShape) {
    causal_attention_isa(gemm::detected_isa(), q, k, v, out, shape);
}

/// A raw pointer to the output that tasks writing disjoint rows x heads may share.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each task writes only the (query, head) rows of its own query tile and kv-head group,
// which no other task writes, and `out` outlives the parallel region.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Everything a task needs that is the same for all tasks of a call.
struct Problem<'a> {
    isa: Isa,
    ukr: MicroKernel,
    q: &'a [f32],
    /// Visible keys of every kv head (panels `panel_base..`), packed once per call: `[g][panel][depth][key]`.
    kpack: &'a [f32],
    v: &'a [f32],
    out: OutPtr,
    shape: AttentionShape,
    group: usize,
    /// Position of query 0.
    offset: usize,
    /// Index (in NR-key panels) of the first packed panel.
    panel_base: usize,
    /// Packed panels per kv head.
    k_panels: usize,
}

pub(crate) fn causal_attention_isa(isa: Isa, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], shape: &AttentionShape) {
    let s = *shape;
    assert!(
        s.n_kv_heads > 0 && s.n_heads.is_multiple_of(s.n_kv_heads),
        "n_heads must be a multiple of n_kv_heads"
    );
    assert!(
        s.n_keys >= s.n_queries,
        "more queries ({}) than keys ({})",
        s.n_queries,
        s.n_keys
    );
    assert!(s.window != Some(0), "a sliding window must be at least 1");
    let d = s.head_dim;
    assert!(q.len() >= s.n_queries * s.n_heads * d, "q too short");
    assert!(out.len() >= s.n_queries * s.n_heads * d, "out too short");
    assert!(k.len() >= s.n_keys * s.n_kv_heads * d, "k too short");
    assert!(v.len() >= s.n_keys * s.n_kv_heads * d, "v too short");
    if s.n_queries == 0 || d == 0 {
        return;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => attention_with::<{ gemm::MR512 }, { gemm::NR512 }>(isa, gemm::ukr_avx512, q, k, v, out, &s),
        _ => attention_with::<MR, NR>(isa, gemm::micro_kernel(isa), q, k, v, out, &s),
    }
}

// Thread-local buffer for the packed keys of one call (lent to the caller's thread).
thread_local! {
    static K_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The attention with an `MR_ x NR_` micro-kernel `ukr`.
fn attention_with<const MR_: usize, const NR_: usize>(
    isa: Isa,
    ukr: MicroKernel,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    s: &AttentionShape,
) {
    let d = s.head_dim;
    let group = s.n_heads / s.n_kv_heads;
    let visible = s.window.map_or(s.n_keys, |w| w.min(s.n_keys));
    let work = s.n_queries * visible * s.n_heads * d;
    let threads = if work >= PAR_MIN_WORK {
        rayon::current_num_threads()
    } else {
        1
    };
    let parallel = threads > 1;

    // Pack every key that some query can see once (all query tiles of a kv head share them): with
    // a sliding window, keys before the first query's window are skipped (decode with a long cache).
    let panel_base = first_key(s.n_keys - s.n_queries, s.window) / NR_;
    let k_panels = s.n_keys.div_ceil(NR_) - panel_base;
    let kv_stride = s.n_kv_heads * d;
    let pack_keys = |kpack: &mut [f32]| {
        let pack_one = |(idx, dst): (usize, &mut [f32])| {
            let (g, jp) = (idx / k_panels, idx % k_panels);
            let j0 = (panel_base + jp) * NR_;
            gemm::pack_panel::<NR_>(isa, k, kv_stride, j0, NR_.min(s.n_keys - j0), g * d, d, dst);
        };
        if parallel {
            kpack.par_chunks_mut(NR_ * d).enumerate().for_each(pack_one);
        } else {
            kpack.chunks_mut(NR_ * d).enumerate().for_each(pack_one);
        }
    };

    // Queries per tile: about ROWS_TARGET rows, fewer if needed to give each thread several tasks.
    let mut bq = (ROWS_TARGET / group).max(1);
    while bq > 1 && s.n_kv_heads * s.n_queries.div_ceil(bq) < 4 * threads {
        bq = bq.div_ceil(2);
    }
    let q_tiles = s.n_queries.div_ceil(bq);
    let tasks = s.n_kv_heads * q_tiles;
    let out = OutPtr(out.as_mut_ptr());

    let body = |kpack: &mut [f32]| {
        pack_keys(kpack);
        let p = Problem {
            isa,
            ukr,
            q,
            kpack,
            v,
            out,
            shape: *s,
            group,
            offset: s.n_keys - s.n_queries,
            panel_base,
            k_panels,
        };
        let run = |t: usize| {
            // Later query tiles see more keys: hand them out first.
            let (g, qt) = (t % s.n_kv_heads, q_tiles - 1 - t / s.n_kv_heads);
            let i0 = qt * bq;
            let i1 = (i0 + bq).min(s.n_queries);
            SCRATCH.with(|cell| match cell.try_borrow_mut() {
                Ok(mut scratch) => attend_tile::<MR_, NR_>(&p, g, i0, i1, &mut scratch),
                Err(_) => attend_tile::<MR_, NR_>(&p, g, i0, i1, &mut Scratch::default()),
            });
        };
        if parallel && tasks > 1 {
            (0..tasks).into_par_iter().with_max_len(1).for_each(run);
        } else {
            (0..tasks).for_each(run);
        }
    };
    let klen = s.n_kv_heads * k_panels * NR_ * d;
    K_BUF.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => body(sized(&mut buf, klen)),
        Err(_) => body(&mut vec![0.0; klen]),
    });
}

/// Per-thread working buffers of a task (reused across tasks and calls).
#[derive(Default)]
struct Scratch {
    qpack: Vec<f32>,
    vpad: Vec<f32>,
    scores: Vec<f32>,
    ppack: Vec<f32>,
    acc: Vec<f32>,
    row_max: Vec<f32>,
    row_sum: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Resizes `v` to `len` (contents unspecified) and returns it.
fn sized(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// First key visible from position `pos`.
#[inline]
fn first_key(pos: usize, window: Option<usize>) -> usize {
    window.map_or(0, |w| (pos + 1).saturating_sub(w))
}

/// Attention of queries `i0..i1` of every head of kv head `g`'s group, with an `MR_ x NR_` kernel.
fn attend_tile<const MR_: usize, const NR_: usize>(p: &Problem, g: usize, i0: usize, i1: usize, s: &mut Scratch) {
    let sh = &p.shape;
    let d = sh.head_dim;
    let group = p.group;
    let q_stride = sh.n_heads * d;
    let kv_stride = sh.n_kv_heads * d;
    let rows = (i1 - i0) * group;
    let panels = rows.div_ceil(MR_);
    let rpad = panels * MR_;
    let dpad = d.next_multiple_of(NR_);
    let ukr = p.ukr;
    let kpack_g = &p.kpack[g * p.k_panels * NR_ * d..(g + 1) * p.k_panels * NR_ * d];

    // Query rows r = qi * group + hh, scaled, packed as MR-row panels [depth][row].
    let qpack = sized(&mut s.qpack, rpad * d);
    for (ip, dst) in qpack.chunks_exact_mut(MR_ * d).enumerate() {
        for rr in 0..MR_ {
            let r = ip * MR_ + rr;
            if r < rows {
                let (qi, hh) = (r / group, r % group);
                let base = (i0 + qi) * q_stride + (g * group + hh) * d;
                for (dd, &x) in dst.chunks_exact_mut(MR_).zip(&p.q[base..base + d]) {
                    dd[rr] = x * sh.scale;
                }
            } else {
                for dd in dst.chunks_exact_mut(MR_) {
                    dd[rr] = 0.0;
                }
            }
        }
    }
    let acc = sized(&mut s.acc, rpad * dpad);
    acc.fill(0.0);
    let row_max = sized(&mut s.row_max, rows);
    row_max.fill(f32::NEG_INFINITY);
    let row_sum = sized(&mut s.row_sum, rows);
    row_sum.fill(0.0);
    let scores = sized(&mut s.scores, rpad * BK);
    let ppack = sized(&mut s.ppack, rpad * BK);
    let v_direct = d.is_multiple_of(NR_);
    let vpad = sized(&mut s.vpad, if v_direct { 0 } else { BK * dpad });

    // Keys visible to some query of the tile, from the start of the first key's panel: tiles
    // wholly above the diagonal or before the window of the first query are never visited.
    let j_lo = first_key(p.offset + i0, sh.window) / NR_ * NR_;
    let j_hi = p.offset + i1;
    let mut j0 = j_lo;
    while j0 < j_hi {
        let kt = BK.min(j_hi - j0);
        let kpanels = kt.div_ceil(NR_);

        // Scores = (scale * Q) · K_tileᵀ.
        for ip in 0..panels {
            let ap = &qpack[ip * MR_ * d..(ip + 1) * MR_ * d];
            for jp in 0..kpanels {
                let panel = j0 / NR_ - p.panel_base + jp;
                let bp = &kpack_g[panel * NR_ * d..(panel + 1) * NR_ * d];
                let c = &mut scores[ip * MR_ * BK + jp * NR_..];
                assert!(c.len() >= (MR_ - 1) * BK + NR_);
                // SAFETY: ap holds d*MR_ and bp d*NR_ floats; c has MR_ rows of BK >= NR_ floats.
                unsafe {
                    ukr(
                        d,
                        ap.as_ptr(),
                        bp.as_ptr(),
                        NR_,
                        c.as_mut_ptr(),
                        BK,
                        false,
                        std::ptr::null(),
                    )
                };
            }
        }

        // Mask, online softmax, probabilities written back in place.
        for r in 0..rpad {
            let srow = &mut scores[r * BK..r * BK + kt];
            let range = if r < rows {
                let pos = p.offset + i0 + r / group;
                let a = first_key(pos, sh.window).max(j0);
                let b = (pos + 1).min(j0 + kt);
                (a < b).then(|| (a - j0, b - j0))
            } else {
                None
            };
            let Some((a, b)) = range else {
                srow.fill(0.0);
                continue;
            };
            let m_old = row_max[r];
            let (m_new, sum) = softmax_update(p.isa, srow, a, b, m_old);
            let alpha = (m_old - m_new).exp();
            row_max[r] = m_new;
            row_sum[r] = row_sum[r] * alpha + sum;
            if alpha != 1.0 {
                for x in &mut acc[r * dpad..r * dpad + d] {
                    *x *= alpha;
                }
            }
        }

        // acc += P · V_tile.
        for ip in 0..panels {
            gemm::pack_panel::<MR_>(p.isa, scores, BK, ip * MR_, MR_, 0, kt, &mut ppack[ip * MR_ * kt..]);
        }
        let (vp, ldv): (&[f32], usize) = if v_direct {
            (
                &p.v[j0 * kv_stride + g * d..(j0 + kt - 1) * kv_stride + g * d + d],
                kv_stride,
            )
        } else {
            for (j, dst) in vpad.chunks_exact_mut(dpad).take(kt).enumerate() {
                let src = (j0 + j) * kv_stride + g * d;
                dst[..d].copy_from_slice(&p.v[src..src + d]);
                dst[d..].fill(0.0);
            }
            (&vpad[..kt * dpad], dpad)
        };
        for ip in 0..panels {
            let ap = &ppack[ip * MR_ * kt..(ip + 1) * MR_ * kt];
            for cb in 0..dpad / NR_ {
                assert!(vp.len() >= (kt - 1) * ldv + cb * NR_ + NR_);
                let c = &mut acc[ip * MR_ * dpad + cb * NR_..];
                assert!(c.len() >= (MR_ - 1) * dpad + NR_);
                // SAFETY: ap holds kt*MR_ floats; vp has NR_ floats at each of cb*NR_ + j*ldv, j < kt
                // (asserted); c has MR_ rows of dpad >= NR_ floats (asserted).
                unsafe {
                    ukr(
                        kt,
                        ap.as_ptr(),
                        vp[cb * NR_..].as_ptr(),
                        ldv,
                        c.as_mut_ptr(),
                        dpad,
                        true,
                        std::ptr::null(),
                    )
                };
            }
        }
        j0 += kt;
    }

    // out = acc / sum, for each (query, head) row.
    for r in 0..rows {
        let (qi, hh) = (r / group, r % group);
        let base = (i0 + qi) * q_stride + (g * group + hh) * d;
        let inv = 1.0 / row_sum[r];
        let src = &acc[r * dpad..r * dpad + d];
        for (c, &x) in src.iter().enumerate() {
            // SAFETY: base + c < n_queries * n_heads * d <= out.len() (checked by the caller); the
            // row (i0 + qi, head g*group + hh) belongs to this task only.
            unsafe { *p.out.0.add(base + c) = x * inv };
        }
    }
}

/// Online-softmax step for one row of a score tile: the visible scores are `row[a..b]`.
///
/// Returns `(m_new, sum)` with `m_new = max(m_old, max(row[a..b]))` and `sum = Σ exp(row - m_new)`
/// over the visible part; `row` is overwritten by `exp(row - m_new)` there and by zero elsewhere.
fn softmax_update(isa: Isa, row: &mut [f32], a: usize, b: usize, m_old: f32) -> (f32, f32) {
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
unsafe fn exp512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0)), _mm512_set1_ps(88.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
        x,
        _mm512_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut poly = _mm512_set1_ps(1.0 / 5040.0);
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(c));
    }
    let pow2 = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)));
    _mm512_mul_ps(poly, _mm512_castsi512_ps(pow2))
}

/// `exp(x)` for 8 lanes, relative error about 2e-7 (inputs below -87 give about 1e-38).
///
/// Splits `x = n ln2 + r` with `|r| <= ln2 / 2`, evaluates the degree-7 Taylor polynomial of `e^r`
/// and multiplies by `2^n` built in the exponent bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp256(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0)), _mm256_set1_ps(88.0));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    // ln 2 = 0.693359375 - 2.12194440e-4, the first part exact in few bits so n * part is exact.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut poly = _mm256_set1_ps(1.0 / 5040.0);
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(c));
    }
    let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
    _mm256_mul_ps(poly, _mm256_castsi256_ps(pow2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

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
                        let dot: f64 = qrow.iter().zip(krow).map(|(&a, &b)| a as f64 * b as f64).sum();
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

    fn shapes() -> Vec<AttentionShape> {
        let mut out = Vec::new();
        for &(n_heads, n_kv_heads) in &[(2, 2), (6, 2), (3, 1)] {
            for &head_dim in &[8, 64] {
                for &window in &[None, Some(5)] {
                    for &(n_queries, n_keys) in &[(37, 37), (1, 37), (1, 1), (5, 200), (300, 300)] {
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

    #[test]
    fn matches_naive_detected_isa() {
        for (i, s) in shapes().into_iter().enumerate() {
            check(gemm::detected_isa(), s, i as u64);
        }
    }

    #[test]
    fn matches_naive_avx2_when_available() {
        if matches!(gemm::detected_isa(), Isa::Avx512 | Isa::Avx2Fma) {
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
            check(gemm::detected_isa(), s, 100 + i as u64);
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
        check(gemm::detected_isa(), s, 7);
    }
}
