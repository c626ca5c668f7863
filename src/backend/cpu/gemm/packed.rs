//! The packed, cache-blocked GEMM path (prefill): blocking parameters, task split and tile writes.

use super::microkernel::{MicroKernel, MR512, NR512};
use super::pack::{pack_panel, with_buf, A_BUF, B_BUF};
use super::{for_each_task, split_range, Elem, Product};
use crate::backend::cpu::isa::Isa;
use crate::backend::cpu::out_ptr::OutPtr;
use rayon::prelude::*;

/// Cache blocking of the packed path for one micro-kernel shape.
#[derive(Clone, Copy)]
pub(super) struct Blocking {
    /// Largest depth block. Large is good: fewer passes over c. The KC x NR micro-panel of B is
    /// reused across the whole A block from L1 or L2 (its loads are 1/12 of the kernel's work).
    kc_max: usize,
    /// Largest row block of A packed by one task (MC x KC lives in L2).
    mc_max: usize,
    /// Largest column block of B packed at once (KC x NC lives in L3, which is shared); a
    /// multiple of NR.
    nc_max: usize,
}

// Tuned on Zen 5 (48 KiB L1d, 1 MiB L2 per core, 32 MiB shared L3) at the SmolLM2 shapes: a
// single depth block for k = 576 (no second pass over c) and B blocks of a few MiB were best.

/// Blocking of the 6 x 16 kernels: B micro-panel 24 KiB (L1), A block 216 KiB (L2), B block 3 MiB.
pub(super) const BLOCKING_6X16: Blocking = Blocking {
    kc_max: 384,
    mc_max: 144,
    nc_max: 2048,
};
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
/// Blocking of the 12 x 32 AVX-512 kernel: B micro-panel 72 KiB, A block 324 KiB (L2), B block 4.5 MiB.
pub(super) const BLOCKING_12X32: Blocking = Blocking {
    kc_max: 576,
    mc_max: 144,
    nc_max: 2048,
};

/// The packed, blocked GEMM with an `MR_ x NR_` micro-kernel `ukr`.
pub(super) fn packed_path<const MR_: usize, const NR_: usize, B: Elem>(
    isa: Isa,
    ukr: MicroKernel,
    blk: Blocking,
    p: Product<B>,
    c: &mut [f32],
    parallel: bool,
) {
    let n = p.n;
    let c_ptr = OutPtr(c.as_mut_ptr());
    let c_len = c.len();
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    // Very wide products (the LM head): independent column strips, one task each, with no
    // barrier between them (a shared B block costs two barriers per block, and each barrier
    // waits for the slowest thread, which hurts when other processes share the cores).
    let strip = blk.nc_max / 2;
    let strips = n.div_ceil(strip);
    if parallel && strips >= 8 * threads {
        for_each_task(true, strips, |s| {
            let j_begin = s * strip;
            let j_end = (j_begin + strip).min(n);
            // SAFETY: the strips' columns are disjoint; c's size was checked by gemm_nt.
            unsafe {
                packed_cols::<MR_, NR_, B>(isa, ukr, blk, p, c_ptr, c_len, j_begin, j_end, false)
            };
        });
    } else {
        // SAFETY: c (all columns) is borrowed mutably for this call; its size was checked by gemm_nt.
        unsafe { packed_cols::<MR_, NR_, B>(isa, ukr, blk, p, c_ptr, c_len, 0, n, parallel) };
    }
}

