//! Dense f32 matrix products for the CPU backend: a packed, cache-blocked GEMM and a GEMV-style path.
//!
//! Every product here has the "NT" form of a transformer linear layer: `c = a · bᵀ`, where both `a`
//! (`m x k`, the activations) and `b` (`n x k`, the weights, one output feature per row) are stored
//! row-major with `k` contiguous.
//!
//! Large `m` (prefill) goes through a BLIS-style algorithm:
//!
//! ```text
//! for jc in 0..n step NC              // B block of NC rows, packed once and shared by all threads
//!   for pc in 0..k step KC            //   (KC x NC packed panel lives in L3)
//!     pack B[jc.., pc..] into NR-wide micro-panels           (parallel)
//!     parallel over tasks = (ic block of <= MC rows) x (range of micro-panels)
//!       pack A[ic.., pc..] into MR-tall micro-panels          (per-thread buffer, lives in L2)
//!       for each B micro-panel (KC x NR, reused from L1/L2)
//!         for each A micro-panel: MR x NR register-tiled micro-kernel over KC
//! ```
//!
//! Micro-kernels, chosen once at run time (`is_x86_feature_detected!`, cached):
//! - AVX-512F: 12 x 32, 24 zmm accumulators (`_mm512_fmadd_ps`), used where the CPU has it;
//! - AVX2+FMA: 6 x 16, 12 ymm accumulators (`_mm256_fmadd_ps`);
//! - portable: plain Rust of the 6 x 16 shape that the compiler can auto-vectorise, everywhere else.
//!
//! `TWOSSP_CPU_KERNELS=avx2` or `=portable` in the environment caps the choice (comparisons, tests).
//! Packing full panels uses AVX2 8 x 8 transposes where available. Edges (sizes that are not
//! multiples of the tiles) are handled by zero-padding the packed panels and writing partial tiles
//! through a small stack buffer, so every size, including `k = 1` or `n = 1`, is valid.
//!
//! Small `m` (decode: `m = 1`, or up to 8 rows) is memory bound on reading `b`; it skips packing and
//! streams `b` once, front to back (software-prefetched), multiplying each of its rows by the rows
//! of `a` held in L1, in parallel over `n` when `b` is large enough to repay the threads.

use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread::LocalKey;

/// Rows of the 6 x 16 micro-tile (rows of `a` and `c` per micro-kernel call) of the AVX2 and
/// portable kernels.
pub(crate) const MR: usize = 6;
/// Columns of the 6 x 16 micro-tile (rows of `b`, columns of `c` per micro-kernel call).
pub(crate) const NR: usize = 16;
/// Rows of the AVX-512 micro-tile.
pub(crate) const MR512: usize = 12;
/// Columns of the AVX-512 micro-tile.
pub(crate) const NR512: usize = 32;

/// Cache blocking of the packed path for one micro-kernel shape.
#[derive(Clone, Copy)]
struct Blocking {
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
const BLOCKING_6X16: Blocking = Blocking {
    kc_max: 384,
    mc_max: 144,
    nc_max: 2048,
};
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
/// Blocking of the 12 x 32 AVX-512 kernel: B micro-panel 72 KiB, A block 324 KiB (L2), B block 4.5 MiB.
const BLOCKING_12X32: Blocking = Blocking {
    kc_max: 576,
    mc_max: 144,
    nc_max: 2048,
};
/// Products with at most this many rows of `a` take the unpacked GEMV-style path.
const GEMV_M_MAX: usize = 8;
/// Below this many flops a product runs on the calling thread only.
const PAR_MIN_FLOPS: usize = 1 << 20;
/// The GEMV path runs on the calling thread only below this many elements of `b` (4 MiB): a
/// smaller product takes tens of microseconds, where handing work to other threads cost more than
/// it saved in our measurements.
const GEMV_PAR_MIN_ELEMS: usize = 1 << 20;

/// y[m x n] = x[m x k] · w[n x k]^T (+ bias[n]), the linear layer of a transformer; all row-major, contiguous.
pub fn linear(x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32], m: usize, n: usize, k: usize) {
    if let Some(b) = bias {
        assert!(b.len() >= n, "linear: bias has {} elements, need {n}", b.len());
    }
    gemm_nt(detected_isa(), x, k, w, k, y, n, m, n, k, false, bias);
}

/// c[m x n] = a[m x k] · b[n x k]^T with explicit leading dimensions (row strides) for each operand, optionally accumulating into c.
#[allow(clippy::too_many_arguments)]
pub fn matmul_nt(
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
) {
    gemm_nt(detected_isa(), a, lda, b, ldb, c, ldc, m, n, k, accumulate, None);
}

