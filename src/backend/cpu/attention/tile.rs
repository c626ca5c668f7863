//! One attention task: a tile of queries of one kv-head group against all the keys it can see.

use super::softmax::softmax_update;
use super::{first_key, sized, Problem, BK};
use crate::backend::cpu::gemm;
use std::cell::RefCell;

/// Per-thread working buffers of a task (reused across tasks and calls).
#[derive(Default)]
pub(super) struct Scratch {
    qpack: Vec<f32>,
    vpad: Vec<f32>,
    scores: Vec<f32>,
    ppack: Vec<f32>,
    acc: Vec<f32>,
    row_max: Vec<f32>,
    row_sum: Vec<f32>,
}

thread_local! {
    pub(super) static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Attention of queries `i0..i1` of every head of kv head `g`'s group, with an `MR_ x NR_` kernel.
pub(super) fn attend_tile<const MR_: usize, const NR_: usize>(
    p: &Problem,
    g: usize,
    i0: usize,
    i1: usize,
    s: &mut Scratch,
) {
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
            gemm::pack_panel::<MR_>(
                p.isa,
                scores,
                BK,
                ip * MR_,
                MR_,
                0,
                kt,
                &mut ppack[ip * MR_ * kt..],
            );
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
            unsafe { *p.out.get().add(base + c) = x * inv };
        }
    }
}
