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

#[cfg(target_arch = "x86_64")]
mod amx;
pub(crate) mod softmax;
#[cfg(target_arch = "x86_64")]
pub(crate) use softmax::exp512;
#[cfg(test)]
mod tests;
mod tile;

use super::gemm::{self, MicroKernel, MR, NR};
use super::isa::{detected_isa, Isa};
use super::out_ptr::OutPtr;
use rayon::prelude::*;
use std::cell::RefCell;
use tile::{attend_tile, Scratch, SCRATCH};

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
    causal_attention_isa(detected_isa(), q, k, v, out, shape);
}

/// [`causal_attention`] of a model computing in bf16: `Q · Kᵀ` and `P · V` with bf16 operands on
/// AMX tiles (f32 accumulation, mask and softmax) where the bf16 kernel is AMX and the shape suits
/// it (head width a multiple of 64, a tile's worth of query rows); the f32 path otherwise.
pub fn causal_attention_bf16(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    shape: &AttentionShape,
) {
    #[cfg(target_arch = "x86_64")]
    if super::bf16_kernel() == super::Bf16Kernel::Amx && amx::supports(shape) {
        if check(q, k, v, out, shape) {
            let parallel = parallel_work(shape) && rayon::current_num_threads() > 1;
            amx::attention(q, k, v, out, shape, parallel);
        }
        return;
    }
    causal_attention(q, k, v, out, shape);
}

/// Asserts that the operands fit `s`; false when there is nothing to compute.
fn check(q: &[f32], k: &[f32], v: &[f32], out: &[f32], s: &AttentionShape) -> bool {
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
    s.n_queries > 0 && d > 0
}

/// True when the call has enough multiply-adds to repay running on several threads.
fn parallel_work(s: &AttentionShape) -> bool {
    let visible = s.window.map_or(s.n_keys, |w| w.min(s.n_keys));
    s.n_queries * visible * s.n_heads * s.head_dim >= PAR_MIN_WORK
}

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

/// [`causal_attention`] with the kernels of `isa` (tests pick each variant).
pub(crate) fn causal_attention_isa(
    isa: Isa,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    shape: &AttentionShape,
) {
    let s = *shape;
    if !check(q, k, v, out, &s) {
        return;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => attention_with::<{ gemm::MR512 }, { gemm::NR512 }>(
            isa,
            gemm::ukr_avx512,
            q,
            k,
            v,
            out,
            &s,
        ),
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
    let threads = if parallel_work(s) {
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