// ---------------------------------------------------------------------------------------------
// Instruction-set selection
// ---------------------------------------------------------------------------------------------

/// Which micro-kernels to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) enum Isa {
    /// x86-64 AVX-512F: 12 x 32 micro-kernel, AVX-512 GEMV and softmax (packing stays AVX2).
    Avx512,
    /// x86-64 AVX2 + FMA intrinsics.
    Avx2Fma,
    /// Plain Rust, auto-vectorised for whatever the target offers.
    Portable,
}

/// The best kernels this CPU supports; detected on first use, then cached.
///
/// The environment variable `TWOSSP_CPU_KERNELS` (`avx512`, `avx2` or `portable`) caps the choice,
/// for comparisons and for testing the fallbacks.
pub(crate) fn detected_isa() -> Isa {
    static CACHE: AtomicU8 = AtomicU8::new(0);
    const ISAS: [Isa; 3] = [Isa::Avx512, Isa::Avx2Fma, Isa::Portable];
    match CACHE.load(Ordering::Relaxed) {
        i @ 1..=3 => ISAS[i as usize - 1],
        _ => {
            let isa = detect_isa();
            CACHE.store(
                ISAS.iter().position(|&x| x == isa).unwrap() as u8 + 1,
                Ordering::Relaxed,
            );
            isa
        }
    }
}

fn detect_isa() -> Isa {
    let cap = std::env::var("TWOSSP_CPU_KERNELS").unwrap_or_default();
    #[cfg(target_arch = "x86_64")]
    {
        if cap != "portable" && std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            if cap != "avx2" && std::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            return Isa::Avx2Fma;
        }
    }
    let _ = cap;
    Isa::Portable
}

// ---------------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------------

/// A raw pointer to the output that tasks writing disjoint tiles may share.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a disjoint set of elements of the output (distinct rows or distinct
// column ranges), and the output outlives the parallel region that uses the pointer.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Checks shapes and dispatches to the GEMV-style or the packed path.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_nt(
    isa: Isa,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    bias: Option<&[f32]>,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        lda >= k && ldb >= k && ldc >= n,
        "matmul_nt: leading dimensions too small"
    );
    assert!(
        a.len() >= (m - 1) * lda + k,
        "matmul_nt: a has {} elements, too few for {m} x {k} (lda {lda})",
        a.len()
    );
    assert!(
        b.len() >= (n - 1) * ldb + k,
        "matmul_nt: b has {} elements, too few for {n} x {k} (ldb {ldb})",
        b.len()
    );
    assert!(
        c.len() >= (m - 1) * ldc + n,
        "matmul_nt: c has {} elements, too few for {m} x {n} (ldc {ldc})",
        c.len()
    );
    if let Some(bias) = bias {
        assert!(bias.len() >= n);
    }
    if k == 0 {
        for i in 0..m {
            let row = &mut c[i * ldc..i * ldc + n];
            for (j, v) in row.iter_mut().enumerate() {
                let add = bias.map_or(0.0, |b| b[j]);
                *v = if accumulate { *v + add } else { add };
            }
        }
        return;
    }
    let threads = rayon::current_num_threads();
    if m <= GEMV_M_MAX {
        let parallel = n * k >= GEMV_PAR_MIN_ELEMS && threads > 1;
        return gemv_path(isa, a, lda, b, ldb, c, ldc, m, n, k, accumulate, bias, parallel);
    }
    let parallel = 2 * m * n * k >= PAR_MIN_FLOPS && threads > 1;
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => packed_path::<MR512, NR512>(
            isa,
            ukr_avx512,
            BLOCKING_12X32,
            a,
            lda,
            b,
            ldb,
            c,
            ldc,
            m,
            n,
            k,
            accumulate,
            bias,
            parallel,
        ),
        _ => packed_path::<MR, NR>(
            isa,
            micro_kernel(isa),
            BLOCKING_6X16,
            a,
            lda,
            b,
            ldb,
            c,
            ldc,
            m,
            n,
            k,
            accumulate,
            bias,
            parallel,
        ),
    }
}

/// Runs `f(0..count)`, in parallel on the rayon pool or in order on this thread.
fn for_each_task(parallel: bool, count: usize, f: impl Fn(usize) + Sync + Send) {
    if parallel && count > 1 {
        (0..count).into_par_iter().with_max_len(1).for_each(f);
    } else {
        (0..count).for_each(f);
    }
}

/// Splits `0..total` into `parts` nearly equal contiguous ranges; returns the `i`-th.
fn split_range(total: usize, parts: usize, i: usize) -> (usize, usize) {
    (total * i / parts, total * (i + 1) / parts)
}