/// Columns `j_begin..j_end` of the packed GEMM (see [`packed_path`]).
///
/// # Safety
/// `c_ptr` points to `c_len >= (p.m - 1) * p.ldc + p.n` floats, and nothing else accesses columns
/// `j_begin..j_end` of its rows `0..p.m` during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn packed_cols<const MR_: usize, const NR_: usize, B: Elem>(
    isa: Isa,
    ukr: MicroKernel,
    blk: Blocking,
    p: Product<B>,
    c_ptr: OutPtr,
    c_len: usize,
    j_begin: usize,
    j_end: usize,
    parallel: bool,
) {
    let (mr, nr) = (MR_, NR_);
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };

    // Depth blocks of equal size (12 x 32 blocking: k = 576 -> 1 x 576, k = 1536 -> 3 x 512).
    let k_blocks = p.k.div_ceil(blk.kc_max);
    let kc_max = p.k.div_ceil(k_blocks);
    // Column blocks of equal size (rounded to whole micro-panels).
    let width = j_end - j_begin;
    let n_blocks = width.div_ceil(blk.nc_max);
    let nc_max = width.div_ceil(n_blocks).next_multiple_of(nr);

    // Row blocks: at least enough to keep every thread busy several times over, a multiple of the
    // thread count, each at most mc_max rows (in whole micro-panels).
    let m_panels = p.m.div_ceil(mr);
    let mut m_tasks = p.m.div_ceil(blk.mc_max);
    if m_tasks >= threads {
        m_tasks = m_tasks.next_multiple_of(threads).min(m_panels);
    }

    with_buf(&B_BUF, kc_max * nc_max, |bpack| {
        for jc in (j_begin..j_end).step_by(nc_max) {
            let nc = nc_max.min(j_end - jc);
            let n_panels = nc.div_ceil(nr);
            // Split the columns too when there are too few row blocks to balance the threads.
            let want = 4 * threads;
            let n_tasks = if m_tasks >= want {
                1
            } else {
                want.div_ceil(m_tasks).min(n_panels)
            };

            for (kb, pc) in (0..p.k).step_by(kc_max).enumerate() {
                let kc = kc_max.min(p.k - pc);
                let bpack = &mut bpack[..n_panels * nr * kc];
                let pack_one = |(jp, dst): (usize, &mut [f32])| {
                    let j0 = jc + jp * nr;
                    pack_panel::<NR_>(isa, p.b, p.ldb, j0, nr.min(p.n - j0), pc, kc, dst);
                };
                if parallel {
                    bpack.par_chunks_mut(nr * kc).enumerate().for_each(pack_one);
                } else {
                    bpack.chunks_mut(nr * kc).enumerate().for_each(pack_one);
                }
                let bpack: &[f32] = bpack;

                // First depth block writes (or adds to) c and adds the bias; later ones accumulate.
                let first = kb == 0;
                let acc_mode = p.accumulate || !first;
                let bias_here = if first { p.bias } else { None };

                for_each_task(parallel, m_tasks * n_tasks, |t| {
                    let (pm0, pm1) = split_range(m_panels, m_tasks, t / n_tasks);
                    let (pn0, pn1) = split_range(n_panels, n_tasks, t % n_tasks);
                    if pm0 == pm1 || pn0 == pn1 {
                        return;
                    }
                    let i_start = pm0 * mr;
                    let i_end = (pm1 * mr).min(p.m);
                    with_buf(&A_BUF, (pm1 - pm0) * mr * kc, |apack| {
                        for (ip, dst) in apack.chunks_mut(mr * kc).enumerate() {
                            let i0 = i_start + ip * mr;
                            pack_panel::<MR_>(isa, p.a, p.lda, i0, mr.min(i_end - i0), pc, kc, dst);
                        }
                        for jp in pn0..pn1 {
                            let j0 = jc + jp * nr;
                            let nj = nr.min(p.n - j0);
                            let bp = &bpack[jp * nr * kc..(jp + 1) * nr * kc];
                            for (ip, ap) in apack.chunks(mr * kc).enumerate() {
                                let i0 = i_start + ip * mr;
                                let mi = mr.min(i_end - i0);
                                // SAFETY: the tile rows i0..i0+mi < m and columns j0..j0+nj <= n lie
                                // inside c (checked in gemm_nt); this task alone owns them in this
                                // depth step; the packed panels hold kc*mr and kc*nr elements.
                                unsafe {
                                    write_tile::<MR_, NR_>(
                                        ukr, kc, ap, bp, c_ptr, c_len, p.ldc, i0, j0, mi, nj,
                                        acc_mode, bias_here,
                                    );
                                }
                            }
                        }
                    });
                });
            }
        }
    });
}

/// Runs the micro-kernel for one tile of c at (i0, j0) of size mi x nj (<= MR_ x NR_).
///
/// # Safety
/// `(i0 + mi - 1) * ldc + j0 + nj <= c_len`, and no other thread touches those elements meanwhile.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn write_tile<const MR_: usize, const NR_: usize>(
    ukr: MicroKernel,
    kc: usize,
    ap: &[f32],
    bp: &[f32],
    c: OutPtr,
    c_len: usize,
    ldc: usize,
    i0: usize,
    j0: usize,
    mi: usize,
    nj: usize,
    acc: bool,
    bias: Option<&[f32]>,
) {
    assert!(ap.len() >= kc * MR_ && bp.len() >= kc * NR_);
    debug_assert!((i0 + mi - 1) * ldc + j0 + nj <= c_len);
    let _ = c_len;
    let cp = c.get().add(i0 * ldc + j0);
    if mi == MR_ && nj == NR_ {
        let bias_ptr = bias.map_or(std::ptr::null(), |b| b[j0..j0 + NR_].as_ptr());
        ukr(kc, ap.as_ptr(), bp.as_ptr(), NR_, cp, ldc, acc, bias_ptr);
    } else {
        let mut tile = [0.0f32; MR512 * NR512];
        assert!(MR_ * NR_ <= tile.len());
        ukr(
            kc,
            ap.as_ptr(),
            bp.as_ptr(),
            NR_,
            tile.as_mut_ptr(),
            NR_,
            false,
            std::ptr::null(),
        );
        for i in 0..mi {
            let row = cp.add(i * ldc);
            for j in 0..nj {
                let v = tile[i * NR_ + j] + bias.map_or(0.0, |b| b[j0 + j]);
                let dst = row.add(j);
                *dst = if acc { *dst + v } else { v };
            }
        }
    }
}