// ---------------------------------------------------------------------------------------------
// Packing buffers
// ---------------------------------------------------------------------------------------------

/// A growable f32 buffer handed out 64-byte aligned.
#[derive(Default)]
struct PackBuf {
    v: Vec<f32>,
}

impl PackBuf {
    fn get(&mut self, len: usize) -> &mut [f32] {
        let need = len + 16;
        if self.v.len() < need {
            self.v = vec![0.0; need];
        }
        let off = self.v.as_ptr().align_offset(64).min(16);
        &mut self.v[off..off + len]
    }
}

thread_local! {
    static A_BUF: RefCell<PackBuf> = RefCell::new(PackBuf::default());
    static B_BUF: RefCell<PackBuf> = RefCell::new(PackBuf::default());
}

/// Lends this thread's buffer `key` (or, if it is already lent further up the stack, a fresh one).
fn with_buf<R>(key: &'static LocalKey<RefCell<PackBuf>>, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(buf.get(len)),
        Err(_) => f(PackBuf::default().get(len)),
    })
}

/// Packs `rows` (<= R) rows of a k-contiguous matrix starting at row `r0`, columns `p0..p0 + kc`,
/// as `dst[p * R + r]`; rows `rows..R` are zero.
#[inline]
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_panel<const R: usize>(
    isa: Isa,
    src: &[f32],
    ld: usize,
    r0: usize,
    rows: usize,
    p0: usize,
    kc: usize,
    dst: &mut [f32],
) {
    let dst = &mut dst[..kc * R];
    if rows == R {
        // Full panel: read R rows side by side, write each depth step as one contiguous group.
        let base = r0 * ld + p0;
        let srcs: [&[f32]; R] = std::array::from_fn(|r| &src[base + r * ld..base + r * ld + kc]);
        let done = match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2 is available; the R source rows hold kc floats each (sliced above,
            // consecutive rows `ld` apart) and dst holds kc * R.
            Isa::Avx2Fma | Isa::Avx512 => unsafe { pack_full_avx2::<R>(srcs[0].as_ptr(), ld, kc, dst.as_mut_ptr()) },
            _ => 0,
        };
        for (p, d) in dst.chunks_exact_mut(R).enumerate().skip(done) {
            for r in 0..R {
                d[r] = srcs[r][p];
            }
        }
    } else {
        for r in 0..R {
            if r < rows {
                let s = &src[(r0 + r) * ld + p0..(r0 + r) * ld + p0 + kc];
                for (d, &v) in dst.chunks_exact_mut(R).zip(s) {
                    d[r] = v;
                }
            } else {
                for d in dst.chunks_exact_mut(R) {
                    d[r] = 0.0;
                }
            }
        }
    }
}

/// Packs the first `kc - kc % 8` depth steps of a full R-row panel with 8 x 8 transposes; returns
/// how many depth steps it packed.
///
/// # Safety
/// AVX2 is available; rows `0..R` at `src + r * ld` each hold `kc` readable floats; `dst` holds
/// `kc * R` writable floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_full_avx2<const R: usize>(src: *const f32, ld: usize, kc: usize, dst: *mut f32) -> usize {
    use std::arch::x86_64::*;
    let kv = kc - kc % 8;
    for g in 0..R.div_ceil(8) {
        let valid = (R - 8 * g).min(8);
        // Rows past the panel repeat its last row; the mask keeps them out of dst.
        let rp: [*const f32; 8] = std::array::from_fn(|r| src.add((8 * g + r.min(valid - 1)) * ld));
        let mask = _mm256_cmpgt_epi32(
            _mm256_set1_epi32(valid as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        let mut p = 0;
        while p < kv {
            let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(rp[i].add(p)));
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            // s_q: depth steps q (low half) and q + 4 (high half) of rows 0-3 or 4-7.
            let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let cols = [
                _mm256_permute2f128_ps::<0x20>(s0, s4),
                _mm256_permute2f128_ps::<0x20>(s1, s5),
                _mm256_permute2f128_ps::<0x20>(s2, s6),
                _mm256_permute2f128_ps::<0x20>(s3, s7),
                _mm256_permute2f128_ps::<0x31>(s0, s4),
                _mm256_permute2f128_ps::<0x31>(s1, s5),
                _mm256_permute2f128_ps::<0x31>(s2, s6),
                _mm256_permute2f128_ps::<0x31>(s3, s7),
            ];
            for (q, &col) in cols.iter().enumerate() {
                let out = dst.add((p + q) * R + 8 * g);
                if valid == 8 {
                    _mm256_storeu_ps(out, col);
                } else {
                    _mm256_maskstore_ps(out, mask, col);
                }
            }
            p += 8;
        }
    }
    kv
}

// ---------------------------------------------------------------------------------------------
// Packed path (prefill)
// ---------------------------------------------------------------------------------------------

/// Micro-kernel: `c[MR x NR] (+)= a_panel · b_panel (+ bias)`; see [`ukr_portable`] for the contract.
pub(crate) type MicroKernel = unsafe fn(usize, *const f32, *const f32, usize, *mut f32, usize, bool, *const f32);

/// The 6 x 16 micro-kernel for `isa` (AVX2 also on AVX-512 machines).
pub(crate) fn micro_kernel(isa: Isa) -> MicroKernel {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma | Isa::Avx512 => ukr_avx2,
        _ => ukr_portable,
    }
}

/// The packed, blocked GEMM with an `MR_ x NR_` micro-kernel `ukr`.
#[allow(clippy::too_many_arguments)]
fn packed_path<const MR_: usize, const NR_: usize>(
    isa: Isa,
    ukr: MicroKernel,
    blk: Blocking,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    bias: Option<&[f32]>,
    parallel: bool,
) {
    let c_ptr = OutPtr(c.as_mut_ptr());
    let c_len = c.len();
    let threads = if parallel { rayon::current_num_threads() } else { 1 };
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
                packed_cols::<MR_, NR_>(
                    isa, ukr, blk, a, lda, b, ldb, c_ptr, c_len, ldc, m, n, k, accumulate, bias, j_begin, j_end, false,
                )
            };
        });
    } else {
        // SAFETY: c (all columns) is borrowed mutably for this call; its size was checked by gemm_nt.
        unsafe {
            packed_cols::<MR_, NR_>(
                isa, ukr, blk, a, lda, b, ldb, c_ptr, c_len, ldc, m, n, k, accumulate, bias, 0, n, parallel,
            )
        };
    }
}

/// Columns `j_begin..j_end` of the packed GEMM (see [`packed_path`]).
///
/// # Safety
/// `c_ptr` points to `c_len >= (m - 1) * ldc + n` floats, and nothing else accesses columns
/// `j_begin..j_end` of its rows `0..m` during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn packed_cols<const MR_: usize, const NR_: usize>(
    isa: Isa,
    ukr: MicroKernel,
    blk: Blocking,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c_ptr: OutPtr,
    c_len: usize,
    ldc: usize,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    bias: Option<&[f32]>,
    j_begin: usize,
    j_end: usize,
    parallel: bool,
) {
    let (mr, nr) = (MR_, NR_);
    let threads = if parallel { rayon::current_num_threads() } else { 1 };

    // Depth blocks of equal size (12 x 32 blocking: k = 576 -> 1 x 576, k = 1536 -> 3 x 512).
    let k_blocks = k.div_ceil(blk.kc_max);
    let kc_max = k.div_ceil(k_blocks);
    // Column blocks of equal size (rounded to whole micro-panels).
    let width = j_end - j_begin;
    let n_blocks = width.div_ceil(blk.nc_max);
    let nc_max = width.div_ceil(n_blocks).next_multiple_of(nr);

    // Row blocks: at least enough to keep every thread busy several times over, a multiple of the
    // thread count, each at most mc_max rows (in whole micro-panels).
    let m_panels = m.div_ceil(mr);
    let mut m_tasks = m.div_ceil(blk.mc_max);
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

            for (kb, pc) in (0..k).step_by(kc_max).enumerate() {
                let kc = kc_max.min(k - pc);
                let bpack = &mut bpack[..n_panels * nr * kc];
                let pack_one = |(jp, dst): (usize, &mut [f32])| {
                    let j0 = jc + jp * nr;
                    pack_panel::<NR_>(isa, b, ldb, j0, nr.min(n - j0), pc, kc, dst);
                };
                if parallel {
                    bpack.par_chunks_mut(nr * kc).enumerate().for_each(pack_one);
                } else {
                    bpack.chunks_mut(nr * kc).enumerate().for_each(pack_one);
                }
                let bpack: &[f32] = bpack;

                // First depth block writes (or adds to) c and adds the bias; later ones accumulate.
                let first = kb == 0;
                let acc_mode = accumulate || !first;
                let bias_here = if first { bias } else { None };

                for_each_task(parallel, m_tasks * n_tasks, |t| {
                    let (pm0, pm1) = split_range(m_panels, m_tasks, t / n_tasks);
                    let (pn0, pn1) = split_range(n_panels, n_tasks, t % n_tasks);
                    if pm0 == pm1 || pn0 == pn1 {
                        return;
                    }
                    let i_start = pm0 * mr;
                    let i_end = (pm1 * mr).min(m);
                    with_buf(&A_BUF, (pm1 - pm0) * mr * kc, |apack| {
                        for (ip, dst) in apack.chunks_mut(mr * kc).enumerate() {
                            let i0 = i_start + ip * mr;
                            pack_panel::<MR_>(isa, a, lda, i0, mr.min(i_end - i0), pc, kc, dst);
                        }
                        for jp in pn0..pn1 {
                            let j0 = jc + jp * nr;
                            let nj = nr.min(n - j0);
                            let bp = &bpack[jp * nr * kc..(jp + 1) * nr * kc];
                            for (ip, ap) in apack.chunks(mr * kc).enumerate() {
                                let i0 = i_start + ip * mr;
                                let mi = mr.min(i_end - i0);
                                // SAFETY: the tile rows i0..i0+mi < m and columns j0..j0+nj <= n lie
                                // inside c (checked in gemm_nt); this task alone owns them in this
                                // depth step; the packed panels hold kc*mr and kc*nr elements.
                                unsafe {
                                    write_tile::<MR_, NR_>(
                                        ukr, kc, ap, bp, c_ptr, c_len, ldc, i0, j0, mi, nj, acc_mode, bias_here,
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

/// Portable 6 x 16 micro-kernel: `c[i][j] (+)= sum_p a[p*MR + i] * b[p*ldb + j] (+ bias[j])`.
///
/// # Safety
/// `a` holds `kc*MR` readable floats; `b` has `NR` readable floats at each of `p*ldb`, `p < kc`;
/// `c` rows `0..MR` (stride `ldc`), columns `0..NR` are writable; `bias` is null or holds `NR` floats.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn ukr_portable(
    kc: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    acc: bool,
    bias: *const f32,
) {
    let a = std::slice::from_raw_parts(a, kc * MR);
    let mut t = [[0.0f32; NR]; MR];
    for (p, ap) in a.chunks_exact(MR).enumerate() {
        let bp = std::slice::from_raw_parts(b.add(p * ldb), NR);
        for i in 0..MR {
            let av = ap[i];
            for j in 0..NR {
                t[i][j] += av * bp[j];
            }
        }
    }
    for (i, ti) in t.iter().enumerate() {
        let row = std::slice::from_raw_parts_mut(c.add(i * ldc), NR);
        for j in 0..NR {
            let mut v = ti[j];
            if !bias.is_null() {
                v += *bias.add(j);
            }
            row[j] = if acc { row[j] + v } else { v };
        }
    }
}

/// AVX2+FMA 6 x 16 micro-kernel: 12 ymm accumulators, two B loads and six broadcasts per depth step.
///
/// # Safety
/// As [`ukr_portable`], and the CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn ukr_avx2(
    kc: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    acc: bool,
    bias: *const f32,
) {
    use std::arch::x86_64::*;
    let mut c00 = _mm256_setzero_ps();
    let mut c01 = _mm256_setzero_ps();
    let mut c10 = _mm256_setzero_ps();
    let mut c11 = _mm256_setzero_ps();
    let mut c20 = _mm256_setzero_ps();
    let mut c21 = _mm256_setzero_ps();
    let mut c30 = _mm256_setzero_ps();
    let mut c31 = _mm256_setzero_ps();
    let mut c40 = _mm256_setzero_ps();
    let mut c41 = _mm256_setzero_ps();
    let mut c50 = _mm256_setzero_ps();
    let mut c51 = _mm256_setzero_ps();
    let mut ap = a;
    let mut bp = b;
    macro_rules! step {
        () => {{
            let b0 = _mm256_loadu_ps(bp);
            let b1 = _mm256_loadu_ps(bp.add(8));
            let a0 = _mm256_set1_ps(*ap);
            c00 = _mm256_fmadd_ps(a0, b0, c00);
            c01 = _mm256_fmadd_ps(a0, b1, c01);
            let a1 = _mm256_set1_ps(*ap.add(1));
            c10 = _mm256_fmadd_ps(a1, b0, c10);
            c11 = _mm256_fmadd_ps(a1, b1, c11);
            let a2 = _mm256_set1_ps(*ap.add(2));
            c20 = _mm256_fmadd_ps(a2, b0, c20);
            c21 = _mm256_fmadd_ps(a2, b1, c21);
            let a3 = _mm256_set1_ps(*ap.add(3));
            c30 = _mm256_fmadd_ps(a3, b0, c30);
            c31 = _mm256_fmadd_ps(a3, b1, c31);
            let a4 = _mm256_set1_ps(*ap.add(4));
            c40 = _mm256_fmadd_ps(a4, b0, c40);
            c41 = _mm256_fmadd_ps(a4, b1, c41);
            let a5 = _mm256_set1_ps(*ap.add(5));
            c50 = _mm256_fmadd_ps(a5, b0, c50);
            c51 = _mm256_fmadd_ps(a5, b1, c51);
            ap = ap.add(MR);
            bp = bp.add(ldb);
        }};
    }
    let mut p = 0;
    while p + 4 <= kc {
        step!();
        step!();
        step!();
        step!();
        p += 4;
    }
    while p < kc {
        step!();
        p += 1;
    }
    let (bias0, bias1) = if bias.is_null() {
        (_mm256_setzero_ps(), _mm256_setzero_ps())
    } else {
        (_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.add(8)))
    };
    let rows = [(c00, c01), (c10, c11), (c20, c21), (c30, c31), (c40, c41), (c50, c51)];
    for (i, &(r0, r1)) in rows.iter().enumerate() {
        let dst = c.add(i * ldc);
        let mut v0 = _mm256_add_ps(r0, bias0);
        let mut v1 = _mm256_add_ps(r1, bias1);
        if acc {
            v0 = _mm256_add_ps(v0, _mm256_loadu_ps(dst));
            v1 = _mm256_add_ps(v1, _mm256_loadu_ps(dst.add(8)));
        }
        _mm256_storeu_ps(dst, v0);
        _mm256_storeu_ps(dst.add(8), v1);
    }
}

/// AVX-512 12 x 32 micro-kernel: 24 zmm accumulators, two B loads and twelve broadcasts per depth
/// step (same contract as [`ukr_portable`] with MR = 12, NR = 32).
///
/// # Safety
/// As [`ukr_portable`] for a 12 x 32 tile, and the CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn ukr_avx512(
    kc: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    acc: bool,
    bias: *const f32,
) {
    use std::arch::x86_64::*;
    let mut c0 = [_mm512_setzero_ps(); MR512];
    let mut c1 = [_mm512_setzero_ps(); MR512];
    let mut ap = a;
    let mut bp = b;
    for _ in 0..kc {
        let b0 = _mm512_loadu_ps(bp);
        let b1 = _mm512_loadu_ps(bp.add(16));
        for i in 0..MR512 {
            let ai = _mm512_set1_ps(*ap.add(i));
            c0[i] = _mm512_fmadd_ps(ai, b0, c0[i]);
            c1[i] = _mm512_fmadd_ps(ai, b1, c1[i]);
        }
        ap = ap.add(MR512);
        bp = bp.add(ldb);
    }
    let (bias0, bias1) = if bias.is_null() {
        (_mm512_setzero_ps(), _mm512_setzero_ps())
    } else {
        (_mm512_loadu_ps(bias), _mm512_loadu_ps(bias.add(16)))
    };
    for i in 0..MR512 {
        let dst = c.add(i * ldc);
        let mut v0 = _mm512_add_ps(c0[i], bias0);
        let mut v1 = _mm512_add_ps(c1[i], bias1);
        if acc {
            v0 = _mm512_add_ps(v0, _mm512_loadu_ps(dst));
            v1 = _mm512_add_ps(v1, _mm512_loadu_ps(dst.add(16)));
        }
        _mm512_storeu_ps(dst, v0);
        _mm512_storeu_ps(dst.add(16), v1);
    }
}

// ---------------------------------------------------------------------------------------------
// GEMV-style path (decode, tiny m)
// ---------------------------------------------------------------------------------------------

/// Rows of `b` per parallel task in the GEMV path.
const GEMV_ROWS_PER_TASK: usize = 256;
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
/// Prefetch distance of the GEMV path, in floats.
const GEMV_PREFETCH: usize = 1024;

#[allow(clippy::too_many_arguments)]
fn gemv_path(
    isa: Isa,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    bias: Option<&[f32]>,
    parallel: bool,
) {
    match m {
        1 => gemv_rows::<1>(isa, a, lda, b, ldb, c, ldc, n, k, accumulate, bias, parallel),
        2 => gemv_rows::<2>(isa, a, lda, b, ldb, c, ldc, n, k, accumulate, bias, parallel),
        3 => gemv_rows::<3>(isa, a, lda, b, ldb, c, ldc, n, k, accumulate, bias, parallel),
        4 => gemv_rows::<4>(isa, a, lda, b, ldb, c, ldc, n, k, accumulate, bias, parallel),
        5 => gemv_rows::<5>(isa, a, lda, b, ldb, c, ldc, n, k, accumulate, bias, parallel),
        6 => gemv_rows::<6>(isa, a, lda, b, ldb, c, ldc, n, k, accumulate, bias, parallel),
        7 => gemv_rows::<7>(isa, a, lda, b, ldb, c, ldc, n, k, accumulate, bias, parallel),
        8 => gemv_rows::<8>(isa, a, lda, b, ldb, c, ldc, n, k, accumulate, bias, parallel),
        _ => unreachable!("the GEMV path takes at most {GEMV_M_MAX} rows"),
    }
}

/// `c[M x n] (+)= a[M x k] · bᵀ (+ bias)`: each row of `b` is read once, front to back (the
/// rows of `b` follow each other, so the whole of `b` is one sequential stream for the
/// prefetchers), and multiplied by the `M` rows of `a`, which stay in L1.
#[allow(clippy::too_many_arguments)]
fn gemv_rows<const M: usize>(
    isa: Isa,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    bias: Option<&[f32]>,
    parallel: bool,
) {
    let c_ptr = OutPtr(c.as_mut_ptr());
    let threads = if parallel { rayon::current_num_threads() } else { 1 };
    let tasks = n.div_ceil(GEMV_ROWS_PER_TASK).max((4 * threads).min(n));
    let xs: [&[f32]; M] = std::array::from_fn(|i| &a[i * lda..i * lda + k]);
    for_each_task(parallel, tasks, |t| {
        let (j0, j1) = split_range(n, tasks, t);
        for j in j0..j1 {
            let dots = dot_rows::<M>(isa, &xs, &b[j * ldb..j * ldb + k]);
            let add = bias.map_or(0.0, |bb| bb[j]);
            for (i, &dot) in dots.iter().enumerate() {
                // SAFETY: i < m and j < n, inside c (checked in gemm_nt); column j belongs to this
                // task only.
                unsafe {
                    let dst = c_ptr.get().add(i * ldc + j);
                    *dst = if accumulate { *dst + dot + add } else { dot + add };
                }
            }
        }
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
        Isa::Avx512 => unsafe { dot_rows_avx512::<M>(xs, w) },
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

/// # Safety
/// The CPU supports AVX-512F; every row of `xs` has `w.len()` elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::needless_range_loop)]
unsafe fn dot_rows_avx512<const M: usize>(xs: &[&[f32]; M], w: &[f32]) -> [f32; M] {
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
            let wv = _mm512_loadu_ps(wp.add(p + 16 * u));
            for i in 0..M {
                acc[i][u] = _mm512_fmadd_ps(_mm512_loadu_ps(xp[i].add(p + 16 * u)), wv, acc[i][u]);
            }
        }
        p += 16 * u_n;
    }
    while p + 16 <= k {
        let wv = _mm512_loadu_ps(wp.add(p));
        for i in 0..M {
            acc[i][0] = _mm512_fmadd_ps(_mm512_loadu_ps(xp[i].add(p)), wv, acc[i][0]);
        }
        p += 16;
    }
    if p < k {
        let mask: __mmask16 = ((1u32 << (k - p)) - 1) as __mmask16;
        let wv = _mm512_maskz_loadu_ps(mask, wp.add(p));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random values in [-1, 1).
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

    /// Reference product in f64; also returns, per element, the magnitude scale
    /// `sum_p |a||b| + |bias| + |c_old|` that rounding errors are relative to.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
        c: &mut [f32],
        ldc: usize,
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
        bias: Option<&[f32]>,
    ) -> Vec<f32> {
        let mut scale = vec![0.0f32; c.len()];
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut mag) = (0.0f64, 0.0f64);
                for p in 0..k {
                    let t = a[i * lda + p] as f64 * b[j * ldb + p] as f64;
                    s += t;
                    mag += t.abs();
                }
                if let Some(bias) = bias {
                    s += bias[j] as f64;
                    mag += (bias[j] as f64).abs();
                }
                let dst = &mut c[i * ldc + j];
                if accumulate {
                    mag += (*dst as f64).abs();
                    s += *dst as f64;
                }
                *dst = s as f32;
                scale[i * ldc + j] = mag as f32;
            }
        }
        scale
    }

    /// `|got - want| <= 1e-5 * scale` element-wise (relative to the magnitudes summed).
    fn assert_close(got: &[f32], want: &[f32], scale: &[f32], what: &str) {
        assert_eq!(got.len(), want.len());
        for (idx, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
            let err = (g - w).abs();
            assert!(
                err <= 1e-5 * s.max(1e-30) || err == 0.0,
                "{what}: element {idx}: got {g}, want {w} (abs err {err:e}, scale {s:e})"
            );
        }
    }

    const SHAPES: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (7, 13, 5),
        (37, 65, 129),
        (200, 17, 300),
        (1, 300, 77),
        (1, 1000, 576),
        (1, 1100, 1000),
        (3, 1100, 1000),
        (8, 300, 77),
        (9, 40, 33),
        (2, 33, 9),
        (3, 50, 64),
        (4, 17, 1),
        (5, 16, 8),
        (6, 16, 16),
        (12, 32, 384),
        (13, 1, 40),
        (64, 3, 1),
        (97, 211, 400),
        (150, 4100, 20),
        (300, 40, 800),
        // Wide enough for independent column strips in parallel.
        (20, 16400, 3),
    ];

    fn check_isa(isa: Isa) {
        for (si, &(m, n, k)) in SHAPES.iter().enumerate() {
            for &(pad, accumulate, with_bias) in
                &[(0, false, false), (3, true, false), (0, false, true), (5, true, true)]
            {
                let (lda, ldb, ldc) = (k + pad, k + 2 * pad, n + pad);
                let seed = si as u64 * 16 + pad as u64;
                let a = fill((m - 1) * lda + k, seed);
                let b = fill((n - 1) * ldb + k, seed + 1);
                let bias = fill(n, seed + 2);
                let c0 = fill((m - 1) * ldc + n, seed + 3);
                let bias = with_bias.then_some(bias.as_slice());
                let mut want = c0.clone();
                let scale = naive(&a, lda, &b, ldb, &mut want, ldc, m, n, k, accumulate, bias);
                let mut got = c0.clone();
                gemm_nt(isa, &a, lda, &b, ldb, &mut got, ldc, m, n, k, accumulate, bias);
                let what = format!("{isa:?} m={m} n={n} k={k} pad={pad} acc={accumulate} bias={with_bias}");
                assert_close(&got, &want, &scale, &what);
                // Elements between rows (the padding of c) are untouched.
                for i in 0..m.saturating_sub(1) {
                    assert_eq!(
                        &got[i * ldc + n..(i + 1) * ldc],
                        &c0[i * ldc + n..(i + 1) * ldc],
                        "{what}: padding"
                    );
                }
            }
        }
    }

    #[test]
    fn matches_naive_detected_isa() {
        check_isa(detected_isa());
    }

    #[test]
    fn matches_naive_portable() {
        check_isa(Isa::Portable);
    }

    #[test]
    fn matches_naive_avx2_when_available() {
        if matches!(detected_isa(), Isa::Avx512 | Isa::Avx2Fma) {
            check_isa(Isa::Avx2Fma);
        }
    }

    #[test]
    fn linear_with_bias_and_public_matmul() {
        let (m, n, k) = (37, 65, 129);
        let x = fill(m * k, 1);
        let w = fill(n * k, 2);
        let bias = fill(n, 3);
        let mut want = vec![0.0; m * n];
        let scale = naive(&x, k, &w, k, &mut want, n, m, n, k, false, Some(&bias));
        let mut y = vec![f32::NAN; m * n];
        linear(&x, &w, Some(&bias), &mut y, m, n, k);
        assert_close(&y, &want, &scale, "linear");
        // matmul_nt accumulating on top of the bias-only result gives the same.
        let mut y2: Vec<f32> = (0..m * n).map(|i| bias[i % n]).collect();
        matmul_nt(&x, k, &w, k, &mut y2, n, m, n, k, true);
        assert_close(&y2, &want, &scale, "matmul_nt accumulate");
    }

    #[test]
    fn k_zero_and_empty() {
        let mut c = vec![1.0f32; 6];
        gemm_nt(
            detected_isa(),
            &[],
            0,
            &[],
            0,
            &mut c,
            3,
            2,
            3,
            0,
            false,
            Some(&[1.0, 2.0, 3.0]),
        );
        assert_eq!(c, [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
        matmul_nt(&[], 0, &[], 0, &mut c, 3, 2, 3, 0, true);
        assert_eq!(c, [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
        matmul_nt(&[], 0, &[], 0, &mut [], 0, 0, 0, 0, false);
    }

    #[test]
    fn large_prefill_shape_is_parallel_and_correct() {
        // Spans several depth blocks and row tasks; checked on a sample of rows against f64.
        let (m, n, k) = (300, 700, 1000);
        let x = fill(m * k, 7);
        let w = fill(n * k, 8);
        let mut y = vec![0.0; m * n];
        linear(&x, &w, None, &mut y, m, n, k);
        for i in [0, 5, 6, 143, 144, 299] {
            let mut want = vec![0.0; n];
            let scale = naive(&x[i * k..], k, &w, k, &mut want, n, 1, n, k, false, None);
            assert_close(&y[i * n..(i + 1) * n], &want, &scale, &format!("row {i}"));
        }
    }
}
